"""File I/O never runs on the event loop: a file that stalls its reader (a named pipe nobody
writes yet, as a stalled network share would) holds only the task that reads it, never the other
tasks, and a cancel still ends that task at once.

- the CSV meter source's poll;
- the SIGHUP reload's reading of the config (which still applies, in the order of the signals);
- the kill switch's file check (abandoned by a cancel).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from structlog.testing import capture_logs

from flexbot import config, daemon
from flexbot.clock import MarketClock
from flexbot.engine.engine import Engine
from flexbot.engine.killswitch import KillSwitch
from flexbot.engine.orders import OrderTracker
from flexbot.engine.settings import EngineSettings
from flexbot.meters.csv_files import CsvMeter
from flexbot.meters.source import CsvSettings, Route

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parents[1]
BOUND_S = 10.0
WATCHDOG_S = 3.0


async def until(condition: Callable[[], bool], bound: float = BOUND_S) -> None:
    """Wait (polling: a worker thread has no event) until `condition()`; fail after `bound`."""
    with trio.fail_after(bound):
        while not condition():  # noqa: ASYNC110 - polls state that has no event
            await trio.sleep(0.01)


async def loop_keeps_running(for_s: float = 0.2) -> int:
    """How many short sleeps the event loop completed in `for_s`: many, unless it is held."""
    ticks = 0
    with trio.move_on_after(for_s):
        while True:
            await trio.sleep(0.01)
            ticks += 1
    return ticks


@pytest.fixture
def stalled() -> Iterator[Callable[[Path], Path]]:
    """Makes `path` a named pipe: opening it to read waits until someone writes. A watchdog
    thread ends any read still waiting after a while, so that code which (wrongly) waits on the
    loop's own thread fails the test rather than hanging it."""
    pipes: list[Path] = []

    def stall(path: Path) -> Path:
        path.unlink(missing_ok=True)
        os.mkfifo(path)
        pipes.append(path)
        return path

    def unstall() -> None:
        for path in pipes:
            with contextlib.suppress(OSError):  # ENXIO: no reader waits (any more)
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    watchdog = threading.Timer(WATCHDOG_S, unstall)
    watchdog.start()
    yield stall
    watchdog.cancel()


def release(path: Path, text: str = "") -> None:
    """Write `text` into the stalled pipe (blocking: for a worker thread)."""
    with path.open("w", encoding="utf-8") as pipe:
        pipe.write(text)


# --- the CSV meter source -------------------------------------------------------------------------


async def test_a_stalled_csv_file_holds_neither_the_loop_nor_a_cancel(
    tmp_path: Path, stalled: Callable[[Path], Path]
) -> None:
    path = stalled(tmp_path / "site.csv")
    meter = CsvMeter(Route.own("m1"), CsvSettings(path=str(path), poll_s=0.01), base=tmp_path)
    emitted: list[Any] = []

    async def emit(batch: Any) -> None:
        emitted.extend(batch)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(meter.run, emit)
        assert await loop_keeps_running() >= 5
        started = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - started < 1.0
    await trio.to_thread.run_sync(release, path)  # the abandoned poll reads nothing and ends
    assert emitted == []


# --- the SIGHUP reload ----------------------------------------------------------------------------


def write_config(root: Path, limit_price: float) -> Path:
    """The config, its strategies in `strategies-<limit_price>` (the buyer, at that limit)."""
    (root / "password").write_text("market-password\n", encoding="utf-8")
    path = root / "flexbot.yaml"
    path.write_text(config_text(root, limit_price), encoding="utf-8")
    return path


def config_text(root: Path, limit_price: float) -> str:
    strategies = root / f"strategies-{limit_price}"
    strategies.mkdir()
    buyer = yaml.safe_load((ROOT / "config" / "strategies" / "buyer.yaml").read_text())
    buyer["params"]["limit_price"] = limit_price
    (strategies / "buyer.yaml").write_text(yaml.safe_dump(buyer), encoding="utf-8")
    document = {
        "market": {"url": "https://market.test", "username": "alice", "password": "file:password"},
        "store": {"path": "flexbot.db"},
        "strategies": {"config_dir": strategies.name, "code_dir": str(ROOT / "strategies")},
    }
    return yaml.safe_dump(document)


def engine_of(loaded: config.LoadedConfig) -> Engine:
    return Engine(
        EngineSettings(dry_run=True),
        loaded.strategies,
        clock=MarketClock(),
        tracker=OrderTracker(None),
        broker=None,
    )


def limit_price(engine: Engine) -> Decimal:
    price: Decimal = engine.runners["buyer"].strategy.params.limit_price
    return price


def count(logs: list[dict[str, Any]], event: str) -> int:
    return [e["event"] for e in logs].count(event)


async def test_sighup_reads_the_config_off_the_loop_and_applies_it_in_signal_order(
    tmp_path: Path, stalled: Callable[[Path], Path]
) -> None:
    path = write_config(tmp_path, limit_price=0.25)
    loaded = config.load(path, {})
    engine = engine_of(loaded)
    newer = {price: config_text(tmp_path, price) for price in (0.2, 0.3)}
    stalled(path)
    control = daemon.Control(trio.Event(), engine=engine)
    send, receive = trio.open_memory_channel[int](4)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon._handle_signals, receive, loaded, control)
            await send.send(signal.SIGHUP)  # reads the pipe: waits for a writer
            await send.send(signal.SIGHUP)  # waits its turn
            assert await loop_keeps_running() >= 5
            assert logs == []
            await trio.to_thread.run_sync(release, path, newer[0.2])
            await until(lambda: count(logs, "config.reload_done") == 1)
            assert limit_price(engine) == Decimal("0.2")
            await trio.to_thread.run_sync(release, path, newer[0.3])
            await until(lambda: count(logs, "config.reload_done") == 2)
            nursery.cancel_scope.cancel()
    assert limit_price(engine) == Decimal("0.3")
    assert [e["event"] for e in logs if e["event"].startswith("config.")] == [
        "config.reloaded",
        "config.reload_done",
        "config.reloaded",
        "config.reload_done",
    ]


async def test_a_sighup_stalled_on_its_read_never_holds_the_stop(
    tmp_path: Path, stalled: Callable[[Path], Path]
) -> None:
    path = write_config(tmp_path, limit_price=0.25)
    loaded = config.load(path, {})
    engine = engine_of(loaded)
    stalled(path)
    control = daemon.Control(trio.Event(), engine=engine)
    send, receive = trio.open_memory_channel[int](4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon._handle_signals, receive, loaded, control)
        await send.send(signal.SIGHUP)
        await send.send(signal.SIGTERM)
        await until(control.stop.is_set)  # handled while the reload still waits
        started = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - started < 1.0
    await trio.to_thread.run_sync(release, path)  # the abandoned read ends
    assert limit_price(engine) == Decimal("0.25")  # the running config, untouched


# --- the kill switch file -------------------------------------------------------------------------


async def test_the_kill_switch_file_is_checked_in_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`refresh` is where the disk is touched, off the loop; `reasons` answers from what it saw."""
    kill = tmp_path / "KILL"
    switch = KillSwitch(file=kill)
    checked_on: list[str] = []
    exists = Path.exists

    def watched(path: Path) -> bool:
        checked_on.append(threading.current_thread().name)
        return exists(path)

    monkeypatch.setattr(Path, "exists", watched)
    kill.touch()
    assert switch.reasons() == []  # not seen yet
    assert await switch.refresh() == [f"file {kill}"]
    assert switch.reasons() == [f"file {kill}"]
    assert checked_on
    assert threading.main_thread().name not in checked_on
