"""The MQTT source: subscribes to a topic (QoS 1) and turns its messages into readings.

A message is `{"timestamp": ISO 8601 with a zone, "value": number}`, a list of those, or a bare
number (stamped with its arrival time, UTC); numbers are read exactly (no float rounding). A
message that cannot be read is logged (`meter.bad_message`) and skipped whole; it never stops the
source. A refused connect (`meter.connect_failed`) or a lost connection (`meter.disconnected`) is
logged and retried for ever with capped, fully jittered backoff (1 s … 30 s); the subscription is
made on every connect.

paho runs on trio's loop, without threads of its own: its external-loop API (`loop_read` when the
socket is readable, `loop_write` when it wants to write and the socket is writable, `loop_misc`
about once a second for keepalive). Only the TCP connect, which paho does blocking, runs in a
worker thread. paho's callbacks are synchronous and run inside those calls, in this task: they
collect readings, which the task then hands to `emit`.

A cancel ends the source at once, even during a connect to a broker that does not answer (paho
would wait out its connect timeout): the connecting thread is abandoned, and the client is closed
by whichever side is last to hold it (`_Connecting`), so no socket outlives the source.
"""

from __future__ import annotations

import json
import random
import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from flexbot import logs, wire
from flexbot.backoff import Backoff, Retrying
from flexbot.meters.source import Emit, MqttSettings, Reading

log = logs.get_logger("flexbot.meters.mqtt")

MISC_EVERY_S = 1.0  # how often paho's keepalive bookkeeping (`loop_misc`) runs


class _Connecting:
    """paho's blocking connect, in a worker thread that a cancel may abandon. The client belongs
    to that thread while it runs: the source's task closes it only if no connect is running, else
    the thread closes it when its connect returns."""

    def __init__(self, client: paho.Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._running = False
        self._abandoned = False

    async def connect(self) -> None:
        with self._lock:
            self._running = True
        await trio.to_thread.run_sync(self._in_thread, abandon_on_cancel=True)

    def _in_thread(self) -> None:
        try:
            self._client.reconnect()
        finally:
            with self._lock:
                self._running = False
                abandoned = self._abandoned
            if abandoned:
                _close(self._client)

    def close(self) -> None:
        """The source ends: close the client now, or when its running connect returns."""
        with self._lock:
            self._abandoned = True
            running = self._running
        if not running:
            _close(self._client)


def _close(client: paho.Client) -> None:
    client.disconnect()  # sends DISCONNECT and closes when the socket takes it at once
    sock = client.socket()
    if sock is not None:
        sock.close()


class MqttMeter:
    def __init__(
        self,
        meter_id: str,
        settings: MqttSettings,
        *,
        password: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.meter_id = meter_id
        self.settings = settings
        self._password = password
        self._retry = Retrying(Backoff(base_s=1.0, cap_s=30.0), rng or random.Random())
        self._pending: list[Reading] = []
        self._connected = False  # a CONNACK accepted this connection
        self._reason = ""  # why the last connection ended, or was refused

    def parse(self, payload: bytes | bytearray, arrived: datetime) -> list[Reading]:
        """The readings of one message; ValueError or TypeError if it cannot be read."""
        body = json.loads(payload, parse_float=Decimal)
        if isinstance(body, int | Decimal):  # a bare number (a bool is refused by to_decimal)
            return [Reading(self.meter_id, arrived, wire.to_decimal(body))]
        out = []
        for entry in body if isinstance(body, list) else [body]:
            if not isinstance(entry, dict):
                raise TypeError('expected {"timestamp", "value"}, a list of them, or a number')
            at = wire.parse_datetime(str(entry.get("timestamp")))
            out.append(Reading(self.meter_id, at, wire.to_decimal(entry.get("value"))))
        return out

    def _on_connect(
        self, client: paho.Client, _: Any, __: Any, reason: ReasonCode, ___: Any
    ) -> None:
        if reason.is_failure:
            self._reason = str(reason)
            return
        self._connected = True
        self._retry.reset()
        client.subscribe(self.settings.topic, qos=1)
        log.info("meter.connected", meter=self.meter_id, topic=self.settings.topic)

    def _on_subscribe(
        self, _: paho.Client, __: Any, ___: int, reasons: list[ReasonCode], ____: Any
    ) -> None:
        if any(reason.is_failure for reason in reasons):
            reason = "; ".join(str(r) for r in reasons)
            log.warning("meter.subscribe_failed", meter=self.meter_id, reason=reason)

    def _on_message(self, _: paho.Client, __: Any, message: paho.MQTTMessage) -> None:
        try:
            self._pending += self.parse(message.payload, datetime.now(UTC))
        except (ValueError, TypeError) as exc:
            log.warning(
                "meter.bad_message",
                meter=self.meter_id,
                topic=message.topic,
                payload=message.payload[:200].decode("utf-8", "replace"),
                reason=str(exc)[:200],
            )

    def _client(self) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2)
        if self.settings.username is not None:
            client.username_pw_set(self.settings.username, self._password)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive_s)
        return client

    async def _pump(self, client: paho.Client, emit: Emit) -> None:
        """Serve one connection until paho closes its socket (then say why, unless a refused
        CONNACK already did)."""
        sock = client.socket()
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        next_misc = trio.current_time() + MISC_EVERY_S
        while sock is not None and client.socket() is sock:
            with trio.move_on_at(next_misc):
                if client.want_write():
                    await trio.lowlevel.wait_writable(sock)
                    rc = client.loop_write()
                else:
                    await trio.lowlevel.wait_readable(sock)
                    rc = client.loop_read()
            if trio.current_time() >= next_misc and client.socket() is sock:
                if client.loop_misc() or client.socket() is not sock:  # no CONNACK or PINGRESP
                    rc = MQTTErrorCode.MQTT_ERR_KEEPALIVE
                next_misc = trio.current_time() + MISC_EVERY_S
            if self._pending:
                batch, self._pending = self._pending, []
                await emit(batch)
        self._reason = self._reason or (paho.error_string(rc) if rc else "")

    async def run(self, emit: Emit) -> None:
        client = self._client()
        connecting = _Connecting(client)
        try:
            while True:
                self._connected, self._reason = False, ""
                try:
                    await connecting.connect()
                except OSError as exc:
                    self._reason = str(exc) or type(exc).__name__
                else:
                    await self._pump(client, emit)
                delay = self._retry.next_delay()
                log.warning(
                    "meter.disconnected" if self._connected else "meter.connect_failed",
                    meter=self.meter_id,
                    broker=f"{self.settings.host}:{self.settings.port}",
                    reason=self._reason[:200] or "connection closed",
                    retry_in_s=round(delay, 2),
                )
                await trio.sleep(delay)
        finally:
            connecting.close()
