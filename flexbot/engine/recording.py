"""Recordings of market events: what the daemon received, replayable by `flexbot replay`.

One JSON object a line: `{"at": market time, "endpoint": "orderbook"|"ticker"|"trade",
"message": <the frame's JSON>}`; a frame that is not JSON is kept as `"raw": "<text>"` (and skipped
on replay).

Nothing here blocks the event loop. The frame path (`Recorder.__call__`, called by the feed for
every frame) only puts the frame into a bounded queue (`send_nowait`); when it is full the frame
is dropped and counted (`record.dropped`, logged at most once per `drop_log_s`): a slow disk never
stalls the feed. The writer (`Recorder.run`, a task of the daemon's nursery) takes what is queued
and writes it in a worker thread, one batch per thread hop, flushed after each batch, so a crash
loses at most what was queued. Once the file holds `max_bytes` it is rotated and compressed in the
background, and only the newest `keep` rotated files are kept (see `flexbot.engine.rotation`). On
shutdown what is still queued is written, within `flush_timeout_s`.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
import trio
from attrs import define, frozen

from flexbot import logs, wire
from flexbot.engine import rotation
from flexbot.market import Endpoint
from flexbot.problems import Invalid

log = logs.get_logger("flexbot.engine.recording")

MIB = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"


@frozen
class Recorded:
    at: datetime
    endpoint: Endpoint
    message: Any  # decoded JSON


@frozen
class RecorderSettings:
    max_bytes: int = 256 * MIB  # the live file is rotated once it holds this much
    keep: int = 10  # rotated (compressed) files kept; the oldest beyond are deleted
    queue: int = 4096  # frames waiting for the writer; beyond, new frames are dropped
    batch: int = 1024  # frames written per thread hop, at most
    drop_log_s: float = 60.0  # `record.dropped` at most this often
    retry_s: float = 5.0  # after a failed write, the next batch waits this long
    flush_timeout_s: float = 5.0  # at shutdown, for writing what is queued


_Frame = tuple[datetime, Endpoint, str | bytes]


@define
class _Batch:
    """Frames for one write. A cancel abandons the thread that writes them, which may not even
    have started: whichever thread claims them first (under the file lock) writes them, the
    abandoned write or the closing one, and the other leaves them."""

    frames: list[_Frame]
    claimed: bool = False


class Recorder:
    """The frame path (`__call__`) and its writer task (`run`)."""

    def __init__(
        self,
        path: Path,
        now: Callable[[], datetime],
        settings: RecorderSettings = RecorderSettings(),
    ) -> None:
        self.path = path
        self.settings = settings
        self._now = now
        self._send, self._receive = trio.open_memory_channel[_Frame](settings.queue)
        self.frames = 0  # written (counted by the writing thread, under the file lock)
        self.dropped = 0  # never written: the queue was full, or the write failed
        self._reported = 0  # of `dropped`, already logged
        self._report_at = -math.inf  # trio time from which the next `record.dropped` may be
        self._file: IO[bytes] | None = None
        self._size = 0  # bytes in the live file
        self._rotate_at = 0.0  # monotonic time: a failed rotation is tried again from then on
        # Writes run in worker threads, abandoned by a cancel; one at a time, under this lock.
        self._file_lock = threading.Lock()
        self._in_flight: _Batch | None = None  # the batch of a write that may not have ended
        self._rotated = trio.Event()

    # --- the frame path: on the event loop, never waits ---------------------------------------

    def __call__(self, endpoint: Endpoint, frame: str | bytes) -> None:
        try:
            self._send.send_nowait((self._now(), endpoint, frame))
        except (trio.WouldBlock, trio.BrokenResourceError):
            self.dropped += 1
            self._report_drops()

    def _report_drops(self) -> None:
        now = trio.current_time()
        if self.dropped > self._reported and now >= self._report_at:
            log.warning("record.dropped", dropped=self.dropped - self._reported, total=self.dropped)
            self._reported = self.dropped
            self._report_at = now + self.settings.drop_log_s

    # --- the writer -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write what is queued until cancelled, then what is still queued (bounded in time).
        A file that cannot be opened at start is an error of the start (an `OSError`)."""
        await trio.to_thread.run_sync(self._open)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._tidy_loop)  # what a previous run left rotated first
                task_status.started()
                await self._write_loop()
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self.settings.flush_timeout_s) as bounded:
                    await self._flush_and_close()
                if bounded.cancelled_caught:
                    reason = f"not done within {self.settings.flush_timeout_s} s"
                    log.warning("record.failed", step="close", path=str(self.path), reason=reason)
                self._report_at = -math.inf  # the last count, whenever the one before was
                self._report_drops()

    async def _write_loop(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._write(batch)
            self._report_drops()

    async def _next_batch(self) -> list[_Frame]:
        """The frames queued (waiting for one), or none when drops are due to be reported."""
        batch: list[_Frame] = []
        wake = self._report_at if self.dropped > self._reported else math.inf
        with trio.move_on_at(wake):
            batch.append(await self._receive.receive())
        while batch and len(batch) < self.settings.batch:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        return batch

    async def _write(self, batch: list[_Frame]) -> None:
        self._in_flight = job = _Batch(batch)
        try:
            rotated = await trio.to_thread.run_sync(self._write_batch, job, abandon_on_cancel=True)
        except OSError as exc:
            self._in_flight = None
            self.dropped += len(batch)
            log.warning("record.failed", step="write", path=str(self.path), reason=str(exc)[:200])
            await trio.sleep(self.settings.retry_s)
            return
        self._in_flight = None
        if rotated is not None:
            self._rotated.set()

    async def _tidy_loop(self) -> None:
        while True:
            self._rotated = trio.Event()
            try:
                done = await trio.to_thread.run_sync(
                    rotation.tidy, self.path, self.settings.keep, abandon_on_cancel=True
                )
            except OSError as exc:  # the directory itself could not be listed
                log.warning("record.failed", step="tidy", path=str(self.path), reason=str(exc))
            else:
                for file, size, packed in done.compressed:
                    log.info("record.rotated", file=str(file), bytes=size, compressed_bytes=packed)
                if done.deleted:
                    log.info("record.deleted", files=[str(f) for f in done.deleted])
                for file, why in done.failed:
                    log.warning("record.failed", step="tidy", path=str(file), reason=why[:200])
            await self._rotated.wait()

    async def _flush_and_close(self) -> None:
        """Write what is queued, and close the file."""
        rest: list[_Frame] = []
        while True:
            try:
                rest.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        try:
            await trio.to_thread.run_sync(
                self._write_and_close, self._in_flight, rest, abandon_on_cancel=True
            )
        except OSError as exc:
            self.dropped += len(rest)
            log.warning("record.failed", step="close", path=str(self.path), reason=str(exc)[:200])

    # --- in a worker thread ---------------------------------------------------------------------

    def _open(self) -> IO[bytes]:
        """The live file, opened to append (again after a rotation or a failure)."""
        if self._file is None:
            self._file = self.path.open("ab")
            self._size = os.fstat(self._file.fileno()).st_size
        return self._file

    def _write_batch(self, job: _Batch) -> Path | None:
        """Append the batch and flush; rotate if the file is full (then: the rotated file)."""
        with self._file_lock:
            if job.claimed:  # abandoned, and the closing write took it
                return None
            job.claimed = True
            try:
                rotated = self._append(job.frames)
            except OSError:
                self._close_quietly()
                raise
        return rotated

    def _append(self, batch: list[_Frame]) -> Path | None:
        data = b"".join(line(*frame) for frame in batch)
        file = self._open()
        file.write(data)
        file.flush()
        self.frames += len(batch)
        self._size += len(data)  # counted, not asked (`tell`): a pipe has no position
        if self._size < self.settings.max_bytes or time.monotonic() < self._rotate_at:
            return None
        self._close_quietly()
        try:
            # Stamped with the market time of its last frame.
            rotated: Path | None = rotation.rotate(self.path, batch[-1][0])
        except OSError as exc:
            # The batch is written: a failed rotation costs no frame. The live file grows on and
            # the rotation is tried again `retry_s` later.
            self._rotate_at = time.monotonic() + self.settings.retry_s
            log.warning("record.failed", step="rotate", path=str(self.path), reason=str(exc)[:200])
            rotated = None
        self._open()
        return rotated

    def _write_and_close(self, in_flight: _Batch | None, batch: list[_Frame]) -> None:
        """The batch of an abandoned write, unless it ran, then `batch`; then close."""
        with self._file_lock:
            if in_flight is not None and not in_flight.claimed:
                in_flight.claimed = True
                batch = in_flight.frames + batch
            try:
                if batch:
                    self._open().write(b"".join(line(*frame) for frame in batch))
                    self.frames += len(batch)
                if self._file is not None:
                    self._file.close()
                    self._file = None
            except OSError:
                self._close_quietly()
                raise

    def _close_quietly(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # what it held is lost; the write said why
                self._file.close()
            self._file = None


def line(at: datetime, endpoint: Endpoint, frame: str | bytes) -> bytes:
    """One recorded frame, as a line of the recording."""
    head: dict[str, Any] = {"at": wire.format_datetime(at), "endpoint": str(endpoint)}
    try:
        head["message"] = orjson.loads(frame)
    except orjson.JSONDecodeError:
        head["raw"] = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
    return orjson.dumps(head) + b"\n"


def read(path: Path) -> Iterator[Recorded]:
    """The recording's events in order; `Invalid` names the line of a broken one. A compressed
    recording (a rotated `.jsonl.gz`) is read as well, whatever its name."""
    with path.open("rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        file: Iterable[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            yield from _events(path, file)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise Invalid.single((), f"{path}: not a whole gzip file: {exc}") from None


def _events(path: Path, file: Iterable[bytes]) -> Iterator[Recorded]:
    for number, text in enumerate(file, start=1):
        if not text.strip():
            continue
        try:
            data = orjson.loads(text)
            if not isinstance(data, dict):
                raise Invalid.single((), "expected a JSON object")
            if "message" not in data:
                continue  # a frame that was not JSON when received
            yield Recorded(
                at=wire.parse_datetime(str(data.get("at"))),
                endpoint=Endpoint(str(data.get("endpoint"))),
                message=data["message"],
            )
        except (orjson.JSONDecodeError, ValueError) as exc:
            raise Invalid.single(
                (), f"{path}, line {number}: not a recorded event: {exc}"
            ) from None
