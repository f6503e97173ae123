"""The meter sources against real inputs: CSV files being appended to, a local HTTP endpoint (a
Starlette app served by hypercorn in the test's own trio run), and the seeded synthetic load.

Nothing sleeps a fixed time to synchronise: the tests wait, under a deadline, for what the source
under test makes true (readings collected, warnings logged).
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, cast

import attrs
import orjson
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import Framework
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as WebRoute
from structlog.testing import capture_logs

from flexbot.backoff import Backoff, Retrying
from flexbot.clock import ManualWall, MarketClock
from flexbot.meters.csv_files import CsvMeter
from flexbot.meters.http_poll import HttpMeter
from flexbot.meters.hub import MeterHub
from flexbot.meters.source import (
    CsvSettings,
    HttpSettings,
    MeterSettings,
    Reading,
    Route,
    SyntheticSettings,
    store_time,
)
from flexbot.meters.synthetic import SyntheticMeter, synthetic_power
from flexbot.store import AsyncStore, Store
from tests import strategies_model as sm

pytestmark = pytest.mark.anyio

BOUND = 5.0  # seconds any wait may take before the test fails
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
HEADER = "timestamp,value\n"


async def until(condition: Callable[[], bool], bound: float = BOUND) -> None:
    """Wait (bounded) for a condition a running source makes true; it offers no event."""
    with trio.fail_after(bound):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.005)


class Collector:
    """An `emit` that keeps every batch."""

    def __init__(self) -> None:
        self.batches: list[list[Reading]] = []

    async def __call__(self, readings: Sequence[Reading]) -> None:
        self.batches.append(list(readings))

    @property
    def readings(self) -> list[Reading]:
        return [r for batch in self.batches for r in batch]


def reading(minute: int, value: str, meter: str = "m1") -> Reading:
    return Reading(meter, T0 + timedelta(minutes=minute), Decimal(value))


def row(minute: int, value: str, *extra: str) -> str:
    at = (T0 + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ",".join([at, value, *extra]) + "\n"


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8", newline="") as handle:
        handle.write(text)


def events(logs: Sequence[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# --- CSV ----------------------------------------------------------------------------------------


def test_csv_reads_the_rows_then_only_the_appended_ones(tmp_path: Path) -> None:
    path = tmp_path / "site.csv"
    path.write_text(HEADER + row(0, "1000") + row(1, "1000.5"), encoding="utf-8")
    meter = CsvMeter(Route.own("m1"), CsvSettings(path=str(path)), base=tmp_path)
    assert meter.poll() == [reading(0, "1000"), reading(1, "1000.5")]
    assert meter.poll() == []
    append(path, row(2, "990") + row(3, "980").rstrip("\n"))  # the last line is half-written
    assert meter.poll() == [reading(2, "990")]
    assert meter.poll() == []
    append(path, "1\n")  # the writer finishes the line: 9801
    assert meter.poll() == [reading(3, "9801")]
    append(path, row(4, "7")[:10])  # a line cut mid-timestamp is not read as a bad row
    with capture_logs() as logs:
        assert meter.poll() == []
        append(path, (row(4, "7")[10:] + row(5, "-3.25")).replace("\n", "\r\n"))  # CRLF
        assert meter.poll() == [reading(4, "7"), reading(5, "-3.25")]
    assert logs == []


def test_csv_skips_and_logs_bad_rows_and_reads_on(tmp_path: Path) -> None:
    path = tmp_path / "site.csv"
    lines = [
        HEADER,  # line 1
        row(0, "1"),  # 2
        "yesterday,5\n",  # 3: not a timestamp
        "2026-11-23T10:01:00,5\n",  # 4: no zone
        row(2, "abc"),  # 5: not a number
        row(3, "nan"),  # 6: not finite
        (T0 + timedelta(minutes=4)).isoformat() + "\n",  # 7: no value at all
        "\n",  # 8: blank, skipped silently
        row(5, "2.5"),  # 9
    ]
    path.write_text("".join(lines), encoding="utf-8")
    meter = CsvMeter(Route.own("m1"), CsvSettings(path=str(path)), base=tmp_path)
    with capture_logs() as logs:
        assert meter.poll() == [reading(0, "1"), reading(5, "2.5")]
        append(path, "2026-13-01T00:00:00Z,1\n" + row(6, "3"))  # 10: no 13th month; 11
        assert meter.poll() == [reading(6, "3")]
    bad = events(logs, "meter.bad_row")
    assert [entry["line"] for entry in bad] == [3, 4, 5, 6, 7, 10]
    assert all(entry["path"] == str(path) and entry["meter"] == "m1" for entry in bad)
    assert all(entry["log_level"] == "warning" and entry["reason"] for entry in bad)


def test_csv_skips_the_rows_of_other_meters(tmp_path: Path) -> None:
    path = tmp_path / "shared.csv"
    path.write_text(
        "meter_id,timestamp,value\n"
        + "m1," + row(0, "10")
        + "m2," + row(0, "20")
        + " m1 ," + row(1, "11")
        + "m2," + row(1, "not even a number"),
        encoding="utf-8",
    )  # fmt: skip
    with capture_logs() as logs:
        meter = CsvMeter(Route.own("m1"), CsvSettings(path=str(path)), base=tmp_path)
        assert meter.poll() == [reading(0, "10"), reading(1, "11")]
        other = CsvMeter(Route.own("m2"), CsvSettings(path=str(path)), base=tmp_path)
        assert other.poll() == [reading(0, "20", "m2")]
    assert [entry["meter"] for entry in events(logs, "meter.bad_row")] == ["m2"]


def test_csv_reads_a_replaced_shorter_file_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "site.csv"
    path.write_text(HEADER + "".join(row(m, "100") for m in range(5)), encoding="utf-8")
    meter = CsvMeter(Route.own("m1"), CsvSettings(path=str(path)), base=tmp_path)
    assert len(meter.poll()) == 5
    replacement = tmp_path / "site.csv.new"
    replacement.write_text("value,timestamp\n" + "42," + row(9, "")[:-2] + "\n", encoding="utf-8")
    os.replace(replacement, path)  # the other system rotates the file: new header order too
    assert meter.poll() == [reading(9, "42")]
    append(path, "43," + row(10, "")[:-2] + "\n")
    assert meter.poll() == [reading(10, "43")]


def test_csv_reads_every_csv_file_of_a_directory(tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "a.csv").write_text(HEADER + row(0, "1"), encoding="utf-8")
    (folder / "b.csv").write_text(HEADER + row(1, "2") + row(2, "3"), encoding="utf-8")
    (folder / "notes.txt").write_text(HEADER + row(3, "999"), encoding="utf-8")
    meter = CsvMeter(
        Route.own("m1"), CsvSettings(path="exports"), base=tmp_path
    )  # relative to base
    assert meter.path == folder
    assert sorted(meter.poll()) == [reading(0, "1"), reading(1, "2"), reading(2, "3")]
    append(folder / "a.csv", row(4, "4"))
    (folder / "c.csv").write_text(HEADER + row(5, "5"), encoding="utf-8")  # a new file
    assert sorted(meter.poll()) == [reading(4, "4"), reading(5, "5")]
    assert meter.poll() == []


def test_csv_waits_for_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "later.csv"
    meter = CsvMeter(Route.own("m1"), CsvSettings(path=str(path)), base=tmp_path)
    assert meter.poll() == []
    path.write_text(HEADER + row(0, "1"), encoding="utf-8")
    assert meter.poll() == [reading(0, "1")]


async def test_csv_run_emits_rows_as_they_are_appended(tmp_path: Path) -> None:
    path = tmp_path / "live.csv"
    path.write_text(HEADER + row(0, "1"), encoding="utf-8")
    meter = CsvMeter(Route.own("m1"), CsvSettings(path=str(path), poll_s=0.01), base=tmp_path)
    collect = Collector()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(meter.run, collect)
        await until(lambda: collect.readings == [reading(0, "1")])
        append(path, row(1, "2") + row(2, "3")[:12])
        await until(lambda: len(collect.readings) == 2)
        append(path, row(2, "3")[12:] + "bad,row\n" + row(3, "4"))
        await until(lambda: len(collect.readings) == 4)
        nursery.cancel_scope.cancel()
    assert collect.readings == [reading(m, str(m + 1)) for m in range(4)]
    assert all(batch for batch in collect.batches)  # an empty poll emits nothing


# --- HTTP ---------------------------------------------------------------------------------------


class Endpoint:
    """What the meter's HTTP endpoint answers; the test changes it as it goes."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"[]"
        self.requests = 0
        self.release = trio.Event()  # while `hang`, requests wait for this
        self.hang = False

    def answer(self, body: Any, status: int = 200) -> None:
        self.body = body if isinstance(body, bytes) else orjson.dumps(body)
        self.status = status

    async def handle(self, request: Request) -> Response:
        self.requests += 1
        if self.hang:
            await self.release.wait()
        return Response(self.body, status_code=self.status, media_type="application/json")


