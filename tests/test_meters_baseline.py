"""Property tests for the baselines (`flexbot.meters.baseline`) on generated histories.

Which days a method used is read back by probing: the same days with a 1 on one day and 0 on
every other give a mean above 0 exactly when that day was used. The oracles are then plain
restatements of the module docstring with exact arithmetic (`Fraction`): the mean of the chosen
days, and for high X of Y a brute force over every X-subset of the Y days.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexbot.meters.baseline import BaselineUnavailable, high_x_of_y, mean_of_days
from tests import strategies_model as sm

FAST = settings(max_examples=100, deadline=None)
TOLERANCE = Fraction(1, 10**20)  # a Decimal mean is rounded to 28 digits

History = dict[date, list[Decimal]]

energies = sm.wire_decimals(places=3, below=1000)  # kWh per quarter
targets = st.dates(min_value=date(2001, 1, 1), max_value=date(2098, 12, 31))


def weekend(day: date) -> bool:
    return day.weekday() >= 5


def comparable_days(history: Mapping[date, object], target: date) -> list[date]:
    """The history's days of the target's kind before it, newest first."""
    return sorted(
        (d for d in history if d < target and weekend(d) == weekend(target)), reverse=True
    )


def exact_mean(days: Sequence[Sequence[Decimal]]) -> list[Fraction]:
    return [
        sum((Fraction(d[i]) for d in days), Fraction(0)) / len(days) for i in range(len(days[0]))
    ]


def close(got: Sequence[Decimal], want: Sequence[Fraction]) -> bool:
    return len(got) == len(want) and all(
        abs(Fraction(g) - w) <= TOLERANCE for g, w in zip(got, want, strict=True)
    )


def used_by_mean_of_days(history: Mapping[date, object], target: date, days: int) -> list[date]:
    """The days `mean_of_days` used, newest first: probed with one quarter per day, 1 on its own
    day and 0 on the others, so a quarter's mean is above 0 exactly when its day was used."""
    order = list(history)
    probe = {
        d: [Decimal(1 if i == j else 0) for i in range(len(order))] for j, d in enumerate(order)
    }
    try:
        means = mean_of_days(probe, target, days)
    except BaselineUnavailable:
        return []
    return sorted((d for d, mean in zip(order, means, strict=True) if mean > 0), reverse=True)


@st.composite
def histories(
    draw: st.DrawFn, *, complete: bool = False, max_back: int = 40
) -> tuple[History, date]:
    """A target and a history of equal-width days around it: the days before it (all of them, or
    some), and maybe some on or after it (which no baseline may use)."""
    target = draw(targets)
    width = draw(st.integers(1, 6))
    back = draw(st.integers(0, max_back))
    day_list = [target - timedelta(days=k) for k in range(1, back + 1)]
    if not complete:
        day_list = [d for d in day_list if draw(st.integers(0, 4)) > 0]  # 4 in 5 present
        day_list += [target + timedelta(days=k) for k in draw(st.sets(st.integers(0, 10)))]
    fresh = st.lists(energies, min_size=width, max_size=width)
    history: History = {}
    for day in day_list:
        if history and draw(st.integers(0, 3)) == 0:  # another day's load, shifted in time:
            earlier = draw(st.sampled_from(sorted(history)))  # the same total, another shape
            history[day] = list(draw(st.permutations(history[earlier])))
        else:
            history[day] = draw(fresh)
    return history, target


# --- mean of days -------------------------------------------------------------------------------


@FAST
@given(histories(), st.integers(1, 15))
def test_mean_of_days_is_the_mean_of_the_newest_comparable_days(
    case: tuple[History, date], days: int
) -> None:
    history, target = case
    used = used_by_mean_of_days(history, target, days)
    comparable = comparable_days(history, target)
    if not comparable:
        with pytest.raises(BaselineUnavailable, match="mean_of_days"):
            mean_of_days(history, target, days)
        return
    if not used:  # nothing recent enough: an error naming the method, never a made-up baseline
        with pytest.raises(BaselineUnavailable, match="mean_of_days"):
            mean_of_days(history, target, days)
        return
    got = mean_of_days(history, target, days)
    assert len(used) <= days
    assert set(used) <= set(comparable)  # only earlier days of the target's kind
    assert used == comparable[: len(used)]  # the newest first, none skipped
    assert close(got, exact_mean([history[d] for d in used]))
    for i, value in enumerate(got):
        column = [history[d][i] for d in used]
        assert min(column) <= value <= max(column)
        everything = [quarters[i] for quarters in history.values()]
        assert min(everything) <= value <= max(everything)


@FAST
@given(histories(), st.integers(1, 15))
def test_a_weekend_target_never_uses_a_weekday_nor_the_reverse(
    case: tuple[History, date], days: int
) -> None:
    """Days of the other kind hold values far above any of the right kind."""
    history, target = case
    marked = {
        d: [v + (10**6 if weekend(d) != weekend(target) else 0) for v in quarters]
        for d, quarters in history.items()
    }
    try:
        got = mean_of_days(marked, target, days)
    except BaselineUnavailable:
        return
    assert all(value < 1000 for value in got)


