"""The store stays small (`flexbot.meters.retention`): raw readings rolled up into quarter hours
and let go, with every figure built afterwards the figure built before. Real SQLite files."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from flexbot.meters.builder import QUARTER, Kind, Quarter
from flexbot.meters.pool import Meters
from flexbot.meters.retention import Rolled, roll_up
from flexbot.meters.source import BaselineSettings, MeterSettings, SyntheticSettings, store_time
from flexbot.problems import Invalid
from flexbot.store import AsyncStore, Store
from flexbot.verification import VerificationSettings

NOW = datetime(2026, 11, 23, 10, 7, tzinfo=UTC)  # off the grid on purpose
DAY = timedelta(days=1)
RAW_KEPT = DAY
# Energy from power samples is exact to Decimal's 28 digits; a curve summed from another first
# sample may round its last digit otherwise: 10**-18 kWh, far below the 1 mWh sent.
EXACT = Decimal("1e-18")

pytestmark = pytest.mark.anyio


def meter(meter_id: str, kind: Kind = Kind.POWER_W, method: str = "mean_of_days") -> MeterSettings:
    return MeterSettings(
        id=meter_id,
        location_id="site-1",
        source=SyntheticSettings(respond=False),
        kind=kind,
        baseline=BaselineSettings(method=method, meter="fc" if method == "provided" else None),
    )


def windows() -> list[tuple[datetime, datetime]]:
    """Windows old and new: whole days back, and spans across the roll-up's horizon."""
    horizon = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    out = [(horizon - k * DAY, horizon - k * DAY + 2 * QUARTER) for k in range(4)]
    out += [(horizon - QUARTER, horizon + QUARTER), (horizon - 3 * QUARTER, horizon + 8 * QUARTER)]
    out.append((horizon + 4 * QUARTER, horizon + 12 * QUARTER))  # newer: raw only
    return out


async def figures(meters: Meters) -> list[list[Quarter]]:
    return [
        await meters.quarters(m, start, end)
        for m in meters.by_id.values()
        for start, end in windows()
    ]


def raw_count(store: Store) -> int:
    return int(store._db.execute("SELECT count(*) FROM readings").fetchone()[0])


@settings(max_examples=12, deadline=None)
@given(st.data())
def test_figures_are_the_same_after_a_roll_up(data: st.DataObject) -> None:
    """Readings every five minutes over four days, some missing (gaps, long ones too), of power or
    of a register: every window's quarters, before and after the raw readings are let go, are
    equal: their flags, and the energy of each quarter not flagged."""
    kinds = data.draw(st.lists(st.sampled_from(list(Kind)), min_size=1, max_size=2))
    configured = [meter(f"m{i}", kind) for i, kind in enumerate(kinds)]
    step = timedelta(minutes=5)
    count = int(4 * DAY / step)
    rows = []
    for m in configured:
        kept = data.draw(st.lists(st.booleans(), min_size=count, max_size=count))
        value = Decimal(0)
        for k in range(count):
            value += Decimal(data.draw(st.integers(0, 50), label="increment"))
            if kept[k]:
                rows.append((m.id, store_time(NOW - 4 * DAY + k * step), str(value)))

    async def main(path: Path) -> None:
        store = AsyncStore(Store.open(path))
        try:
            await store.run(store.sync.add_readings, rows)
            meters = Meters(configured, store, max_gap_s=900)
            before = await figures(meters)
            raw_before = raw_count(store.sync)
            rolled = await roll_up(meters, NOW, RAW_KEPT)
            after = await figures(meters)
            for window, (old, new) in enumerate(zip(before, after, strict=True)):
                assert [(q.end, q.flagged) for q in new] == [(q.end, q.flagged) for q in old], (
                    window
                )
                # A flagged quarter's energy is a guess (extrapolated), never used for a baseline
                # and, within raw_kept, metered from the raw readings: only the flag must hold.
                gaps = [
                    abs(a.energy_kwh - b.energy_kwh)
                    for a, b in zip(new, old, strict=True)
                    if not a.flagged
                ]
                assert all(gap <= EXACT for gap in gaps), (window, gaps)
            assert raw_count(store.sync) < raw_before or rolled.quarters == 0
            assert await roll_up(meters, NOW, RAW_KEPT) == Rolled()  # nothing left to do
        finally:
            store.sync.close()

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, Path(tmp) / "flexbot.db")