@asynccontextmanager
async def serving(endpoint: Endpoint) -> AsyncIterator[str]:
    """The endpoint on a free loopback port, in this trio run; yields its URL."""
    app = Starlette(routes=[WebRoute("/readings", endpoint.handle)])
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.2
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        serve = partial(
            hypercorn_serve, cast(Framework, app), config, shutdown_trigger=shutdown.wait
        )
        binds: list[str] = await nursery.start(serve)
        yield f"{binds[0]}/readings"
        endpoint.release.set()
        shutdown.set()


def quick_meter(url: str, **settings: Any) -> HttpMeter:
    meter = HttpMeter(
        Route.own("m1"), HttpSettings(url=url, interval_s=0.01, **settings), rng=random.Random(1)
    )
    meter._retry = Retrying(Backoff(base_s=0.005, cap_s=0.02), random.Random(1))
    return meter


def entry(minute: int, value: float | str, meter: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"timestamp": store_time(T0 + timedelta(minutes=minute)), "value": value}
    if meter is not None:
        out["meter_id"] = meter
    return out


async def test_http_polls_through_errors_and_bad_json_and_recovers() -> None:
    endpoint = Endpoint()
    endpoint.answer(
        [entry(0, 1500.5), entry(1, 1400, "m1"), entry(1, 9999, "m2"), "not an entry", 7]
    )
    collect = Collector()
    async with serving(endpoint) as url:
        meter = quick_meter(url)
        with capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(meter.run, collect)
                await until(lambda: len(collect.batches) >= 2)  # it polls again and again
                assert collect.batches[0] == [reading(0, "1500.5"), reading(1, "1400")]
                endpoint.answer([entry(2, 1300)])  # the list changes over time
                await until(lambda: reading(2, "1300") in collect.readings)

                endpoint.answer({"error": "down"}, status=500)
                await until(lambda: len(events(logs, "meter.poll_failed")) >= 3)
                endpoint.answer(b"[{not json")
                seen = len(events(logs, "meter.poll_failed"))
                await until(lambda: len(events(logs, "meter.poll_failed")) >= seen + 3)
                during_failures = len(collect.batches)

                endpoint.answer({"readings": [entry(3, 1200), entry(3, 5, "m2"), entry(4, "x")]})
                await until(lambda: reading(3, "1200") in collect.readings)
                nursery.cancel_scope.cancel()
    failed = events(logs, "meter.poll_failed")
    assert any("500" in entry["reason"] for entry in failed)
    assert any("500" not in entry["reason"] for entry in failed)  # the bad JSON
    assert all(entry["meter"] == "m1" and entry["log_level"] == "warning" for entry in failed)
    assert all(0 <= entry["retry_in_s"] <= 0.02 for entry in failed)
    assert meter._retry.attempt == 0  # a good poll starts the backoff over
    assert collect.batches[during_failures - 1] == [reading(2, "1300")]
    assert all(batch == [reading(3, "1200")] for batch in collect.batches[during_failures:])
    assert {r.meter_id for r in collect.readings} == {"m1"}
    assert Decimal(9999) not in {r.value for r in collect.readings}
    assert events(logs, "meter.bad_entry")  # the value "x"
    assert all(e["meter"] == "m1" for e in events(logs, "meter.bad_entry"))


