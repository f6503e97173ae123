"""One source, many meters: `Route` (which meter a reading belongs to), and `MeterHub` running
shared sources against a real store, with meters from a real catalogue file.

A shared CSV directory feeds the meters its rows name; rows of an unknown meter are dropped, never
stored, logged once and counted; a row naming no meter is a bad row. The hub commits readings in
batches from one writer task, and writes what is still waiting when it is cancelled.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from flexbot import config
from flexbot.clock import ManualWall, MarketClock
from flexbot.meters import hub as hub_module
from flexbot.meters.csv_files import CsvMeter
from flexbot.meters.hub import MeterHub
from flexbot.meters.source import (
    CsvSettings,
    MeterSettings,
    Reading,
    Route,
    SyntheticSettings,
    store_time,
)
from flexbot.store import AsyncStore, Store

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
BOUND = 5.0


async def until(condition: Callable[[], bool], bound: float = BOUND) -> None:
    """Wait (bounded) for a condition the running hub makes true; it offers no event."""
    with trio.fail_after(bound):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.005)


def at(minute: int) -> str:
    return (T0 + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ")


def stored(store: AsyncStore, meter: str) -> list[tuple[str, str]]:
    return store.sync.readings(meter, store_time(T0), store_time(T0 + timedelta(hours=1)))


def new_hub(meters: list[MeterSettings], store: AsyncStore, base: Path, **kwargs: Any) -> MeterHub:
    clock = MarketClock(1.0, wall=ManualWall(), start=T0)
    return MeterHub(meters, store, clock=clock, base=base, **kwargs)


# --- Route --------------------------------------------------------------------------------------

ids = st.text(min_size=1, max_size=8)
named = st.one_of(st.none(), st.just(""), ids)


@given(ids, named)
def test_an_own_route_gives_its_meter_only_what_names_no_other(meter: str, name: Any) -> None:
    route = Route.own(meter)
    got = route.meter_for(name)
    assert got == (meter if name is None or name == meter else None)
    assert route.fields == {"meter": meter}


@given(ids, named)
def test_a_shared_route_gives_the_named_meter_and_refuses_none(source: str, name: Any) -> None:
    route = Route.of_source(source)
    assert route.fields == {"source": source}
    if name:
        assert route.meter_for(name) == name
    else:
        with pytest.raises(ValueError, match="no meter_id"):
            route.meter_for(name)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["m1", "m2", "m3", "ghost", ""]), st.integers(0, 59))),
    st.booleans(),
)
def test_a_file_read_by_one_shared_source_or_by_each_meters_own_gives_the_same_readings(
    rows: list[tuple[str, int]], with_column: bool
) -> None:
    """Every row naming a meter goes to that meter, whether one shared source reads the file or
    each meter's own source does; a row naming none is each own source's, and no shared one's."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "shared.csv"
        header = "meter_id,timestamp,value\n" if with_column else "timestamp,value\n"
        lines = [
            (f"{meter}," if with_column else "") + f"{at(minute)},{minute}\n"
            for meter, minute in rows
        ]
        path.write_text(header + "".join(lines), encoding="utf-8")
        settings_ = CsvSettings(path=str(path))
        with capture_logs() as logs:
            shared = CsvMeter(Route.of_source("meter_sources[0]"), settings_, Path(directory))
            by_shared = shared.poll()
            own = {
                m: CsvMeter(Route.own(m), settings_, Path(directory)).poll() for m in ("m1", "m2")
            }
    if with_column:
        assert [(r.meter_id, int(r.value)) for r in by_shared] == [(m, n) for m, n in rows if m]
        for meter, readings in own.items():  # an empty id cell names no meter: not its either
            assert [(r.meter_id, int(r.value)) for r in readings] == [
                (m, n) for m, n in rows if m == meter
            ]
    else:
        assert by_shared == []
        for meter, readings in own.items():
            assert [(r.meter_id, int(r.value)) for r in readings] == [(meter, n) for _, n in rows]
    bad = [e for e in logs if e["event"] == "meter.bad_row"]
    if with_column:  # the shared source's rows without an id, each logged
        assert len(bad) == sum(1 for m, _ in rows if not m)
    else:  # the shared source could read no row: said once, at the header
        assert [e["line"] for e in bad] == [1]
    assert all(e["source"] == "meter_sources[0]" for e in bad)


# --- the hub ------------------------------------------------------------------------------------


