"""Timers (flexbot.schedule): validation, fire times, daylight saving, `run_timer` on market time.

- `check_timer` locates every problem at the field that holds it;
- an interval timer fires one interval after its start, then every interval, exactly;
- a cron timer fires on its grid, at the first grid point not before `now`;
- a local cron fires once per local day across daylight-saving changes;
- `run_timer` sleeps on the wall clock through `MarketClock`, so a scaled clock fires scaled timers
  (on trio's `MockClock`: no real time passes).
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from flexbot.clock import MarketClock
from flexbot.problems import Invalid
from flexbot.schedule import Schedule, Timer, check_timer, run_timer

US = timedelta(microseconds=1)
BERLIN = ZoneInfo("Europe/Berlin")

aware_datetimes = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


def fires(schedule: Schedule, now: datetime, count: int) -> list[datetime]:
    """`count` successive fire times, asking each time just after the previous fire."""
    out: list[datetime] = []
    for _ in range(count):
        fire = schedule.next_after(now)
        assert fire is not None
        out.append(fire)
        now = fire.astimezone(UTC) + US  # absolute time: `fire + US` would drop `fold`
    return out


class BoundedTrigger:
    """Wraps a trigger and fails (instead of hanging) if one `next_after` asks it too often."""

    LIMIT = 100

    def __init__(self, trigger: Any) -> None:
        self.trigger = trigger
        self.calls = 0

    def get_next_fire_time(self, previous: datetime | None, now: datetime) -> datetime | None:
        self.calls += 1
        if self.calls > self.LIMIT:
            raise AssertionError(
                f"next_after spins: {self.LIMIT} trigger calls, previous={previous}, now={now}"
            )
        return self.trigger.get_next_fire_time(previous, now)  # type: ignore[no-any-return]


def bounded_fires(schedule: Schedule, now: datetime, count: int) -> list[datetime]:
    bounded = BoundedTrigger(schedule._trigger)
    schedule._trigger = bounded
    out: list[datetime] = []
    for _ in range(count):
        bounded.calls = 0
        fire = schedule.next_after(now)
        assert fire is not None
        out.append(fire)
        now = fire.astimezone(UTC) + US  # absolute time: `fire + US` would drop `fold`
    return out


# --- check_timer -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timer", "locs"),
    [
        (Timer(), [()]),
        (Timer(interval_s=60, cron="*/15 * * * *"), [()]),
        (Timer(interval_s=0), [("interval_s",)]),
        (Timer(interval_s=-1.5), [("interval_s",)]),
        (Timer(interval_s=math.nan), [("interval_s",)]),
        (Timer(interval_s=math.inf), [("interval_s",)]),
        (Timer(cron="bad"), [("cron",)]),
        (Timer(cron="* * * *"), [("cron",)]),
        (Timer(cron="61 * * * *"), [("cron",)]),
        (Timer(cron="* * * * * *"), [("cron",)]),
        (Timer(interval_s=60, timezone="Mars/Olympus_Mons"), [("timezone",)]),
        (Timer(interval_s=60, timezone=""), [("timezone",)]),
        (Timer(interval_s=60, timezone="../etc/passwd"), [("timezone",)]),
        (Timer(cron="*/15 * * * *", timezone="Nowhere"), [("timezone",)]),
        (Timer(interval_s=-1, cron="x", timezone="Nowhere"), [(), ("interval_s",), ("timezone",)]),
    ],
)
def test_check_timer_locates_problems(timer: Timer, locs: list[tuple[str, ...]]) -> None:
    problems = check_timer(timer)
    assert [p.loc for p in problems] == locs
    with pytest.raises(Invalid) as caught:
        Schedule(timer, datetime(2026, 1, 1, tzinfo=UTC))
    assert caught.value.problems == tuple(problems)


def test_check_timer_messages_name_the_problem() -> None:
    (zone,) = check_timer(Timer(interval_s=1, timezone="Nowhere"))
    assert "Nowhere" in zone.msg
    (cron,) = check_timer(Timer(cron="61 * * * *"))
    assert str(cron).startswith("$.cron: not a valid crontab line")


@pytest.mark.parametrize(
    "timer",
    [
        Timer(interval_s=0.001),
        Timer(interval_s=86_400),
        Timer(cron="*/15 * * * *"),
        Timer(cron="30 1 * * mon-fri", timezone="Europe/Berlin"),
    ],
)
def test_check_timer_accepts_good_timers(timer: Timer) -> None:
    assert check_timer(timer) == []


def test_a_timer_check_timer_accepts_can_be_scheduled() -> None:
    """Every interval check_timer accepts can be scheduled (huge ones once overflowed)."""
    timer = Timer(interval_s=1e14)  # ~3 million years: finite, > 0
    start = datetime(2026, 1, 1, tzinfo=UTC)
    if check_timer(timer) == []:
        Schedule(timer, start)  # raises OverflowError instead of the problem being reported


# --- interval timers -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    start=aware_datetimes,
    micros=st.one_of(st.integers(1, 10**6), st.integers(1, 10**11)),
    count=st.integers(1, 12),
)
def test_interval_fires_are_evenly_spaced(start: datetime, micros: int, count: int) -> None:
    interval = timedelta(microseconds=micros)
    interval_s = interval.total_seconds()
    schedule = Schedule(Timer(interval_s=interval_s), start)
    times = fires(schedule, start, count)
    assert times[0] == start + interval  # one interval after the start, not at it
    for earlier, later in itertools.pairwise(times):
        assert later > earlier
        assert later - earlier == interval


def test_interval_first_fire_not_before_now() -> None:
    start = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    schedule = Schedule(Timer(interval_s=60), start)
    # Asked later than the first fire: the next grid point (start + k·interval) not before now.
    assert schedule.next_after(start + timedelta(seconds=150)) == start + timedelta(seconds=180)


# --- cron timers -----------------------------------------------------------------------------


def test_cron_quarter_hours() -> None:
    start = datetime(2026, 11, 23, 10, 7, 30, tzinfo=UTC)
    schedule = Schedule(Timer(cron="*/15 * * * *"), start)
    assert fires(schedule, start, 5) == [
        datetime(2026, 11, 23, 10, 15, tzinfo=UTC),
        datetime(2026, 11, 23, 10, 30, tzinfo=UTC),
        datetime(2026, 11, 23, 10, 45, tzinfo=UTC),
        datetime(2026, 11, 23, 11, 0, tzinfo=UTC),
        datetime(2026, 11, 23, 11, 15, tzinfo=UTC),
    ]


def test_cron_on_a_grid_point_fires_at_it() -> None:
    on_grid = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)
    schedule = Schedule(Timer(cron="*/15 * * * *"), on_grid)
    assert schedule.next_after(on_grid) == on_grid  # "not before now": now itself counts
    assert schedule.next_after(on_grid + US) == on_grid + timedelta(minutes=15)


def quarter_ceil(when: datetime) -> datetime:
    """The first point of the 15-minute UTC grid not before `when`."""
    floor = when.replace(minute=when.minute - when.minute % 15, second=0, microsecond=0)
    return floor if floor == when else floor + timedelta(minutes=15)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(start=aware_datetimes, count=st.integers(1, 8))
def test_cron_fires_on_the_quarter_hour_grid(start: datetime, count: int) -> None:
    schedule = Schedule(Timer(cron="*/15 * * * *"), start)
    times = fires(schedule, start, count)
    assert times[0] == quarter_ceil(start)
    assert times == [times[0] + i * timedelta(minutes=15) for i in range(count)]
    for fire in times:
        assert fire.utcoffset() == timedelta(0)


# --- daylight saving -------------------------------------------------------------------------


def local_dates(times: list[datetime], zone: ZoneInfo) -> list[date]:
    return [t.astimezone(UTC).astimezone(zone).date() for t in times]


def assert_once_a_day(times: list[datetime], zone: ZoneInfo, first: date) -> None:
    utc = [t.astimezone(UTC) for t in times]
    assert utc == sorted(set(utc)), "fire times must be strictly ascending"
    assert local_dates(times, zone) == [first + timedelta(days=i) for i in range(len(times))]


def test_local_cron_fires_once_a_day_over_fall_back() -> None:
    start = datetime(2026, 10, 23, tzinfo=UTC)
    schedule = Schedule(Timer(cron="30 1 * * *", timezone="Europe/Berlin"), start)
    times = bounded_fires(schedule, start, 5)
    assert_once_a_day(times, BERLIN, date(2026, 10, 24))  # 10-23 01:30 CEST was before start
    for fire in times:
        local = fire.astimezone(UTC).astimezone(BERLIN)
        assert (local.hour, local.minute) == (1, 30)
    # 01:30 is before the fall back (03:00 CEST → 02:00 CET): CEST up to the 25th, CET after.
    assert [t.astimezone(UTC).hour for t in times] == [23, 23, 0, 0, 0]


def test_local_cron_fires_once_a_day_over_spring_forward() -> None:
    """02:30 does not exist in Berlin on 2026-03-29; that day's fire still happens, once."""
    start = datetime(2026, 3, 27, tzinfo=UTC)
    schedule = Schedule(Timer(cron="30 2 * * *", timezone="Europe/Berlin"), start)
    times = bounded_fires(schedule, start, 5)
    assert_once_a_day(times, BERLIN, date(2026, 3, 27))