@FAST
@given(targets, st.integers(1, 15))
def test_a_complete_history_gives_exactly_the_newest_days_days(target: date, days: int) -> None:
    """With every day of the last 13 weeks present, `days` comparable days are there to use.

    Fails for weekend targets with `days` ≥ 5: `candidate_days` looks back 2 × days + 7 calendar
    days, which hold only about (4 × days + 14) / 7 weekend days, fewer than `days`."""
    history = {target - timedelta(days=k): [Decimal(k)] for k in range(1, 92)}
    used = used_by_mean_of_days(history, target, days)
    assert used == comparable_days(history, target)[:days]


# --- high X of Y --------------------------------------------------------------------------------


def total(quarters: Sequence[Decimal] | Sequence[Fraction]) -> Fraction:
    return sum((Fraction(q) for q in quarters), Fraction(0))


def brute_force_high(days: list[list[Decimal]], x: int) -> tuple[Fraction, list[Fraction]]:
    """Of every x-subset (indices newest first): the best total, and the mean of the best subset
    that keeps the newest days on ties."""
    combos = list(itertools.combinations(range(len(days)), x))
    best = max(sum((total(days[i]) for i in c), Fraction(0)) for c in combos)
    newest = min(c for c in combos if sum((total(days[i]) for i in c), Fraction(0)) == best)
    return best / x, exact_mean([days[i] for i in newest])


xs_ys = st.integers(1, 8).flatmap(lambda y: st.tuples(st.integers(1, y), st.just(y)))


@FAST
@given(histories(), xs_ys)
def test_high_x_of_y_takes_the_highest_x_of_the_last_y(
    case: tuple[History, date], x_y: tuple[int, int]
) -> None:
    history, target = case
    x, y = x_y
    last = used_by_mean_of_days(history, target, y)  # the same choice of days
    assert len(last) <= y
    assert last == comparable_days(history, target)[: len(last)]
    if len(last) < x:
        with pytest.raises(BaselineUnavailable, match="high_x_of_y") as caught:
            high_x_of_y(history, target, x, y)
        assert f"{len(last)} comparable days" in str(caught.value)
        return
    got = high_x_of_y(history, target, x, y)
    best_total, best_mean = brute_force_high([history[d] for d in last], x)
    assert abs(total(got) - best_total) <= TOLERANCE * len(got)
    assert close(got, best_mean)
    mean_total = total(mean_of_days(history, target, y))
    assert total(got) >= mean_total - TOLERANCE * len(got)


@FAST
@given(histories(max_back=10), st.integers(-3, 10), st.integers(-3, 10))
def test_high_x_of_y_refuses_x_above_y_or_not_positive(
    case: tuple[History, date], x: int, y: int
) -> None:
    history, target = case
    if 0 < x <= y:
        return
    with pytest.raises(ValueError, match="0 < x <= y"):
        high_x_of_y(history, target, x, y)


def test_too_few_days_names_the_method() -> None:
    monday = date(2026, 11, 23)
    with pytest.raises(BaselineUnavailable, match="mean_of_days"):
        mean_of_days({}, monday, 10)
    saturday_only = {date(2026, 11, 21): [Decimal(1)]}
    with pytest.raises(BaselineUnavailable, match="mean_of_days"):
        mean_of_days(saturday_only, monday, 10)
    two_mondays = {monday - timedelta(days=7 * k): [Decimal(k)] for k in (1, 2)}
    with pytest.raises(BaselineUnavailable, match=r"high_x_of_y: 2 comparable days.*3 needed"):
        high_x_of_y(two_mondays, monday, 3, 5)


def test_high_four_of_five_on_a_saturday_uses_the_last_five_saturdays_and_sundays() -> None:
    """The default high 4 of 5 for a Saturday, with every day of ten weeks in the history.

    The five newest weekend days before Saturday 2026-11-28 are Sun 22, Sat 21, Sun 15, Sat 14 and
    Sun 8; the oldest of them (Sun 8) is the highest, so it must be among the four chosen."""
    saturday = date(2026, 11, 28)
    history = {saturday - timedelta(days=k): [Decimal(1)] for k in range(1, 71)}
    history[date(2026, 11, 8)] = [Decimal(50)]  # the 5th newest weekend day
    history[date(2026, 11, 22)] = [Decimal(0)]  # the newest: the lowest, left out
    got = high_x_of_y(history, saturday, 4, 5)
    assert got == [Decimal(53) / 4]  # (50 + 1 + 1 + 1) / 4


def test_high_x_of_y_keeps_the_newer_of_two_days_with_equal_totals() -> None:
    monday = date(2026, 11, 23)
    history = {
        monday - timedelta(days=3): [Decimal(3), Decimal(1)],  # Friday: newer
        monday - timedelta(days=4): [Decimal(1), Decimal(3)],  # Thursday: same total
        monday - timedelta(days=5): [Decimal(1), Decimal(1)],
    }
    assert high_x_of_y(history, monday, 1, 3) == [Decimal(3), Decimal(1)]
    assert high_x_of_y(history, monday, 2, 3) == [Decimal(2), Decimal(2)]
