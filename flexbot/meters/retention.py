"""The store stays small: raw readings rolled up into quarter hours, and let go.

A meter read once a minute leaves 1,440 raw readings a day; the market wants 96 quarter hours.
Once a quarter hour can no longer change (no late reading may still come: `raw_kept` after it,
at least the longest metering waits for late data), its energy and flag are kept in the store and
the raw readings before it let go, all but the newest (the quarter after it interpolates from
it): every figure built afterwards is the figure built before (its flag, and its energy as
computed, all of Decimal's digits; a flagged quarter's energy is a guess either way).
Quarter hours are kept as long as the meter's baseline method may look back (`7 × N + 14`
days), then let go too.

A reading arriving for a time already rolled up is stored and changes nothing (it is let go at
the next roll-up): past `raw_kept`, late is too late.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from attrs import frozen

from flexbot import logs, rules, wire
from flexbot.meters.builder import QUARTER
from flexbot.meters.pool import Meters, from_readings
from flexbot.meters.source import MeterSettings, store_time
from flexbot.store import Store

DAY = timedelta(days=1)

log = logs.get_logger("flexbot.meters.retention")


@frozen
class Rolled:
    meters: int = 0  # meters with something rolled up
    quarters: int = 0  # quarter hours kept
    raw_deleted: int = 0
    quarters_deleted: int = 0

    def __add__(self, other: Rolled) -> Rolled:
        return Rolled(
            self.meters + other.meters,
            self.quarters + other.quarters,
            self.raw_deleted + other.raw_deleted,
            self.quarters_deleted + other.quarters_deleted,
        )


async def roll_up(meters: Meters, now: datetime, raw_kept: timedelta) -> Rolled:
    """Roll up every meter's quarter hours ending before `now - raw_kept` (on the grid) that its
    readings have passed: a meter that fell silent keeps its raw readings until it reads again,
    so a backfill after an outage is not too late. A meter that cannot be rolled up is logged and
    left raw; the others go on."""
    horizon = rules.floor_to_grid(now - raw_kept)
    total = Rolled()
    for meter in meters.by_id.values():
        try:
            total += await _roll_up_one(meters, meter.id, horizon, meters.horizon_days(meter))
        except (ArithmeticError, ValueError) as exc:
            log.warning("meters.rollup_failed", meter=meter.id, reason=str(exc)[:200])
    return total


async def _roll_up_one(meters: Meters, meter_id: str, horizon: datetime, keep_days: int) -> Rolled:
    store = meters.store
    meter = meters.by_id[meter_id]
    keep_from = horizon - keep_days * DAY - DAY
    rolled_until = await store.run(store.sync.rolled_until, meter_id)
    if rolled_until is not None:
        start = wire.parse_datetime(rolled_until)
    else:
        first = await store.run(store.sync.first_reading_at, meter_id)
        if first is None:
            return Rolled()
        start = rules.floor_to_grid(wire.parse_datetime(first))
    start = max(start, rules.floor_to_grid(keep_from))
    newest = await store.run(store.sync.last_reading_at, meter_id)
    if newest is None:
        return Rolled()
    horizon = min(horizon, rules.floor_to_grid(wire.parse_datetime(newest)))
    if start >= horizon:
        return Rolled()
    total = Rolled(meters=1)
    while start < horizon:  # a day at a time: bounded memory on a first long history
        stop = min(start + DAY, horizon)
        total += await store.run(
            _roll_up_span, store.sync, meter, start, stop, keep_from, max_gap_s=meters.max_gap_s
        )
        start = stop
    return total


def _roll_up_span(
    store: Store,
    meter: MeterSettings,
    start: datetime,
    stop: datetime,
    keep_from: datetime,
    *,
    max_gap_s: float,
) -> Rolled:
    """One store call (a reader of quarters never sees it half done): the quarters of
    `[start, stop)` built from the raw readings and kept, the readings before `stop` let go."""
    quarters = from_readings(store, meter, start, stop, max_gap_s=max_gap_s)
    rows = [(store_time(q.end), str(q.energy_kwh), q.flagged) for q in quarters]
    raw, old = store.roll_up(
        meter.id, rows, raw_from=store_time(stop), quarters_from=store_time(keep_from + QUARTER)
    )
    return Rolled(0, len(rows), raw, old)
