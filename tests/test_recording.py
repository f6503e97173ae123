"""The recorder (`flexbot.engine.recording`) and its files (`flexbot.engine.rotation`), on real
files in `tmp_path`: the frame path never waits (a full queue drops and counts), the writer
rotates and compresses at the cap and keeps `keep` files, shutdown writes what is queued within its
bound (a write stuck on a pipe nobody reads included), a crash's leftovers are tidied, replay reads
a compressed recording, and the names of rotated files sort as their rotations happened whatever
the clock did (a property).

Time logic runs on trio's `MockClock`; waits on the writer's worker threads are polled under a
deadline, never a fixed sleep.
"""

from __future__ import annotations

import gzip
import os
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path

import orjson
import pytest
import trio
import trio.testing
import yaml
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from flexbot import config, daemon
from flexbot.engine import rotation
from flexbot.engine.recording import Recorded, Recorder, RecorderSettings, read
from flexbot.engine.replay import load_recording
from flexbot.market import Endpoint, FeedSettings, MarketFeed
from flexbot.parts import Parts
from flexbot.problems import Invalid
from tests.conftest import Sandbox
from tests.test_market_streams import request, running, stream_settings
from tests.test_replay import BUYER, CODE_DIR, buyer_recording, flexbot, run_replay, write

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
BOUND_S = 10.0


async def until(condition: Callable[[], bool], bound: float = BOUND_S) -> None:
    """Wait (polling: a worker thread has no event) until `condition()`; fail after `bound`."""
    with trio.fail_after(bound):
        while not condition():  # noqa: ASYNC110 - polls state that has no event
            await trio.sleep(0.01)


def ticking(step: timedelta = timedelta(seconds=1)) -> Callable[[], datetime]:
    """A market clock that moves `step` on every reading."""
    at = [T0]

    def now() -> datetime:
        at[0] += step
        return at[0]

    return now


def frame(n: int, pad: int = 0) -> bytes:
    return orjson.dumps({"type": "ticker", "n": n, "pad": "x" * pad})


def numbers(events: Iterator[object] | list[object]) -> list[int]:
    return [e.message["n"] for e in events]  # type: ignore[attr-defined]


def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


# --- the frame path -------------------------------------------------------------------------------


def test_a_full_queue_drops_and_counts_without_blocking_and_logs_once_per_interval(
    tmp_path: Path,
) -> None:
    settings = RecorderSettings(queue=3, drop_log_s=60.0)
    recorder = Recorder(tmp_path / "events.jsonl", ticking(), settings)

    async def main() -> None:
        clock = trio.lowlevel.current_clock()
        assert isinstance(clock, trio.testing.MockClock)
        # No writer runs: the queue fills. Calls are plain function calls: they cannot wait.
        for n in range(10):
            assert recorder(Endpoint.TICKER, frame(n)) is None
        assert (recorder.dropped, len(logs_of("record.dropped"))) == (7, 1)
        clock.jump(30)
        recorder(Endpoint.TICKER, frame(10))
        assert len(logs_of("record.dropped")) == 1  # within the interval: counted only
        clock.jump(31)
        recorder(Endpoint.TICKER, frame(11))
        assert len(logs_of("record.dropped")) == 2

    with capture_logs() as logs:

        def logs_of(event: str) -> list[dict[str, object]]:
            return [e for e in logs if e["event"] == event]

        trio.run(main, clock=mock_clock())
    dropped = [(e["dropped"], e["total"]) for e in logs_of("record.dropped")]
    assert dropped == [(1, 1), (8, 9)]
    assert recorder.dropped == 9


async def test_the_writer_reports_the_last_drops_when_their_interval_ends(tmp_path: Path) -> None:
    """No frame comes after the last drops: the writer reports them all the same, in time."""
    path = tmp_path / "events.jsonl"
    settings = RecorderSettings(queue=3, drop_log_s=0.3)
    recorder = Recorder(path, ticking(), settings)
    with capture_logs() as logs:
        for n in range(5):
            recorder(Endpoint.TICKER, frame(n))  # the first drop is logged at once
        first = trio.current_time()
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            await until(lambda: [e["event"] for e in logs].count("record.dropped") == 2)
            reported = trio.current_time()
            nursery.cancel_scope.cancel()
    dropped = [(e["dropped"], e["total"]) for e in logs if e["event"] == "record.dropped"]
    assert dropped == [(1, 1), (1, 2)]
    assert reported - first >= settings.drop_log_s
    assert recorder.frames == 3
    assert numbers(read_all(path)) == [0, 1, 2]  # the queued ones, written