def minutely(
    meter_id: str, start: datetime, end: datetime, watts: int
) -> list[tuple[str, str, str]]:
    out = []
    at = start
    while at <= end:
        out.append((meter_id, store_time(at), str(watts)))
        at += timedelta(minutes=1)
    return out


async def test_a_late_reading_for_a_rolled_up_quarter_changes_nothing(tmp_path: Path) -> None:
    store = AsyncStore(Store.open(tmp_path / "flexbot.db"))
    main = meter("main")
    meters = Meters([main], store, max_gap_s=900)
    await store.run(store.sync.add_readings, minutely("main", NOW - 3 * DAY, NOW, 1000))
    rolled = await roll_up(meters, NOW, RAW_KEPT)
    assert rolled.meters == 1
    assert rolled.raw_deleted > 2 * 1440 - 10  # two days of minutes, less the one kept
    old = (NOW - 2 * DAY).replace(minute=0, second=0)
    window = (old, old + QUARTER)
    (quarter,) = await meters.quarters(main, *window)
    assert abs(quarter.energy_kwh - Decimal("0.25")) <= EXACT
    await store.run(
        store.sync.add_readings, [("main", store_time(old + timedelta(seconds=30)), "9e9")]
    )
    assert await meters.quarters(main, *window) == [quarter]


async def test_quarters_older_than_the_baseline_horizon_are_let_go(tmp_path: Path) -> None:
    """A forecast meter's method reads one day: its quarters older than that are let go, and a
    window there is flagged (no data) rather than made up."""
    store = AsyncStore(Store.open(tmp_path / "flexbot.db"))
    forecast = meter("fc", method="provided")
    meters = Meters([forecast], store, max_gap_s=900)
    await store.run(store.sync.add_readings, minutely("fc", NOW - 6 * DAY, NOW, 2000))
    first = await roll_up(meters, NOW - 3 * DAY, RAW_KEPT)
    assert first.quarters > 0
    assert first.quarters_deleted == 0
    later = await roll_up(meters, NOW, RAW_KEPT)
    assert later.quarters_deleted > 0
    old = (NOW - 5 * DAY).replace(minute=0, second=0)
    (quarter,) = await meters.quarters(forecast, old, old + QUARTER)
    assert quarter.flagged
    assert quarter.energy_kwh == 0
    recent = (NOW - 2 * DAY).replace(minute=0, second=0)
    (quarter,) = await meters.quarters(forecast, recent, recent + QUARTER)
    assert not quarter.flagged
    assert abs(quarter.energy_kwh - Decimal("0.5")) <= EXACT


async def test_a_meter_that_fell_silent_keeps_its_raw_readings_for_a_backfill(
    tmp_path: Path,
) -> None:
    """Readings stop for three days (a gateway down), then the gap is filled: a roll-up meanwhile
    kept nothing past the last reading, so the filled days count in full."""
    store = AsyncStore(Store.open(tmp_path / "flexbot.db"))
    main = meter("main")
    meters = Meters([main], store, max_gap_s=900)
    await store.run(store.sync.add_readings, minutely("main", NOW - 4 * DAY, NOW - 3 * DAY, 1000))
    await roll_up(meters, NOW, RAW_KEPT)
    await store.run(store.sync.add_readings, minutely("main", NOW - 3 * DAY, NOW, 1000))
    await roll_up(meters, NOW, RAW_KEPT)
    filled = (NOW - 2 * DAY).replace(minute=0, second=0)
    (quarter,) = await meters.quarters(main, filled, filled + QUARTER)
    assert not quarter.flagged
    assert abs(quarter.energy_kwh - Decimal("0.25")) <= EXACT


def test_raw_readings_are_kept_at_least_as_long_as_metering_waits_for_them() -> None:
    with pytest.raises(Invalid, match=r"raw_kept_s: must be at least max_wait_s \(3600"):
        VerificationSettings(max_wait_s=3600, raw_kept_s=600)