def write_config(tmp_path: Path) -> Path:
    (tmp_path / "exports").mkdir()
    (tmp_path / "meters.csv").write_text(
        "meter_id,site,kind\nm1,site-a,power_w\nm2,site-a,\nm3,site-b,energy_kwh\n",
        encoding="utf-8",
    )
    document = {
        "market": {"url": "https://market.example", "username": "u", "password": "${PW}"},
        "meter_sources": [{"type": "csv", "path": "exports", "poll_s": 0.01}],
        "meter_catalogue": "meters.csv",
    }
    path = tmp_path / "flexbot.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@pytest.mark.anyio
async def test_a_shared_csv_directory_feeds_the_catalogues_meters(tmp_path: Path) -> None:
    loaded = config.load(write_config(tmp_path), {"PW": "x"})
    store = AsyncStore(Store.open(tmp_path / "f.db"))
    hub = new_hub(list(loaded.meters), store, loaded.path.parent, sources=loaded.meter_sources)
    exports = tmp_path / "exports"
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            (exports / "a.csv").write_text(
                "meter_id,timestamp,value\n"
                f"m1,{at(0)},100\nm2,{at(0)},200\nghost,{at(0)},1\n,{at(0)},5\n",  # line 5: no id
                encoding="utf-8",
            )
            (exports / "b.csv").write_text(
                f"timestamp,value,meter_id\n{at(1)},12.5,m3\n{at(1)},2,ghost\n", encoding="utf-8"
            )
            (exports / "c.csv").write_text(f"timestamp,value\n{at(0)},7\n", encoding="utf-8")
            await until(lambda: hub.readings == 3)
            with (exports / "a.csv").open("a", encoding="utf-8") as more:
                more.write(f"m1,{at(1)},110\nghost,{at(1)},3\n")
            await until(lambda: hub.readings == 4)
            nursery.cancel_scope.cancel()
    assert stored(store, "m1") == [
        (store_time(T0), "100.0"),
        (store_time(T0 + timedelta(minutes=1)), "110.0"),
    ]
    assert stored(store, "m2") == [(store_time(T0), "200.0")]
    assert stored(store, "m3") == [(store_time(T0 + timedelta(minutes=1)), "12.5")]
    assert stored(store, "ghost") == []  # never stored
    assert hub.unknown_readings == 3
    assert hub.unknown_meters == {"ghost"}
    unknown = [e for e in logs if e["event"] == "meter.unknown"]
    assert [(e["meter"], e["source"]) for e in unknown] == [("ghost", "meter_sources[0]")]
    bad = sorted((Path(e["path"]).name, e["line"]) for e in logs if e["event"] == "meter.bad_row")
    assert bad == [("a.csv", 5), ("c.csv", 1)]  # c.csv: no meter_id column, said once
    started = [e for e in logs if e["event"] == "meter.source_started"]
    assert [(e["source"], e["type"]) for e in started] == [("meter_sources[0]", "csv")]
    assert not [e for e in logs if e["event"] == "meter.started"]  # no meter has its own
    assert set(hub.last_reading) == {"m1", "m2", "m3"}


def synthetic(meter_id: str) -> MeterSettings:
    return MeterSettings(meter_id, "site-a", SyntheticSettings(respond=False))


@pytest.mark.anyio
async def test_the_hub_writes_what_waits_when_it_is_cancelled_and_holds_sources_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "MAX_PENDING", 10)
    store = AsyncStore(Store.open(tmp_path / "f.db"))
    hub = new_hub([synthetic("m")], store, tmp_path)
    hub.source_for = lambda meter: _Idle()  # type: ignore[method-assign]  # the test emits
    batch = [Reading("m", T0 + timedelta(seconds=s), Decimal(s)) for s in range(25)]
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        await hub.emit(batch[:5])  # waits for nothing: the writer has them
        assert hub.readings == 0
        await hub.emit(batch[5:])  # 25 > MAX_PENDING: back only once the writer took them
        assert len(hub._rows) <= 10
        await hub.emit([Reading("m", T0 + timedelta(minutes=1), Decimal(1))])
        nursery.cancel_scope.cancel()  # before the writer ran again: written on the way out
    assert len(stored(store, "m")) == 26
    assert hub.readings == 26


class _Idle:
    async def run(self, emit: Any) -> None:
        await trio.sleep_forever()
