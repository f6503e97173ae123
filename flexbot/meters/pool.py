"""A pool's energy: the quarter hours of every meter of every site an order names, summed.

An aggregator sells a pool (a sell naming several sites), and a site may have several meters (a
main meter and a sub-meter, a building's feeders): the pool's baseline and its metering are the
sum over all of them. Without the sum, a pool is judged against one meter's baseline and
verification fails, or pays for a fraction.

The order of the sum, written down because it decides money: **each meter's baseline by its own
method, then summed** (not one method over the summed history). Meters have methods of their own
(a PV site's forecast, a heat pump's mean of days); a method that picks days (high X of Y) picks
the days typical for that meter, and a meter with an incomplete day loses that day for itself,
not for the whole pool. For `mean_of_days` alone both orders give the same sum.

A quarter of the pool is flagged when any of its meters' quarter is (a gap, data missing): it
waits like a flagged quarter of one meter does. A site named by the order with no meter at all
cannot be metered: the pool is not measured (`Pool.missing`), never measured as if it were
smaller. A meter that is another's forecast (`provided` baseline) is no part of any pool.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal

from attrs import frozen

from flexbot import wire
from flexbot.meters import baseline as baselines
from flexbot.meters.builder import QUARTER, Quarter, Sample, energy_curve, quarters
from flexbot.meters.source import MeterSettings, store_time
from flexbot.store import AsyncStore, Store


@frozen
class Pool:
    """The meters of the sites an order names; `missing`: the sites among them with none."""

    meters: tuple[MeterSettings, ...]
    missing: tuple[str, ...] = ()


class MeterBaselineUnavailable(Exception):
    """One meter of a pool has no baseline: the pool has none."""

    def __init__(self, meter: str, reason: str) -> None:
        super().__init__(f"{meter}: {reason}")
        self.meter = meter
        self.reason = reason


def summed(per_meter: Sequence[Sequence[Quarter]]) -> list[Quarter]:
    """The pool's quarters: each quarter's energy summed over the meters, flagged if any meter's
    is. Every meter's quarters cover the same window."""
    if not per_meter:
        raise ValueError("a pool has at least one meter")
    out = []
    for column in zip(*per_meter, strict=True):
        ends = {q.end for q in column}
        if len(ends) != 1:
            raise ValueError(f"the meters' quarters end at different times: {sorted(ends)}")
        out.append(
            Quarter(
                end=column[0].end,
                energy_kwh=sum((q.energy_kwh for q in column), Decimal(0)),
                flagged=any(q.flagged for q in column),
            )
        )
    return out


