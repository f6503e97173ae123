"""What a pool of assets can still deliver as a reduction, window by window.

Each asset gives a **room**: the most reduction it can hold in a window (its power range from
where it is now: `power_w − min_power_w`), and, when it cannot hold that for ever, an **energy
budget** for the whole horizon:

- a battery: what it stores above its floor (its minimum, or an EV's target when higher), less
  what its own discharge will take by the horizon's end, times its efficiency. Its own charging is
  not counted in its favour, so the budget never overstates;
- a load: its reduction held for `max_reduction_s` (its recovery is not counted on within the
  horizon: one hold a horizon);
- a generator (raising output) or a fixed asset without an energy figure: no budget.

An EMS's `availability` message speaks for the windows it covers: there the asset's room is its
`reduce_w`, drawn from no budget (the EMS knows its own energy). Beyond the horizon the state says
nothing (a battery's charge in a day's time is anyone's guess): only such messages give room.

What is already committed (sold, or offered and still open) comes first: what is sold for
10:00–10:15 uses energy that 10:15–10:30 then no longer has. A window's free reduction is the
most that could be added there with every commitment still served (`plan`: exact, not a greedy
guess; each window's figure on its own, so two windows' free figures are not both to be had when
they share a battery).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from attrs import field, frozen

from flexbot.assets.protocol import AssetKind, AssetState, Availability
from flexbot.trading import Window

HOUR_S = 3600.0
# Windows that share the assets' energy (the horizon's, and the one under way): every set of
# them is looked at (2^n), so their number is bounded; `assets.horizon_windows` stays below.
MAX_COUPLED_WINDOWS = 13


@frozen
class Room:
    """One asset's room for a reduction."""

    key: str  # site/asset
    power_w: float  # in any window of the horizon
    energy_wh: float | None = None  # for the whole horizon; None: no limit
    offered: Mapping[Window, float] = field(factory=dict)  # an EMS's figures, by window


@frozen
class WindowRoom:
    """A pool's reduction in one window, in W: what its assets could hold, what is committed,
    what is free, and what of the committed no asset can serve (the state changed after it was
    sold)."""

    window: Window
    capacity_w: float
    committed_w: float
    free_w: float
    shortfall_w: float = 0.0


def room_of(
    key: str, state: AssetState, availability: Availability | None, *, horizon: Window
) -> Room:
    """The room of an asset whose state is fresh."""
    offered = _offered(availability)
    if not state.available:
        return Room(key, 0.0, 0.0, offered)
    power = max(0.0, state.power_w - state.min_power_w)
    if state.kind is AssetKind.BATTERY:
        return Room(key, power, _battery_energy(state, horizon), offered)
    if state.kind is AssetKind.LOAD and state.max_reduction_s is not None:
        return Room(key, power, power * state.max_reduction_s / HOUR_S, offered)
    return Room(key, power, None, offered)


def offered_only(key: str, availability: Availability | None) -> Room:
    """The room of an asset known only by an EMS's figures (its state stale or unknown: none)."""
    return Room(key, 0.0, 0.0, _offered(availability))


def _offered(availability: Availability | None) -> dict[Window, float]:
    if availability is None:
        return {}
    return {Window(o.start, o.end): o.reduce_w for o in availability.windows}


def _battery_energy(state: AssetState, horizon: Window) -> float:
    stored = state.energy_wh or 0.0
    floor = state.min_energy_wh or 0.0
    if state.target_energy_wh is not None:
        floor = max(floor, state.target_energy_wh)
    hours = max(0.0, (horizon.end - state.ts).total_seconds()) / HOUR_S
    own_drain = max(0.0, -state.power_w) * hours
    return max(0.0, stored - floor - own_drain) * state.efficiency


def _hours(window: Window, now: datetime) -> float:
    """What is left of the window, in hours (a window under way has less of it)."""
    return max(0.0, (window.end - max(window.start, now)).total_seconds()) / HOUR_S