async def test_http_retries_a_refused_connection_and_a_timeout() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = Endpoint()
    endpoint.answer([entry(0, 1)])
    collect = Collector()
    with capture_logs() as logs:
        refused = quick_meter(f"http://127.0.0.1:{port}/readings")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refused.run, collect)
            await until(lambda: len(events(logs, "meter.poll_failed")) >= 3)
            nursery.cancel_scope.cancel()
        assert collect.batches == []
        async with serving(endpoint) as url:
            endpoint.hang = True
            slow = quick_meter(url, timeout_s=0.05)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow.run, collect)
                await until(lambda: endpoint.requests >= 2)  # timed out, and tried again
                endpoint.hang = False
                endpoint.release.set()
                await until(lambda: collect.readings[-1:] == [reading(0, "1")])
                nursery.cancel_scope.cancel()
    assert len(events(logs, "meter.poll_failed")) >= 4


def test_http_parse_both_forms() -> None:
    meter = HttpMeter(Route.own("m1"), HttpSettings(url="http://unused"), rng=random.Random(1))
    entries = [entry(0, 1), entry(1, 2.5, "m1"), entry(2, 3, "other")]
    expected = [reading(0, "1"), reading(1, "2.5")]
    assert meter.parse(entries) == expected
    assert meter.parse({"readings": entries}) == expected
    for body in ({"data": entries}, {"readings": {"a": 1}}, "text", 3):
        with pytest.raises(ValueError, match="expected a list of readings"):
            meter.parse(body)


