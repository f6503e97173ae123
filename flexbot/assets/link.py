"""How the fleet hears its assets: an MQTT broker (`listen`), or an in-process bus (`LocalBus`)
carrying the same topics and bodies, for the demo where no broker is installed. Either way every
message goes through `Fleet.receive`, so what is tested in process is what runs on a broker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio
from paho.mqtt.client import topic_matches_sub

from flexbot import wire
from flexbot.assets.fleet import Fleet
from flexbot.clock import Clock
from flexbot.mqtt import Broker, MqttLink
from flexbot.store import AsyncStore

OnMessage = Callable[[str, bytes], None]
FLUSH_S = 2.0  # at the end, how long the last save may take


def topics(fleet: Fleet) -> list[str]:
    """What the fleet subscribes to: every asset's `state` and `availability`."""
    head = fleet.prefix.rstrip("/")
    return [f"{head}/+/+/state", f"{head}/+/+/availability"]


def listener(fleet: Fleet, broker: Broker) -> MqttLink:
    """The fleet's link to the assets' broker (run it in a nursery)."""
    prefix = {"prefix": fleet.prefix}
    return MqttLink(broker, topics(fleet), fleet.receive, events="asset", fields=prefix)


async def watch_staleness(fleet: Fleet, clock: Clock, *, every_s: float) -> None:
    """Log assets going stale and coming back (`asset.stale`, `asset.fresh`), for ever."""
    while True:
        fleet.check_staleness(clock.now())
        await trio.sleep(every_s)


async def keep_in_store(fleet: Fleet, store: AsyncStore, clock: Clock, *, every_s: float) -> None:
    """What the assets said, written to the store every `every_s` (one transaction a batch), for
    `flexbot status`, with the market time it was written at (status's "now" on a sandbox
    clock); what is new at a cancel is written before the task ends."""
    try:
        while True:
            await trio.sleep(every_s)
            await _save(fleet, store, clock)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_S):
            await _save(fleet, store, clock)


async def _save(fleet: Fleet, store: AsyncStore, clock: Clock) -> None:
    rows = fleet.take_changes()
    try:
        await store.run(store.sync.save_assets, rows, wire.format_datetime(clock.now()))
    except BaseException:
        fleet.changes_unsaved(rows)  # kept for the next save
        raise


class LocalBus:
    """A broker in the process: topic filters with `+` and `#`, retained messages (an empty one
    deletes), delivery at once in the publisher's call."""

    def __init__(self) -> None:
        self._retained: dict[str, bytes] = {}
        self._subscribers: list[tuple[tuple[str, ...], OnMessage]] = []

    def subscribe(self, filters: Sequence[str], on_message: OnMessage) -> None:
        """Subscribe; the retained messages that match are delivered now, as a broker does."""
        self._subscribers.append((tuple(filters), on_message))
        for topic, payload in list(self._retained.items()):
            if any(topic_matches_sub(f, topic) for f in filters):
                on_message(topic, payload)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        if retain:
            if payload:
                self._retained[topic] = payload
            else:
                self._retained.pop(topic, None)
        for filters, on_message in self._subscribers:
            if any(topic_matches_sub(f, topic) for f in filters):
                on_message(topic, payload)
        return True
