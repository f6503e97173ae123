"""Alarms on what fails to happen: silence is the failure operators miss.

Checked every `check_s`; each alarm logs a warning when it is raised (`alarm.raised`, with its
`alarm` name and what it is about) and an info line when it clears (`alarm.cleared`), never a line
a second while it lasts:
- `stream_silent`: a market stream (order book or ticker) delivered nothing, or was not connected,
  for longer than `stream_silence_s`;
- `token_expired`: the access token expired and no refresh succeeded;
- `metering_overdue`: a contract's metering was not acknowledged by `max_wait_s` plus
  `metering_grace_s` after its window ended (the market's deadline is close or past);
- `outbox_stale`: the oldest pending submission has waited longer than `outbox_age_s`;
- `backlog_full`: a bounded buffer or memory (`flexbot.parts.backlogs`: the feed's ticker buffer,
  each strategy's own-order and fact queues, the verifier's outbox keys; and the alarms' own memory)
  is at its capacity, or dropped something since the last check. Drops are also logged, at most
  once per check and backlog (`backlog.dropped`, with how many since the last line).
The current alarms are also part of systemd's STATUS line.

Every check reads only what the tracker holds, never the store's whole history: the metering
check asks the outbox about the overdue orders alone, and remembers those found acknowledged (a
final state) only while they stay overdue candidates, within `ACKED_CAPACITY`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import trio
from attrs import Factory, define, frozen

from flexbot import logs, model
from flexbot.buffers import Bounded, BoundedSet
from flexbot.market import Endpoint
from flexbot.parts import Parts, backlogs, summary_line
from flexbot.store import Store

if TYPE_CHECKING:
    from flexbot.systemd import Notifier

log = logs.get_logger("flexbot.alarms")

ACKED_CAPACITY = 65_536
METERING = str(model.MeasurementType.METERING)


@frozen
class AlarmBounds:
    check_s: float = 10.0
    stream_silence_s: float = 900.0
    metering_grace_s: float = 600.0
    outbox_age_s: float = 900.0


@define
class AlarmMemory:
    """What the checks remember from one to the next; each part bounded."""

    # Endpoint → (its data frame count, when that last changed): one entry per endpoint.
    last_data: dict[Endpoint, tuple[int, float]] = Factory(dict)
    # Overdue-candidate orders whose metering the outbox holds acknowledged (never asked again
    # while they stay candidates; let go when the tracker lets the order go).
    acked: BoundedSet[str] = Factory(lambda: BoundedSet[str](ACKED_CAPACITY))
    # (backlog, strategy) → its drop count at the last check: one entry per backlog.
    dropped: dict[tuple[str, str], int] = Factory(dict)


async def watch_for_silence(
    parts: Parts,
    notify: Notifier,
    bounds: AlarmBounds,
    on_alarms: Callable[[set[str]], None] | None = None,
) -> None:
    active: dict[str, dict[str, object]] = {}
    memory = AlarmMemory()
    while True:
        await trio.sleep(bounds.check_s)
        found = await current_alarms(parts, bounds, memory)
        for key, fields in found.items():
            if key not in active:
                log.warning("alarm.raised", **fields)
        for key, fields in active.items():
            if key not in found:
                log.info("alarm.cleared", **fields)
        active = found
        if on_alarms is not None:
            on_alarms({str(f["alarm"]) for f in found.values()})
        if notify.enabled:
            names = sorted({str(f["alarm"]) for f in found.values()})
            suffix = f"; ALARMS: {', '.join(names)}" if names else ""
            notify.status(summary_line(parts) + suffix)


async def current_alarms(
    parts: Parts, bounds: AlarmBounds, memory: AlarmMemory
) -> dict[str, dict[str, object]]:
    """The alarms raised now; `memory` is the caller's, kept between checks."""
    now = trio.current_time()
    last_data = memory.last_data
    found: dict[str, dict[str, object]] = {}
    for endpoint in (Endpoint.ORDERBOOK, Endpoint.TICKER):
        consumer = parts.feed.consumers.get(endpoint)
        if consumer is None:
            continue
        # Data frames, not pongs: a link that answers pings but delivers nothing is silent.
        frames, since = last_data.get(endpoint, (-1, now))
        if consumer.stats.frames != frames:
            last_data[endpoint] = (consumer.stats.frames, now)
            since = now
        silent_for = now - since
        if silent_for > bounds.stream_silence_s:
            found[f"stream:{endpoint}"] = {
                "alarm": "stream_silent",
                "endpoint": str(endpoint),
                "connected": consumer.connected,
                "silent_s": round(silent_for),
            }
    expires_at = parts.market.tokens.expires_at
    if expires_at is not None and now > expires_at:
        found["token"] = {"alarm": "token_expired", "expired_s_ago": round(now - expires_at)}
    found.update(await metering_alarms(parts, bounds, memory))
    store = parts.store
    pending, oldest = await store.run(store.sync.outbox_backlog)
    if oldest is not None and time.time() - oldest > bounds.outbox_age_s:
        found["outbox"] = {
            "alarm": "outbox_stale",
            "pending": pending,
            "oldest_s": round(time.time() - oldest),
        }
    found.update(backlog_alarms(parts, memory))
    return found