def plan(
    rooms: Sequence[Room],
    committed: Mapping[Window, float],
    windows: Sequence[Window],
    *,
    now: datetime,
    horizon: Window,
) -> dict[Window, WindowRoom]:
    """Each of `windows`' room, with everything `committed` (W, in any window) served.

    Serving commitments from assets is a transport problem: each window's energy (power × its
    hours) flows to assets, at most an asset's power × hours in a window and its energy budget in
    all. By the max-flow min-cut theorem the commitments can be served exactly when, for every
    set S of windows, what S needs is at most what the assets can give S: Σ min(budget, Σ_S power
    × hours) over the assets. A window's free room is the least slack of the sets holding it; the
    windows within the horizon are few (at most 13), so every set is looked at, and an asset
    group whose every member draws in every window is summed through one sorted pass."""
    every = sorted({*windows, *(w for w, c in committed.items() if c > 0 and w.end > now)})
    hours = {w: _hours(w, now) for w in every}
    inside = [w for w in every if w.end <= horizon.end and hours[w] > 0]  # energy is shared here
    bit = {w: 1 << k for k, w in enumerate(inside)}
    full = (1 << len(inside)) - 1
    lasting = dict.fromkeys(every, 0.0)  # W that draws on no budget: EMS figures, no-limit assets
    drawing: list[tuple[float, float, int]] = []  # (W, Wh, the inside windows it draws in)
    for room in rooms:
        draws = 0
        for window in every:
            offered = room.offered.get(window)
            if offered is not None:
                lasting[window] += offered
            elif window in bit:
                if room.energy_wh is None:
                    lasting[window] += room.power_w
                else:
                    draws |= bit[window]
        if draws and room.power_w > 0 and room.energy_wh is not None:
            drawing.append((room.power_w, room.energy_wh, draws))
    whole = _Group([(p, e) for p, e, d in drawing if d == full])
    apart = [(p, e, d) for p, e, d in drawing if d != full]
    least = _least_slack(inside, hours, lasting, committed, whole, apart)
    out = {}
    for window in windows:
        need = max(0.0, committed.get(window, 0.0))
        h = hours[window]
        if h <= 0:
            out[window] = WindowRoom(window, 0.0, need, 0.0)
            continue
        if window in bit:
            b = bit[window]
            capacity = lasting[window] + sum(min(p, e / h) for p, e, d in drawing if d & b)
            slack_w = least[window] / h
        else:
            capacity = lasting[window]
            slack_w = capacity - need
        out[window] = WindowRoom(
            window=window,
            capacity_w=capacity,
            committed_w=need,
            free_w=max(0.0, slack_w),
            shortfall_w=max(0.0, -slack_w),
        )
    return out


class _Group:
    """Σ min(budget, power × hours) over assets that draw in every window, for any hours: one
    sorted pass, then a bisection a query."""

    def __init__(self, assets: Sequence[tuple[float, float]]) -> None:
        ordered = sorted(assets, key=lambda a: a[1] / a[0])  # by how long each can hold
        self.lasts = [e / p for p, e in ordered]
        self.spent = [0.0]  # Σ budgets of the first k (those that run out)
        for _, e in ordered:
            self.spent.append(self.spent[-1] + e)
        self.holding = [0.0]  # Σ powers of the last k (those that hold)
        for p, _ in reversed(ordered):
            self.holding.append(self.holding[-1] + p)

    def give(self, hours: float) -> float:
        k = bisect.bisect_right(self.lasts, hours)
        return self.spent[k] + hours * self.holding[len(self.lasts) - k]


def _least_slack(
    inside: Sequence[Window],
    hours: Mapping[Window, float],
    lasting: Mapping[Window, float],
    committed: Mapping[Window, float],
    whole: _Group,
    apart: Sequence[tuple[float, float, int]],
) -> dict[Window, float]:
    """For each inside window, the least slack (Wh) over the sets of windows holding it."""
    count = len(inside)
    if count > MAX_COUPLED_WINDOWS:
        raise ValueError(f"at most {MAX_COUPLED_WINDOWS} windows share energy, got {count}")
    span = [0.0] * (1 << count)  # Σ hours of the set
    spare = [0.0] * (1 << count)  # Σ (lasting − committed) × hours of the set
    least = [math.inf] * count
    for mask in range(1, 1 << count):
        low = mask & -mask
        k = low.bit_length() - 1
        window = inside[k]
        h = hours[window]
        span[mask] = span[mask ^ low] + h
        spare[mask] = spare[mask ^ low] + (lasting[window] - committed.get(window, 0.0)) * h
        slack = spare[mask] + whole.give(span[mask])
        for p, e, d in apart:
            slack += min(e, p * span[mask & d])
        rest = mask
        while rest:
            low = rest & -rest
            j = low.bit_length() - 1
            if slack < least[j]:
                least[j] = slack
            rest ^= low
    return {w: least[k] for k, w in enumerate(inside)}


def horizon_from(now: datetime, windows: int, length_s: int = 900) -> Window:
    """From now to the end of the `windows`-th window after the one under way."""
    start = now.replace(second=0, microsecond=0)
    start -= timedelta(minutes=start.minute % (length_s // 60))
    return Window(now, start + timedelta(seconds=length_s * (windows + 1)))


def whole_watts(value: float) -> int:
    """A free reduction as an offer may use it: whole watts, never rounded up."""
    return max(0, math.floor(value + 1e-9))
