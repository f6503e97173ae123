"""Timers on market time: apscheduler 3.x triggers compute the fire times, a trio task sleeps.

apscheduler 3 has no trio scheduler and apscheduler 4 is an alpha, so only its triggers are used:
`IntervalTrigger` and `CronTrigger` (crontab syntax). Fire times are computed in market time and
slept on the wall clock through `MarketClock`, so an accelerated demo runs its timers faster too.

Schedules are in UTC unless a zone is named. On a daylight-saving fall-back day a local cron such as
`30 1 * * *` matches twice; for a cron at fixed hours, a fire at the same local wall time as the
fire just before it is skipped. An hourly or sub-hourly cron fires in both repeated hours (they are
different moments).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import trio
from apscheduler.triggers.base import BaseTrigger  # type: ignore[import-untyped]
from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]
from attrs import frozen

from flexbot.clock import MarketClock
from flexbot.problems import Invalid, Problem

MAX_SLEEP_S = 0.5
MAX_INTERVAL_S = 366 * 24 * 3600  # a year: longer is a typo, and overflows a date soon after


@frozen
class Timer:
    """When a strategy's `on_timer` runs: every `interval_s` seconds, or on a `cron` line."""

    interval_s: float | None = None
    cron: str | None = None  # minute hour day month day-of-week, e.g. "*/15 * * * *"
    timezone: str = "UTC"


class Schedule:
    def __init__(self, timer: Timer, start: datetime) -> None:
        self.timer = timer
        self._trigger = trigger_for(timer, start)
        self._zone = ZoneInfo(timer.timezone)
        self._previous: datetime | None = None
        # Only a cron at fixed hours (daily and the like) can meet the same local time twice in a
        # fall-back night and must not run twice; an hourly one runs in both repeated hours.
        hour = timer.cron.split()[1] if timer.cron and len(timer.cron.split()) > 1 else ""
        self._fixed_hour = hour.replace(",", "").isdigit()

    def next_after(self, now: datetime) -> datetime | None:
        """The first fire time after the previous one and not before `now` (None: never again).
        Slots missed while market time jumped are skipped, not fired in a burst."""
        while True:
            fire: datetime | None = self._trigger.get_next_fire_time(self._previous, now)
            if fire is not None and fire < now:
                fire = self._trigger.get_next_fire_time(None, now)
            if fire is None:
                return None
            repeated = (
                self._previous is not None
                and self._fixed_hour
                and _local_wall(fire, self._zone) == _local_wall(self._previous, self._zone)
            )
            self._previous = fire
            if not repeated:
                return fire
            # In UTC: a local time in the repeated hour (fold=1) would lose its fold here.
            now = fire.astimezone(UTC) + timedelta(microseconds=1)


def trigger_for(timer: Timer, start: datetime) -> BaseTrigger:
    """The apscheduler trigger, or `Invalid` located at the bad field."""
    problems = check_timer(timer)
    if problems:
        raise Invalid(problems)
    zone = ZoneInfo(timer.timezone)
    if timer.cron is not None:
        return CronTrigger.from_crontab(timer.cron, timezone=zone)
    assert timer.interval_s is not None
    first = start + timedelta(seconds=timer.interval_s)  # one interval after the start, not at it
    return IntervalTrigger(seconds=timer.interval_s, start_date=first, timezone=zone)


def check_timer(timer: Timer) -> list[Problem]:
    problems: list[Problem] = []
    if (timer.interval_s is None) == (timer.cron is None):
        problems.append(Problem((), "give exactly one of interval_s or cron"))
    if timer.interval_s is not None and not (
        math.isfinite(timer.interval_s) and 0 < timer.interval_s <= MAX_INTERVAL_S
    ):
        problems.append(
            Problem(("interval_s",), f"must be a number of seconds in (0, {MAX_INTERVAL_S}]")
        )
    try:
        zone = ZoneInfo(timer.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(Problem(("timezone",), f"unknown time zone {timer.timezone!r}"))
        zone = None
    if timer.cron is not None and zone is not None:
        try:
            CronTrigger.from_crontab(timer.cron, timezone=zone)
        except ValueError as exc:
            problems.append(Problem(("cron",), f"not a valid crontab line: {exc}"))
    return problems


async def run_timer(timer: Timer, clock: MarketClock, fire: Callable[[datetime], None]) -> None:
    """Call `fire(when)` at each fire time, for ever (cancel the task to stop)."""
    schedule = Schedule(timer, clock.now())
    while True:
        when = schedule.next_after(clock.now())
        if when is None:
            return
        # Sleep in short slices: market time may jump under us (a manual clock in tests, a resync).
        while (delay := clock.wall_seconds_until(when)) > 0:  # noqa: ASYNC110 - polls a clock, not a flag
            await trio.sleep(min(delay, MAX_SLEEP_S))
        fire(when)


def _local_wall(when: datetime, zone: ZoneInfo) -> tuple[int, ...]:
    local = when.astimezone(zone)
    return (local.year, local.month, local.day, local.hour, local.minute, local.second)
