"""Market time, shared by the sandbox and the client.

Two readings of one wall clock: `wall()` (seconds, for token lifetimes and rate limits, which run at
real speed) and `now()` (market time, which runs `scale` times faster from the moment the sandbox
started, so that a 15-minute delivery window can pass in seconds). Tests inject a manual wall.
The sandbox runs on one; flexbot runs on another that matches the market's (`sync_with`), so that
the demo and paper trading can run time faster than the wall.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class ManualWall:
    """A wall clock that only moves when told to: `advance(seconds)`."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not run backwards")
        self._now += seconds


class MarketClock:
    def __init__(
        self,
        scale: float = 1.0,
        *,
        wall: Callable[[], float] = time.time,
        start: datetime | None = None,
    ) -> None:
        if scale <= 0:
            raise ValueError("time scale must be positive")
        self.scale = scale
        self.wall = wall
        self._origin_wall = wall()
        self._origin_market = start or datetime.now(UTC)

    def now(self) -> datetime:
        elapsed = (self.wall() - self._origin_wall) * self.scale
        return self._origin_market + timedelta(seconds=elapsed)

    def wall_seconds_until(self, when: datetime) -> float:
        """How long to sleep on the wall clock until market time reaches `when` (0 if past)."""
        return max(0.0, (when - self.now()).total_seconds() / self.scale)


class Clock(Protocol):
    """What the engine needs of time: market time now."""

    def now(self) -> datetime: ...


class SetClock:
    """Market time that moves only when set: `flexbot replay` sets it from each recorded event."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        if when > self._now:  # a recording may hold events out of order by microseconds
            self._now = when