@pytest.mark.parametrize(
    ("cron", "zone", "start", "first"),
    [
        # 02:30 comes twice in Berlin on 2026-10-25 (next_after once spun for ever there).
        ("30 2 * * *", "Europe/Berlin", datetime(2026, 10, 23, tzinfo=UTC), date(2026, 10, 23)),
        # The same in New York on 2026-11-01 (01:00-01:59 comes twice).
        ("30 1 * * *", "America/New_York", datetime(2026, 10, 30, tzinfo=UTC), date(2026, 10, 30)),
    ],
)
def test_local_cron_in_the_repeated_hour_fires_once_that_day(
    cron: str, zone: str, start: datetime, first: date
) -> None:
    schedule = Schedule(Timer(cron=cron, timezone=zone), start)
    times = bounded_fires(schedule, start, 5)
    assert_once_a_day(times, ZoneInfo(zone), first)


@pytest.mark.parametrize(
    ("cron", "period"),
    [("0 * * * *", timedelta(hours=1)), ("*/30 * * * *", timedelta(minutes=30))],
)
def test_sub_daily_local_cron_over_fall_back_moves_forward(cron: str, period: timedelta) -> None:
    """Hourly and half-hourly local crons move forward through the repeated hour."""
    start = datetime(2026, 10, 24, 22, 0, tzinfo=UTC)  # 00:00 CEST on the fall-back day
    schedule = Schedule(Timer(cron=cron, timezone="Europe/Berlin"), start)
    utc = [t.astimezone(UTC) for t in bounded_fires(schedule, start, 12)]
    assert utc[0] == start
    assert utc == sorted(set(utc)), "fire times must be strictly ascending"
    gaps = [later - earlier for earlier, later in itertools.pairwise(utc)]
    assert all(period <= gap <= 2 * period for gap in gaps)  # at most the repeat is skipped