def read_all(path: Path) -> list[Recorded]:
    return list(read(path))


# --- rotation -------------------------------------------------------------------------------------


async def test_the_recorder_rotates_and_compresses_at_the_cap_and_keeps_keep_files(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.jsonl"
    settings = RecorderSettings(max_bytes=2000, keep=2, batch=4)
    recorder = Recorder(path, ticking(), settings)
    sent = 120  # lines of about 100 bytes
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            for n in range(sent):
                recorder(Endpoint.TICKER, frame(n))
                if n % 10 == 9:
                    await trio.lowlevel.checkpoint()  # the writer takes its turns
            await until(lambda: recorder.frames == sent and settled(path, keep=2), BOUND_S)
            nursery.cancel_scope.cancel()
    assert recorder.dropped == 0
    events = [e["event"] for e in logs]
    assert events.count("record.rotated") >= 4  # 120 lines of ~100 bytes, 20 to 24 a file
    assert "record.deleted" in events
    check_kept(path, settings, sent)


async def test_a_rotation_that_fails_loses_no_frame_and_is_tried_again_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename that fails (a full or read-only directory; root cannot be refused one here, so
    the failure is made by hand): the frames stay in the live file, none dropped."""

    def refuse(path: Path, at: datetime) -> Path:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(rotation, "rotate", refuse)
    path = tmp_path / "events.jsonl"
    recorder = Recorder(path, ticking(), RecorderSettings(max_bytes=500, batch=4, retry_s=3600))
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            for n in range(40):
                recorder(Endpoint.TICKER, frame(n))
                await trio.lowlevel.checkpoint()
            await until(lambda: recorder.frames == 40)
            nursery.cancel_scope.cancel()
    assert recorder.dropped == 0
    assert numbers(list(read(path))) == list(range(40))
    failed = [e for e in logs if e["event"] == "record.failed"]
    assert [e["step"] for e in failed] == ["rotate"]  # once: the next try waits retry_s


def check_kept(path: Path, settings: RecorderSettings, sent: int) -> None:
    files = rotation.listing(path)
    assert [r.compressed for r in files] == [True, True]
    assert all(r.path.name.startswith("events.2026") for r in files)
    assert [f.name for f in sorted(path.parent.iterdir())] == sorted(
        [path.name, *(r.path.name for r in files)]
    )
    for rotated in files:
        with gzip.open(rotated.path, "rb") as whole:
            size = len(whole.read())
        assert settings.max_bytes <= size < settings.max_bytes + 4 * 110  # one batch beyond
    # Oldest first, the rotated files and then the live one hold the newest frames, in order.
    kept = [n for r in files for n in numbers(list(read(r.path)))] + numbers(list(read(path)))
    assert kept == list(range(sent - len(kept), sent))
    assert len(kept) < sent


def settled(path: Path, *, keep: int) -> bool:
    """Every rotated file compressed, and no more of them than `keep`."""
    files = rotation.listing(path)
    return len(files) == keep and all(r.compressed for r in files)


def test_a_crash_s_leftovers_are_tidied_and_nothing_is_kept_twice(tmp_path: Path) -> None:
    live = tmp_path / "events.jsonl"
    live.write_bytes(b"")
    stamps = [T0 + timedelta(hours=h) for h in range(4)]
    whole = rotation.rotated_path(live, stamps[0], compressed=True)  # compressed in full
    with gzip.open(whole, "wb") as out:
        out.write(b"0\n")
    twice = rotation.rotated_path(live, stamps[1], compressed=False)  # compressed, not deleted
    twice.write_bytes(b"1\n")
    with gzip.open(twice.with_name(twice.name + ".gz"), "wb") as out:
        out.write(b"1\n")
    plain = rotation.rotated_path(live, stamps[2], compressed=False)  # rotated, not compressed
    plain.write_bytes(b"2\n")
    cut_short = rotation.rotated_path(live, stamps[3], compressed=False)
    cut_short.write_bytes(b"3\n")
    cut_short.with_name(cut_short.name + ".gz.tmp").write_bytes(b"\x1f\x8b half")
    other = tmp_path / "other.20261123T100000.000000Z.jsonl"  # another recording's: untouched
    other.write_bytes(b"x\n")

    done = rotation.tidy(live, keep=3)

    assert done.failed == ()
    assert [p.name for p in done.deleted] == [whole.name]
    files = rotation.listing(live)
    assert [(r.at, r.compressed) for r in files] == [(at, True) for at in stamps[1:]]
    contents = [gzip.decompress(r.path.read_bytes()) for r in files]
    assert contents == [b"1\n", b"2\n", b"3\n"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, *(r.path.name for r in files)]
    )


# --- shutdown -------------------------------------------------------------------------------------


async def test_shutdown_writes_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    recorder = Recorder(path, ticking())
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        for n in range(500):
            recorder(Endpoint.TICKER, frame(n))
        nursery.cancel_scope.cancel()  # before the writer had a turn
    assert numbers(list(read(path))) == list(range(500))
    assert (recorder.frames, recorder.dropped) == (500, 0)


async def test_a_write_stuck_on_its_file_holds_the_shutdown_no_longer_than_the_bound(
    tmp_path: Path,
) -> None:
    """The recording is a pipe nobody reads: a write blocks for good once its buffer is full."""
    path = tmp_path / "events.pipe"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read
    try:
        settings = RecorderSettings(flush_timeout_s=0.5)
        recorder = Recorder(path, ticking(), settings)
        with capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                await nursery.start(recorder.run)
                for n in range(20):  # 200 KB: beyond any pipe's buffer
                    recorder(Endpoint.TICKER, frame(n, pad=10_000))
                await trio.sleep(0.2)  # the writer is inside its write by now (or soon)
                started = time.monotonic()
                nursery.cancel_scope.cancel()
        assert time.monotonic() - started < settings.flush_timeout_s + 1.0
        failed = [e for e in logs if e["event"] == "record.failed"]
        assert [e["step"] for e in failed] == ["close"]
    finally:
        os.close(reader)  # the stuck write ends (EPIPE) in its abandoned thread


# --- the recorder in the frame path of a real feed ------------------------------------------------


async def test_the_feed_hands_every_frame_to_the_recorder_and_replay_reads_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    recorder = Recorder(path, sandbox.market.clock.now)
    feed = MarketFeed(
        FeedSettings(stream_settings(sandbox)),
        None,
        None,
        endpoints=(Endpoint.ORDERBOOK,),
        recorder=recorder,
    )
    async with running(recorder.run, feed.run):
        await until(lambda: recorder.frames >= 1)  # the snapshot
        for i in range(3):
            sandbox.market.place("alice", request("buy", price=f"0.{10 + i}"))
        await until(lambda: recorder.frames == 4)
    events = load_recording(path)
    assert [e.endpoint for e in events] == [Endpoint.ORDERBOOK] * 4
    bids = events[-1].message["data"]["bids"]
    prices = sorted(Decimal(str(e["price"])) for entries in bids.values() for e in entries)
    assert prices == [Decimal("0.10"), Decimal("0.11"), Decimal("0.12")]


# --- replay of a compressed recording -------------------------------------------------------------


def test_replay_reads_a_compressed_recording_as_the_plain_one(tmp_path: Path) -> None:
    plain = write(tmp_path / "events.jsonl", buyer_recording())
    packed = tmp_path / "events.20261123T100500.000000Z.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert load_recording(packed) == load_recording(plain)
    spec = config.read_strategy(BUYER, CODE_DIR)
    report = run_replay(spec, load_recording(plain))
    assert run_replay(spec, load_recording(packed)) == report
    done = flexbot("replay", str(packed), "--strategy", str(BUYER), "--code-dir", "strategies")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == report.lines()


def test_a_cut_off_compressed_recording_is_refused_clearly(tmp_path: Path) -> None:
    packed = gzip.compress(b"".join(one + b"\n" for one in buyer_recording()))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(Invalid, match=r"cut\.jsonl\.gz: not a whole gzip file"):
        load_recording(cut)


# --- the names of rotated files (a property) ------------------------------------------------------

base_names = st.text(
    alphabet=st.sampled_from("abcXYZ09-_.+()[]* "), min_size=1, max_size=12
).filter(lambda name: name.strip(".") != "" and "/" not in name)
times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
)


@given(
    base=base_names,
    suffix=st.sampled_from([".jsonl", "", ".log"]),
    moments=st.lists(times, min_size=1, max_size=12),
    compressed=st.lists(st.booleans(), min_size=12, max_size=12),
    keep=st.integers(1, 12),
    order=st.randoms(use_true_random=False),
)
def test_rotated_names_sort_as_rotations_happened_whatever_the_clock_did(
    base: str,
    suffix: str,
    moments: list[datetime],
    compressed: list[bool],
    keep: int,
    order: random.Random,
) -> None:
    live = Path("/records") / f"{base}{suffix}"
    made: list[rotation.Rotated] = []
    for moment, packed in zip(moments, compressed, strict=False):
        at = rotation.next_stamp(moment, made)
        path = rotation.rotated_path(live, at, compressed=packed)
        parsed = rotation.parse(live, path.name)
        assert parsed == rotation.Rotated(at, packed, path)  # a name says its time back
        assert not made or at > made[-1].at  # later than every earlier one, even if the clock
        made.append(parsed)  # stood still or stepped back
    names = [r.path.name for r in made]
    shuffled = list(names)
    order.shuffle(shuffled)
    noise = ["other.jsonl", f"{base}x.20261123T100000.000000Z.jsonl", f"{live.name}.tmp"]
    assert rotation.rotated(live, [*shuffled, *noise]) == made
    assert sorted(names) == names  # as `ls` shows them
    deleted = rotation.to_delete(made, keep)
    assert deleted == made[: max(len(made) - keep, 0)]  # the oldest go, the newest `keep` stay


def test_a_rotated_name_is_fixed_width_and_readable() -> None:
    live = Path("events.jsonl")
    at = datetime(2026, 11, 23, 11, 0, 0, 5, tzinfo=UTC)
    assert rotation.rotated_path(live, at, compressed=True).name == (
        "events.20261123T110000.000005Z.jsonl.gz"
    )
    assert rotation.parse(live, "events.20261323T110000.000005Z.jsonl.gz") is None  # month 13


# --- the daemon's wiring --------------------------------------------------------------------------


async def test_the_daemon_records_what_it_receives_and_flushes_it_when_it_stops(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """`engine.record` with its cap: the recorder's writer runs in the daemon's nursery and what
    was queued is in the file once `daemon.run` has returned."""
    document = {
        "market": {
            "url": sandbox.base_url,
            "username": "alice",
            "password": "${FLEXBOT_PASSWORD}",
            "clock": "sandbox",
        },
        "store": {"path": "flexbot.db"},
        "engine": {"record": "events.jsonl", "record_max_mb": 1, "record_keep": 2},
    }
    path = tmp_path / "flexbot.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    loaded = config.load(path, {"FLEXBOT_PASSWORD": "alice-pw"})
    assert loaded.config.engine.record_max_mb == 1
    stop = trio.Event()
    seen: list[Parts] = []

    def started(parts: Parts, _: trio.Nursery) -> None:
        seen.append(parts)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(daemon.run, loaded, stop=stop, signals=False, started=started))
        await until(lambda: bool(seen))
        for i in range(3):
            sandbox.market.place("bob", request("buy", price=f"0.{20 + i}"))
        await until(lambda: book_frames(seen[0]) >= 4)
        stop.set()
    events = load_recording(tmp_path / "events.jsonl")
    books = [e for e in events if e.endpoint is Endpoint.ORDERBOOK]
    assert len(books) >= 4  # the snapshot and the three changes, at least
    bids = books[-1].message["data"]["bids"]
    assert len([e for entries in bids.values() for e in entries]) == 3


def book_frames(parts: Parts) -> int:
    frames: int = parts.feed.consumers[Endpoint.ORDERBOOK].stats.frames
    return frames


@pytest.mark.parametrize("key", ["record_max_mb", "record_keep"])
def test_the_recording_cap_and_count_must_be_at_least_one(tmp_path: Path, key: str) -> None:
    document = {
        "market": {"url": "https://market.test", "username": "alice", "password": "${PW}"},
        "engine": {"record": "events.jsonl", key: 0},
    }
    path = tmp_path / "flexbot.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    with pytest.raises(config.ConfigError) as refused:
        config.load(path, {"PW": "x"})
    assert any(f"$.engine.{key}" in line for line in refused.value.lines), refused.value.lines