class Meters:
    """The configured meters, by site, and their quarter hours from the store's readings."""

    def __init__(
        self, meters: Iterable[MeterSettings], store: AsyncStore, *, max_gap_s: float
    ) -> None:
        self.by_id = {m.id: m for m in meters}
        # A meter named as another's forecast (`baseline: {method: provided, meter: …}`) gives
        # that meter's baseline; it measures nothing of the pool, which would count it twice.
        self.forecasts = {
            m.baseline.meter
            for m in self.by_id.values()
            if m.baseline.method == "provided" and m.baseline.meter not in (None, m.id)
        }
        self.by_site: defaultdict[str, list[MeterSettings]] = defaultdict(list)
        for meter in self.by_id.values():
            if meter.id not in self.forecasts:
                self.by_site[meter.location_id].append(meter)
        self.store = store
        self.max_gap_s = max_gap_s

    def pool(self, sites: Iterable[str | None]) -> Pool:
        """Every meter of the named sites, each once, in the order named."""
        named = list(dict.fromkeys(s for s in sites if s is not None))
        meters = [m for site in named for m in self.by_site.get(site, ())]
        missing = tuple(site for site in named if site not in self.by_site)
        return Pool(tuple(meters), missing)

    async def metering(
        self, pool: Pool, start: datetime, end: datetime
    ) -> tuple[list[Quarter], list[str]]:
        """The pool's quarters of `[start, end)`, and the meters with a flagged quarter."""
        per_meter = [await self.quarters(meter, start, end) for meter in pool.meters]
        flagged = [m.id for m, qs in zip(pool.meters, per_meter, strict=True) if _any_flag(qs)]
        return summed(per_meter), flagged

    async def baseline(self, pool: Pool, start: datetime, end: datetime) -> list[Quarter]:
        """The pool's baseline of `[start, end)`: each meter's by its own method, summed."""
        per_meter = []
        for meter in pool.meters:
            try:
                per_meter.append(await self._baseline_of(meter, start, end))
            except baselines.BaselineUnavailable as exc:
                raise MeterBaselineUnavailable(meter.id, str(exc)) from None
        return summed(per_meter)

    async def quarters(self, meter: MeterSettings, start: datetime, end: datetime) -> list[Quarter]:
        """One meter's quarters of `[start, end)` (`quarters_in`), read in one store call: a
        roll-up never runs half-way through it."""
        return await self.store.run(
            quarters_in, self.store.sync, meter, start, end, max_gap_s=self.max_gap_s
        )

    def horizon_days(self, meter: MeterSettings) -> int:
        """How many days of quarters the meter's baseline method may read."""
        method = meter.baseline
        if method.method == "provided":
            return 1  # a forecast's readings for the window itself
        return baselines.horizon_days(method.days if method.method == "mean_of_days" else method.y)

    async def _baseline_of(
        self, meter: MeterSettings, start: datetime, end: datetime
    ) -> list[Quarter]:
        method = meter.baseline
        if method.method == "provided":
            source = self.by_id.get(method.meter or "")
            points = await self.quarters(source or meter, start, end)
            if _any_flag(points):
                raise baselines.BaselineUnavailable(
                    "provided: the forecast does not cover the window"
                )
            return points
        look_back = method.days if method.method == "mean_of_days" else method.y
        history: dict[date, list[Decimal]] = {}
        for day in baselines.candidate_days(start.date(), look_back):
            shift = start.date() - day
            past = await self.quarters(meter, start - shift, end - shift)
            if not _any_flag(past):
                history[day] = [q.energy_kwh for q in past]
                if len(history) >= look_back:
                    break  # newest first: the rest would not be used
        if method.method == "mean_of_days":
            energies = baselines.mean_of_days(history, start.date(), method.days)
        else:
            energies = baselines.high_x_of_y(history, start.date(), method.x, method.y)
        template = await self.quarters(meter, start, end)
        return [
            Quarter(end=q.end, energy_kwh=energy)
            for q, energy in zip(template, energies, strict=True)
        ]


def quarters_in(
    store: Store, meter: MeterSettings, start: datetime, end: datetime, *, max_gap_s: float
) -> list[Quarter]:
    """One meter's quarters of `[start, end)`: those rolled up in the store (`retention.py`: the
    same figures, kept once the raw readings are let go), the rest from its raw readings. A
    quarter older than what is kept is flagged, with no energy."""
    rolled_until = store.rolled_until(meter.id)
    if rolled_until is None or store_time(start) >= rolled_until:
        return from_readings(store, meter, start, end, max_gap_s=max_gap_s)
    split = min(wire.parse_datetime(rolled_until), end)
    kept = {
        wire.parse_datetime(e): Quarter(wire.parse_datetime(e), Decimal(kwh), flagged)
        for e, kwh, flagged in store.rolled_quarters(meter.id, store_time(start), store_time(split))
    }
    out = []
    at = start
    while at < split:
        at += QUARTER
        out.append(kept.get(at) or Quarter(at, Decimal(0), flagged=True))
    if split < end:
        out += from_readings(store, meter, split, end, max_gap_s=max_gap_s)
    return out


def from_readings(
    store: Store, meter: MeterSettings, start: datetime, end: datetime, *, max_gap_s: float
) -> list[Quarter]:
    """One meter's quarters of `[start, end)`, from its raw readings."""
    rows = store.readings(meter.id, store_time(start), store_time(end))
    samples = [Sample(wire.parse_datetime(at), Decimal(value)) for at, value in rows]
    return quarters(energy_curve(samples, meter.kind), start, end, max_gap_s=max_gap_s)


def _any_flag(points: Sequence[Quarter]) -> bool:
    return any(q.flagged for q in points)
