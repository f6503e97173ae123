"""Alarms on what fails to happen: silence is the failure operators miss.

Checked every `check_s`; each alarm logs a warning when it is raised (`alarm.raised`, with its
`alarm` name and what it is about) and an info line when it clears (`alarm.cleared`), never a line
a second while it lasts:
- `stream_silent`: a market stream (order book or ticker) delivered nothing, or was not connected,
  for longer than `stream_silence_s`;
- `token_expired`: the access token expired and no refresh succeeded;
- `metering_overdue`: a contract's metering was not acknowledged by `max_wait_s` plus
  `metering_grace_s` after its window ended (the market's deadline is close or past);
- `outbox_stale`: the oldest pending submission has waited longer than `outbox_age_s`.
The current alarms are also part of systemd's STATUS line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

import trio
from attrs import frozen

from flexbot import logs, model
from flexbot.market import Endpoint
from flexbot.parts import Parts, summary_line

if TYPE_CHECKING:
    from flexbot.systemd import Notifier

log = logs.get_logger("flexbot.alarms")


@frozen
class AlarmBounds:
    check_s: float = 10.0
    stream_silence_s: float = 900.0
    metering_grace_s: float = 600.0
    outbox_age_s: float = 900.0


async def watch_for_silence(
    parts: Parts,
    notify: Notifier,
    bounds: AlarmBounds,
    on_alarms: Callable[[set[str]], None] | None = None,
) -> None:
    active: dict[str, dict[str, object]] = {}
    last_data: dict[Endpoint, tuple[int, float]] = {}
    while True:
        await trio.sleep(bounds.check_s)
        found = await current_alarms(parts, bounds, last_data)
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
    parts: Parts, bounds: AlarmBounds, last_data: dict[Endpoint, tuple[int, float]]
) -> dict[str, dict[str, object]]:
    """The alarms raised now; `last_data` (endpoint → frame count, when it last changed) is the
    caller's memory between checks."""
    now = trio.current_time()
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
    market_now = parts.clock.now()
    grace = timedelta(seconds=parts.verifier.settings.max_wait_s + bounds.metering_grace_s)
    store = parts.store
    acked = await store.run(store.sync.acked, "metering")
    for intent in parts.tracker:
        order = intent.order
        if intent.dry_run or order is None or intent.request.side is not model.Side.SELL:
            continue
        overdue = market_now > intent.request.delivery_end + grace
        if order.contracts and intent.order_id not in acked and overdue:
            found[f"metering:{intent.order_id}"] = {
                "alarm": "metering_overdue",
                "order_id": intent.order_id,
                "delivery_end": intent.request.delivery_end.isoformat(),
            }
    pending, oldest = await store.run(store.sync.outbox_backlog)
    if oldest is not None and time.time() - oldest > bounds.outbox_age_s:
        found["outbox"] = {
            "alarm": "outbox_stale",
            "pending": pending,
            "oldest_s": round(time.time() - oldest),
        }
    return found