# --- next_after after a jump of market time --------------------------------------------------


@pytest.mark.parametrize("timer", [Timer(interval_s=60), Timer(cron="*/15 * * * *")])
def test_next_after_is_not_before_now_after_a_jump(timer: Timer) -> None:
    """After a jump of market time, the next fire is not before `now`: missed slots are
    skipped, not fired back to back."""
    start = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    schedule = Schedule(timer, start)
    first = schedule.next_after(start)
    assert first is not None
    later = start + timedelta(hours=5, seconds=1)
    fire = schedule.next_after(later)
    assert fire is not None
    assert fire >= later


# --- run_timer on a scaled market clock ------------------------------------------------------

MARKET_START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
WALL_OFFSET = 1_700_000_000.0  # a realistic time.time(), to exercise float precision


def test_run_timer_fires_on_scaled_market_time() -> None:
    fired: list[tuple[datetime, float, datetime]] = []

    async def main() -> None:
        clock = MarketClock(
            scale=60, wall=lambda: WALL_OFFSET + trio.current_time(), start=MARKET_START
        )

        def fire(when: datetime) -> None:
            fired.append((when, trio.current_time(), clock.now()))

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_timer, Timer(interval_s=60), clock, fire)
            await trio.sleep(10.5)
            nursery.cancel_scope.cancel()
        assert trio.current_time() - started == pytest.approx(10.5)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    whens = [when for when, _, _ in fired]
    assert whens == [MARKET_START + timedelta(minutes=i) for i in range(1, 11)]
    for i, (when, wall, market_now) in enumerate(fired, start=1):
        assert wall == pytest.approx(i, abs=1e-3)  # one wall second per 60 market seconds
        assert market_now >= when  # never early
        assert market_now - when < timedelta(milliseconds=1)


def test_run_timer_stops_when_the_schedule_ends() -> None:
    """A trigger with no further fire time ends `run_timer` instead of looping."""

    class Once:
        def __init__(self) -> None:
            self.done = False

        def get_next_fire_time(self, previous: datetime | None, now: datetime) -> datetime | None:
            if self.done:
                return None
            self.done = True
            return now + timedelta(seconds=30)

    fired: list[datetime] = []

    async def main() -> None:
        clock = MarketClock(scale=60, wall=trio.current_time, start=MARKET_START)
        original = Schedule.__init__

        def init(self: Schedule, timer: Timer, start: datetime) -> None:
            original(self, timer, start)
            self._trigger = Once()

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Schedule, "__init__", init)
            with trio.fail_after(5):
                await run_timer(Timer(interval_s=1), clock, fired.append)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert fired == [MARKET_START + timedelta(seconds=30)]