async def test_one_http_endpoint_answers_for_many_meters(tmp_path: Path) -> None:
    """A shared endpoint: each entry to the meter it names (through the hub, into the store);
    an unknown meter's entries dropped and logged once; an entry naming none is a bad entry."""
    store = AsyncStore(Store.open(tmp_path / "f.db"))
    meters = [MeterSettings(f"m{i}", "site-a") for i in range(1, 4)]
    endpoint = Endpoint()
    endpoint.answer(
        {
            "readings": [
                entry(0, 1, "m1"),
                entry(0, 2, "m2"),
                entry(0, 3, "m3"),
                entry(1, 1.5, "m1"),
                entry(0, 9, "ghost"),
                entry(0, 7),  # names no meter
            ]
        }
    )
    clock, _ = market_clock(T0)
    with capture_logs() as logs:
        async with serving(endpoint) as url:
            sources = [HttpSettings(url=url, interval_s=0.01)]
            hub = MeterHub(meters, store, clock=clock, base=tmp_path, sources=sources)
            async with trio.open_nursery() as nursery:
                await nursery.start(hub.run)
                await until(lambda: hub.readings == 4 and endpoint.requests >= 3)
                nursery.cancel_scope.cancel()
    window = (store_time(T0), store_time(T0 + timedelta(minutes=5)))
    assert [store.sync.readings(f"m{i}", *window) for i in range(1, 4)] == [
        [(store_time(T0), "1"), (store_time(T0 + timedelta(minutes=1)), "1.5")],
        [(store_time(T0), "2")],
        [(store_time(T0), "3")],
    ]
    assert store.sync.last_reading_at("ghost") is None
    assert hub.unknown_readings >= 2  # one a poll: each counted, the id logged once
    assert [e["meter"] for e in events(logs, "meter.unknown")] == ["ghost"]  # once, not a poll
    bad = events(logs, "meter.bad_entry")
    assert bad
    assert all(e["source"] == "meter_sources[0]" and e["index"] == 5 for e in bad)


# --- synthetic ----------------------------------------------------------------------------------

intervals = st.one_of(st.sampled_from([1.0, 15.0, 60.0, 300.0]), st.floats(0.001, 900.0))
STEPS = 200  # samples per example, about
synthetic_settings = st.builds(
    SyntheticSettings,
    seed=st.integers(0, 2**32),
    base_w=st.integers(0, 20_000).map(Decimal),
    amplitude_w=st.integers(0, 5_000).map(Decimal),
    noise_w=st.integers(0, 1_000).map(Decimal),
    interval_s=intervals,
    respond=st.booleans(),
)


def market_clock(start: datetime) -> tuple[MarketClock, ManualWall]:
    wall = ManualWall()
    return MarketClock(wall=wall, start=start), wall


