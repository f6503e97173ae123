"""`MqttLink`: one connection to an MQTT broker, on trio's loop, that stays up.

paho runs without threads of its own, through its external-loop API: `loop_read` when the socket
is readable, `loop_write` when paho wants to write and the socket is writable, `loop_misc` about
once a second for keepalive. Only the TCP connect, which paho does blocking, runs in a worker
thread, which a cancel may abandon (paho would wait out its connect timeout): the client is then
closed by whichever side is last to hold it (`_Connecting`), so no socket outlives the link.

The link subscribes (QoS 1) to its topics on every connect, and hands each message to the
owner's `on_message(topic, payload)`, synchronously, in the link's task: the owner parses and
keeps what it needs, and anything slow waits for `after_messages`, an awaitable run once per
burst of messages (up to `READ_BURST` read while the socket has more: a wildcard subscription of
thousands of meters reads in bursts, one wait and one hand-over for many). A refused connect
(`<events>.connect_failed`) or a lost connection (`<events>.disconnected`) is logged with the
owner's fields and retried for ever with capped, fully jittered backoff (1 s … 30 s); the owner
names the events (`meter`, `asset`), which are part of its own public interface.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import paho.mqtt.client as paho
import trio
from attrs import frozen
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from flexbot import logs
from flexbot.backoff import Backoff, Retrying

log = logs.get_logger("flexbot.mqtt")

MISC_EVERY_S = 1.0  # how often paho's keepalive bookkeeping (`loop_misc`) runs
READ_BURST = 500  # messages read in one go while the socket has more


@frozen
class Broker:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None  # resolved: the secret itself
    keepalive_s: int = 30


OnMessage = Callable[[str, bytes], None]


class _Connecting:
    """paho's blocking connect, in a worker thread that a cancel may abandon. The client belongs
    to that thread while it runs: the link's task closes it only if no connect is running, else
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
        """The link ends: close the client now, or when its running connect returns."""
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


class MqttLink:
    def __init__(
        self,
        broker: Broker,
        topics: Sequence[str],
        on_message: OnMessage,
        *,
        events: str,  # the prefix of its log events: `meter`, `asset`
        fields: Mapping[str, Any],  # who the link is for, in its log events
        after_messages: Callable[[], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.events = events
        self.fields = dict(fields)
        self.broker = broker
        self.topics = tuple(topics)
        self._on_message = on_message
        self._after = after_messages
        self._retry = Retrying(Backoff(base_s=1.0, cap_s=30.0), rng or random.Random())
        self._client: paho.Client | None = None
        self.connected = False  # a CONNACK accepted the current connection
        self.subscribed = trio.Event()  # set on the first subscription's answer
        self._reason = ""  # why the last connection ended, or was refused
        self._messages = 0  # received: a burst of reads ends with a read that brings none
        self._handed_over = 0  # messages `after_messages` has been run for

    def _on_connect(
        self, client: paho.Client, _: Any, __: Any, reason: ReasonCode, ___: Any
    ) -> None:
        if reason.is_failure:
            self._reason = str(reason)
            return
        self.connected = True
        self._retry.reset()
        if self.topics:
            client.subscribe([(topic, 1) for topic in self.topics])
        subscribed: dict[str, Any] = (
            {"topic": self.topics[0]} if len(self.topics) == 1 else {"topics": list(self.topics)}
        )
        log.info(f"{self.events}.connected", **self.fields, **subscribed)

    def _on_subscribe(
        self, _: paho.Client, __: Any, ___: int, reasons: list[ReasonCode], ____: Any
    ) -> None:
        if any(reason.is_failure for reason in reasons):
            reason = "; ".join(str(r) for r in reasons)
            log.warning(f"{self.events}.subscribe_failed", **self.fields, reason=reason)
        self.subscribed.set()

    def _message(self, _: paho.Client, __: Any, message: paho.MQTTMessage) -> None:
        self._messages += 1
        self._on_message(message.topic, bytes(message.payload))  # bytes: no copy

    def _new_client(self) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2)
        if self.broker.username is not None:
            client.username_pw_set(self.broker.username, self.broker.password)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._message
        client.connect_async(self.broker.host, self.broker.port, self.broker.keepalive_s)
        return client

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Queue a message (QoS 1: paho resends it until the broker has it); False while the link
        is down (the caller keeps it, and publishes again when it may)."""
        client = self._client
        if client is None or not self.connected:
            return False
        info = client.publish(topic, payload, qos=1, retain=retain)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    async def _pump(self, client: paho.Client) -> None:
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
                    rc = self._read_burst(client)
                    if not rc and client.want_write():
                        # The burst's acknowledgements, written now (the socket takes them at
                        # once, or paho keeps the rest): not a loop pass and a wait for each.
                        rc = client.loop_write()
            if trio.current_time() >= next_misc and client.socket() is sock:
                if client.loop_misc() or client.socket() is not sock:  # no CONNACK or PINGRESP
                    rc = MQTTErrorCode.MQTT_ERR_KEEPALIVE
                next_misc = trio.current_time() + MISC_EVERY_S
            if self._messages != self._handed_over and self._after is not None:
                self._handed_over = self._messages
                await self._after()
        self._reason = self._reason or (paho.error_string(rc) if rc else "")

    def _read_burst(self, client: paho.Client) -> MQTTErrorCode:
        """Read on while each read brings a message, up to READ_BURST. A read that brings none (a
        partial packet, an empty socket, an acknowledgement) ends the burst."""
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        for _ in range(READ_BURST):
            before = self._messages
            rc = client.loop_read()
            if rc or self._messages == before:
                break
        return rc

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        client = self._client = self._new_client()
        connecting = _Connecting(client)
        task_status.started()
        try:
            while True:
                self.connected, self._reason = False, ""
                try:
                    await connecting.connect()
                except OSError as exc:
                    self._reason = str(exc) or type(exc).__name__
                else:
                    await self._pump(client)
                delay = self._retry.next_delay()
                log.warning(
                    f"{self.events}.disconnected"
                    if self.connected
                    else f"{self.events}.connect_failed",
                    **self.fields,
                    broker=f"{self.broker.host}:{self.broker.port}",
                    reason=self._reason[:200] or "connection closed",
                    retry_in_s=round(delay, 2),
                )
                self.connected = False
                await trio.sleep(delay)
        finally:
            self.connected = False
            connecting.close()
