"""The MQTT source: subscribes to a topic filter (QoS 1) and turns its messages into readings.

A message is `{"timestamp": ISO 8601 with a zone, "value": number[, "meter_id": id]}`, a list of
those, or a bare number (stamped with its arrival time, UTC); numbers are read exactly (no float
rounding). The meter is named by the topic level `meter_level` when it is set (an entry's
`meter_id` must then agree), else, for a shared source, by each entry's `meter_id` (see
`MqttSettings`); a meter's own source without `meter_level` takes every message on its topic, as
it always has, and with it skips the topics of other meters. A shared source (a wildcard
filter such as `flexbot/v1/+/+/meter` with `meter_level: -2`) serves thousands of meters on one
connection. A message that cannot be read, or whose meter cannot be told, is logged
(`meter.bad_message`) and skipped whole; it never stops the source. A refused connect
(`meter.connect_failed`) or a lost connection (`meter.disconnected`) is logged and retried for
ever with capped, fully jittered backoff (1 s … 30 s); the subscription is made on every connect.

The connection is a `flexbot.mqtt.MqttLink` (paho on trio's loop, no threads of its own but the
connect's, which a cancel abandons; reads in bursts); its events keep the meter's names
(`meter.connected`, `meter.connect_failed`, `meter.disconnected`, `meter.subscribe_failed`).
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from decimal import Decimal

from flexbot import logs, wire
from flexbot.meters.source import Emit, MqttSettings, Reading, Route
from flexbot.mqtt import Broker, MqttLink

log = logs.get_logger("flexbot.meters.mqtt")


class MqttMeter:
    def __init__(
        self,
        route: Route,
        settings: MqttSettings,
        *,
        password: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.route = route
        self.settings = settings
        self._pending: list[Reading] = []
        self._emit: Emit | None = None
        broker = Broker(
            settings.host, settings.port, settings.username, password, settings.keepalive_s
        )
        self.link = MqttLink(
            broker,
            [settings.topic],
            self._on_message,
            events="meter",
            fields=route.fields,
            after_messages=self._hand_over,
            rng=rng,
        )
        # A payload's `meter_id` counts for a shared source, or to check against the topic. A
        # meter's own topic is all its own, whatever its payloads call themselves (a serial).
        self._by_payload = route.shared or settings.meter_level is not None

    def parse(self, payload: bytes | bytearray, arrived: datetime, topic: str) -> list[Reading]:
        """The readings of one message on `topic`; ValueError or TypeError if it cannot be read
        (or its meter cannot be told)."""
        by_topic = self._topic_meter(topic)
        body = json.loads(payload, parse_float=Decimal)
        if isinstance(body, int | Decimal):  # a bare number (a bool is refused by to_decimal)
            meter = self.route.meter_for(by_topic)
            return [] if meter is None else [Reading(meter, arrived, wire.to_decimal(body))]
        out = []
        for entry in body if isinstance(body, list) else [body]:
            if not isinstance(entry, dict):
                raise TypeError('expected {"timestamp", "value"}, a list of them, or a number')
            named = entry.get("meter_id") if self._by_payload else None
            named = None if named is None else str(named)
            if by_topic is not None:
                if named is not None and named != by_topic:
                    raise ValueError(f"meter_id {named!r} is not the topic's meter {by_topic!r}")
                named = by_topic
            meter = self.route.meter_for(named)
            if meter is None:
                continue  # another meter's
            at = wire.parse_datetime(str(entry.get("timestamp")))
            out.append(Reading(meter, at, wire.to_decimal(entry.get("value"))))
        return out

    def _topic_meter(self, topic: str) -> str | None:
        level = self.settings.meter_level
        if level is None:
            return None
        levels = topic.split("/")
        if not -len(levels) <= level < len(levels) or not levels[level]:
            raise ValueError(f"the topic has no meter id at level {level}")
        return levels[level]

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            self._pending += self.parse(payload, datetime.now(UTC), topic)
        except (ValueError, TypeError, RecursionError) as exc:  # nested too deep: garbage too
            log.warning(
                "meter.bad_message",
                **self.route.fields,
                topic=topic,
                payload=payload[:200].decode("utf-8", "replace"),
                reason=str(exc)[:200],
            )

    async def _hand_over(self) -> None:
        if self._pending and self._emit is not None:
            batch, self._pending = self._pending, []
            await self._emit(batch)

    async def run(self, emit: Emit) -> None:
        self._emit = emit
        await self.link.run()
