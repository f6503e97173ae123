"""Recordings of market events: what the daemon received, replayable by `flexbot replay`.

One JSON object a line: `{"at": market time, "endpoint": "orderbook"|"ticker"|"trade",
"message": <the frame's JSON>}`; a frame that is not JSON is kept as `"raw": "<text>"` (and skipped
on replay). Lines are written as frames arrive and flushed at most every `flush_s` seconds, so a
crash loses at most that much of the recording, never the daemon's own state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
from attrs import frozen

from flexbot import wire
from flexbot.market import Endpoint
from flexbot.problems import Invalid


@frozen
class Recorded:
    at: datetime
    endpoint: Endpoint
    message: Any  # decoded JSON


class Recorder:
    def __init__(self, path: Path, now: Callable[[], datetime], *, flush_s: float = 1.0) -> None:
        self.path = path
        self._now = now
        self._flush_s = flush_s
        self._file: IO[bytes] = path.open("ab")
        self._flushed_at = time.monotonic()
        self.frames = 0

    def __call__(self, endpoint: Endpoint, frame: str | bytes) -> None:
        head = {"at": wire.format_datetime(self._now()), "endpoint": str(endpoint)}
        try:
            head["message"] = orjson.loads(frame)
        except orjson.JSONDecodeError:
            head["raw"] = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
        self._file.write(orjson.dumps(head) + b"\n")
        self.frames += 1
        if time.monotonic() - self._flushed_at >= self._flush_s:
            self.flush()

    def flush(self) -> None:
        self._file.flush()
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        self._file.close()


def read(path: Path) -> Iterator[Recorded]:
    """The recording's events in order; `Invalid` names the line of a broken one."""
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                data = orjson.loads(line)
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