@settings(max_examples=50, deadline=None)
@given(synthetic_settings, sm.utc_datetimes(min_value=datetime(2001, 1, 1, tzinfo=UTC)), st.data())
def test_synthetic_samples_are_deterministic_and_on_the_interval_grid(
    config: SyntheticSettings, start: datetime, data: st.DataObject
) -> None:
    """The same seed and times give the same readings, however the calls are cut."""
    clock, _ = market_clock(start)
    horizon_us = int(config.interval_s * STEPS * 10**6)
    checkpoints_us = data.draw(st.lists(st.integers(0, horizon_us), min_size=1, max_size=6))
    checkpoints = [start + timedelta(microseconds=us) for us in sorted(checkpoints_us)]
    step = timedelta(seconds=config.interval_s)

    def delivering(at: datetime) -> Decimal:
        return Decimal(at.minute * 37)

    piecewise = SyntheticMeter("m1", config, clock, delivering_w=delivering, start=start)
    pieces = [r for now in checkpoints for r in piecewise.samples_until(now)]
    at_once = SyntheticMeter("m1", config, clock, delivering_w=delivering, start=start)
    assert at_once.samples_until(checkpoints[-1]) == pieces
    expected_times = []
    at = start
    while at <= checkpoints[-1]:
        expected_times.append(at)
        at += step
    assert [r.at for r in pieces] == expected_times
    assert all(r.meter_id == "m1" and r.value >= 0 for r in pieces)
    assert [r.value for r in pieces] == [
        synthetic_power(config, r.at, delivering(r.at)) for r in pieces
    ]


@settings(max_examples=50, deadline=None)
@given(
    synthetic_settings,
    sm.utc_datetimes(min_value=datetime(2001, 1, 1, tzinfo=UTC)),
    st.integers(0, 40_000),
)
def test_synthetic_respond_lowers_the_load_by_what_is_delivered_never_below_zero(
    config: SyntheticSettings, start: datetime, sold_w: int
) -> None:
    clock, _ = market_clock(start)
    plain = SyntheticSettings(
        seed=config.seed,
        base_w=config.base_w,
        amplitude_w=config.amplitude_w,
        noise_w=config.noise_w,
        interval_s=config.interval_s,
        respond=False,
    )
    responding = attrs.evolve(plain, respond=True)

    def delivering(at: datetime) -> Decimal:
        return Decimal(sold_w) if at.minute % 30 < 15 else Decimal(0)  # every other quarter

    end = start + STEPS * timedelta(seconds=config.interval_s)
    before = SyntheticMeter("m1", plain, clock, delivering_w=delivering, start=start)
    after = SyntheticMeter("m1", responding, clock, delivering_w=delivering, start=start)
    load = before.samples_until(end)
    lowered = after.samples_until(end)
    assert [r.at for r in load] == [r.at for r in lowered]
    for was, now in zip(load, lowered, strict=True):
        assert now.value == max(was.value - delivering(was.at), Decimal(0))
        assert now.value >= 0
    clock_now = SyntheticMeter("m1", plain, clock)  # no start: the first sample is now
    assert [r.at for r in clock_now.samples_until(start)] == [start]


def test_synthetic_history_days_start_that_many_days_back() -> None:
    clock, _ = market_clock(T0)
    meter = SyntheticMeter("m1", SyntheticSettings(interval_s=3600.0, history_days=2), clock)
    got = meter.samples_until(T0)
    assert [r.at for r in got] == [T0 - timedelta(hours=h) for h in range(48, -1, -1)]


async def test_synthetic_run_follows_the_market_clock() -> None:
    clock, wall = market_clock(T0)
    meter = SyntheticMeter("m1", SyntheticSettings(interval_s=60.0), clock, start=T0)
    collect = Collector()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(meter.run, collect)
        await until(lambda: len(collect.readings) == 1)
        wall.advance(120)  # two more minutes of market time
        await until(lambda: len(collect.readings) == 3)
        nursery.cancel_scope.cancel()
    assert [r.at for r in collect.readings] == [T0 + timedelta(minutes=m) for m in range(3)]