async def metering_alarms(
    parts: Parts, bounds: AlarmBounds, memory: AlarmMemory
) -> dict[str, dict[str, object]]:
    """Sells with contracts past `max_wait_s` plus the grace whose metering is not acked."""
    market_now = parts.clock.now()
    grace = timedelta(seconds=parts.verifier.settings.max_wait_s + bounds.metering_grace_s)
    due: dict[str, datetime] = {}  # order id → its window's end
    for intent in parts.tracker:
        order = intent.order
        if intent.dry_run or order is None or intent.order_id is None:
            continue
        if intent.request.side is not model.Side.SELL or not order.contracts:
            continue
        if market_now > intent.request.delivery_end + grace:
            due[intent.order_id] = intent.request.delivery_end
    memory.acked.retain(lambda order_id: order_id in due)
    unknown = [order_id for order_id in due if order_id not in memory.acked]
    if unknown:
        store = parts.store
        for order_id in await store.run(_acked_metering, store.sync, unknown):
            memory.acked.add(order_id)
    return {
        f"metering:{order_id}": {
            "alarm": "metering_overdue",
            "order_id": order_id,
            "delivery_end": end.isoformat(),
        }
        for order_id, end in due.items()
        if order_id not in memory.acked
    }


def _acked_metering(store: Store, order_ids: list[str]) -> set[str]:
    """Those of `order_ids` whose metering the market acknowledged (one lookup by key each)."""
    return {
        row.order_id
        for order_id in order_ids
        for row in store.outbox(order_id)
        if row.measurement_type == METERING and row.state == "acked"
    }


def backlog_alarms(parts: Parts, memory: AlarmMemory) -> dict[str, dict[str, object]]:
    """`backlog_full` for each backlog at its capacity or with drops since the last check;
    `backlog.dropped` logged for each of the latter."""
    found: dict[str, dict[str, object]] = {}
    watched: list[tuple[str, str, Bounded]] = [*backlogs(parts), ("alarms_acked", "", memory.acked)]
    for backlog, strategy, buffer in watched:
        new = buffer.dropped - memory.dropped.get((backlog, strategy), 0)
        memory.dropped[(backlog, strategy)] = buffer.dropped
        about = {"backlog": backlog, **({"strategy": strategy} if strategy else {})}
        if new:
            log.warning("backlog.dropped", **about, dropped=new, total=buffer.dropped)
        if new or len(buffer) >= buffer.capacity:
            found[f"backlog:{backlog}:{strategy}"] = {
                "alarm": "backlog_full",
                **about,
                "size": len(buffer),
                "capacity": buffer.capacity,
                "dropped": buffer.dropped,
            }
    return found
