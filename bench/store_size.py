"""The store's size per meter-day: raw readings, and the quarter hours they are rolled up into.

Meters read once a minute for a number of days go into a fresh SQLite store through the store's
own calls; the file's size (after VACUUM) is measured with the raw readings, then after the
roll-up (`flexbot.meters.retention`) has kept the quarter hours and let the raw readings go. The
baseline is the raw store itself: the ratio says what the roll-up saves.

    .venv/bin/python bench/store_size.py [--meters 50] [--days 4]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import trio

from flexbot.meters.builder import Kind
from flexbot.meters.pool import Meters
from flexbot.meters.retention import roll_up
from flexbot.meters.source import BaselineSettings, MeterSettings, SyntheticSettings, store_time
from flexbot.store import AsyncStore, Store

NOW = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)


def size(path: Path) -> int:
    db = sqlite3.connect(path)
    db.execute("VACUUM")
    db.close()
    return path.stat().st_size


async def measure(path: Path, n_meters: int, days: int) -> tuple[int, int, int]:
    meters = [
        MeterSettings(
            id=f"meter-{i:05d}",
            location_id=f"site-{i // 4}",
            source=SyntheticSettings(),
            kind=Kind.POWER_W,
            baseline=BaselineSettings(),
        )
        for i in range(n_meters)
    ]
    store = AsyncStore(Store.open(path))
    empty = size(path)
    for meter in meters:
        rows = [
            (meter.id, store_time(NOW - timedelta(minutes=k)), str(Decimal(1000 + k % 97)))
            for k in range(days * 1440)
        ]
        await store.run(store.sync.add_readings, rows)
    raw = size(path)
    # Everything but the last day rolled up (raw_kept: one day).
    await roll_up(Meters(meters, store, max_gap_s=900), NOW, timedelta(days=1))
    store.sync.close()
    return empty, raw, size(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=50)
    parser.add_argument("--days", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        empty, raw, rolled = trio.run(measure, Path(tmp) / "flexbot.db", args.meters, args.days)
    meter_days = args.meters * args.days
    rolled_days = args.meters * (args.days - 1)
    raw_per = (raw - empty) / meter_days
    # After the roll-up: the rolled days as quarters, the last day still raw.
    quarter_per = (rolled - empty - raw_per * args.meters) / rolled_days
    print(f"store size, {args.meters} meters read every minute for {args.days} days")
    print(f"  raw readings:        {raw_per / 1024:8.1f} KiB per meter-day (1,440 readings)")
    print(f"  rolled-up quarters:  {quarter_per / 1024:8.1f} KiB per meter-day (96 quarters)")
    print(f"  ratio: {raw_per / quarter_per:.1f}x smaller once rolled up")


if __name__ == "__main__":
    main()
