"""Meter samples → the market's quarter-hour energy data points (kWh, end-stamped).

A meter gives either power samples (W, instantaneous) or a cumulative energy register (kWh). Both
become one cumulative energy curve E(t):
- power: the trapezoid between consecutive samples (the mean of the two powers over the gap);
- register: the increase between consecutive readings; a decrease is a counter reset, after which
  the register counted up from 0, so the increase is the new reading itself.

A quarter hour's energy is E(end) − E(start), with E linear between samples. The sum over any run of
quarters therefore telescopes to the curve's own increase: energy is conserved exactly.

The gap rule, written down because it decides money:
- a gap between samples up to `max_gap_s` is interpolated silently (E is linear across it);
- a longer gap is interpolated too, but every quarter it touches is flagged;
- a quarter not covered by samples at all (before the first or after the last) is extrapolated
  from the nearest gap's mean power, and flagged. The caller decides whether flagged quarters may
  be sent (after a deadline they are, and `metering.incomplete` is logged), never silently.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from attrs import frozen

from flexbot import model, rules

QUARTER = timedelta(seconds=rules.MARKET_TIME_UNIT_S)
KWH_PLACES = Decimal("0.000001")  # 1 mWh: finer than any meter, coarse enough to read


class Kind(enum.StrEnum):
    POWER_W = "power_w"  # instantaneous power, W
    ENERGY_KWH = "energy_kwh"  # a cumulative energy register, kWh


@frozen(order=True)
class Sample:
    at: datetime
    value: Decimal


@frozen
class Quarter:
    end: datetime  # the market stamps a point at the end of its interval
    energy_kwh: Decimal
    flagged: bool = False  # extrapolated, or across a gap longer than max_gap_s


def energy_curve(samples: Iterable[Sample], kind: Kind) -> list[tuple[datetime, Decimal]]:
    """(time, cumulative kWh) at each sample, from 0 at the first; samples sorted, duplicates of a
    time keep the last value."""
    by_time: dict[datetime, Decimal] = {}
    for sample in sorted(samples, key=lambda s: s.at):
        by_time[sample.at] = sample.value
    points = sorted(by_time.items())
    curve: list[tuple[datetime, Decimal]] = []
    total = Decimal(0)
    for i, (at, value) in enumerate(points):
        if i > 0:
            prev_at, prev_value = points[i - 1]
            if kind is Kind.POWER_W:
                hours = Decimal((at - prev_at).total_seconds()) / Decimal(3600)
                total += (prev_value + value) / 2 * hours / Decimal(1000)
            else:
                total += value - prev_value if value >= prev_value else value
        curve.append((at, total))
    return curve


def quarters(
    curve: Sequence[tuple[datetime, Decimal]],
    start: datetime,
    end: datetime,
    *,
    max_gap_s: float = 900.0,
) -> list[Quarter]:
    """The quarter hours of `[start, end)` (on the grid) from a cumulative curve."""
    if not (rules.on_grid(start) and rules.on_grid(end)) or end <= start:
        raise ValueError("the window must be on the 15-minute grid and not empty")
    out: list[Quarter] = []
    at = start
    while at < end:
        nxt = at + QUARTER
        e0, f0 = _energy_at(curve, at, max_gap_s)
        e1, f1 = _energy_at(curve, nxt, max_gap_s)
        flagged = f0 or f1 or _long_gap_inside(curve, at, nxt, max_gap_s)
        out.append(Quarter(end=nxt, energy_kwh=e1 - e0, flagged=flagged))
        at = nxt
    return out


def _energy_at(
    curve: Sequence[tuple[datetime, Decimal]], when: datetime, max_gap_s: float
) -> tuple[Decimal, bool]:
    """E(when) and whether it is a guess (extrapolated, or inside a long gap)."""
    if not curve:
        return Decimal(0), True
    if len(curve) == 1:
        return curve[0][1], when != curve[0][0]
    # The segment holding `when`, or the nearest one for extrapolation.
    index = _segment(curve, when)
    (t0, e0), (t1, e1) = curve[index], curve[index + 1]
    span = Decimal((t1 - t0).total_seconds())
    offset = Decimal((when - t0).total_seconds())
    value = e0 + (e1 - e0) * offset / span
    outside = when < curve[0][0] or when > curve[-1][0]
    long_gap = float(span) > max_gap_s and t0 < when < t1
    return value, outside or long_gap


def _segment(curve: Sequence[tuple[datetime, Decimal]], when: datetime) -> int:
    lo, hi = 0, len(curve) - 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if curve[mid][0] <= when:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _long_gap_inside(
    curve: Sequence[tuple[datetime, Decimal]], start: datetime, end: datetime, max_gap_s: float
) -> bool:
    return any(
        (t1 - t0).total_seconds() > max_gap_s and t0 < end and t1 > start
        for (t0, _), (t1, _) in itertools.pairwise(curve)
    )


def meter_reading(
    points: Sequence[Quarter], start: datetime, end: datetime, *, created_at: datetime
) -> model.MeterReading:
    """The market's `metering_data` for a window, in kWh, 900 s resolution, end-stamped."""
    return model.MeterReading(
        data_points=tuple(
            model.DataPoint(timestamp=q.end, value=q.energy_kwh.quantize(KWH_PLACES))
            for q in points
        ),
        created_at=created_at,
        reading_start=start,
        reading_end=end,
        resolution=rules.MARKET_TIME_UNIT_S,
        unit_measured="kWh",
    )
