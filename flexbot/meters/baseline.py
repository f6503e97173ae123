"""Baselines: what a site would have used without flexibility, per quarter hour of a window.

Computed from the site's own history (its meter's quarter-hour energies on earlier days, at the
same time of day), by one of the methods used in demand-response programmes:
- `mean_of_days`: the mean of the last `days` comparable days;
- `high_x_of_y`: of the last `y` comparable days, the `x` with the highest energy over the window,
  averaged (the usual "high 4 of 5": it errs towards the higher, typical load);
- `provided`: a forecast from another meter (its readings for the window itself).

Comparable days: the same kind of day as the target (a weekday for a weekday, a weekend day for a
weekend day) whose data for the window is complete (no flagged quarter); the newest ones are taken,
skipping incomplete days, within a horizon of `7 × N + 14` days. Too few comparable days
is an error that names the method and how many were found: never a made-up baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from decimal import Decimal


class BaselineUnavailable(Exception):
    """Not enough history for the method; the message says what was found."""


def comparable(day: date, target: date) -> bool:
    return (day.weekday() >= 5) == (target.weekday() >= 5)


def horizon_days(look_back: int) -> int:
    """How far back a method looking back over `look_back` comparable days may reach."""
    return look_back * 7 + 14


def candidate_days(target: date, look_back: int) -> list[date]:
    """Earlier days of the target's kind, newest first, over a horizon long enough to find
    `look_back` of them twice over (weekend days come two a week): a day without complete data is
    skipped and an older one taken, as demand-response programmes do, but never from further back
    than the horizon."""
    days = [target - timedelta(days=k) for k in range(1, horizon_days(look_back) + 1)]
    return [d for d in days if comparable(d, target)]


def mean_of_days(
    history: Mapping[date, Sequence[Decimal]], target: date, days: int
) -> list[Decimal]:
    """Per quarter, the mean over the last `days` comparable days present in `history`."""
    if days < 1:
        raise ValueError("mean_of_days needs days >= 1")
    chosen = [history[d] for d in candidate_days(target, days) if d in history][:days]
    if not chosen:
        raise BaselineUnavailable(f"mean_of_days: no comparable day of history before {target}")
    return _mean(chosen)


def high_x_of_y(
    history: Mapping[date, Sequence[Decimal]], target: date, x: int, y: int
) -> list[Decimal]:
    """Per quarter, the mean of the `x` days with the highest total among the last `y`."""
    if not 0 < x <= y:
        raise ValueError("high_x_of_y needs 0 < x <= y")
    last = [history[d] for d in candidate_days(target, y) if d in history][:y]
    if len(last) < x:
        raise BaselineUnavailable(
            f"high_x_of_y: {len(last)} comparable days of history before {target}, {x} needed"
        )
    # Highest totals first; ties keep the newer day (the list is newest first, sort is stable).
    top = sorted(last, key=lambda quarters: sum(quarters, Decimal(0)), reverse=True)[:x]
    return _mean(top)


def _mean(days: Sequence[Sequence[Decimal]]) -> list[Decimal]:
    width = len(days[0])
    if any(len(d) != width for d in days):
        raise ValueError("every day must give the same number of quarters")
    return [sum((d[i] for d in days), Decimal(0)) / len(days) for i in range(width)]
