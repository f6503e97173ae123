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
QUARTER = timedelta(minutes=15)
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
    # Its own discharge at the grid takes more than that from storage: its losses too.
    own_drain = max(0.0, -state.power_w) * hours / state.efficiency
    return max(0.0, stored - floor - own_drain) * state.efficiency


def _hours(window: Window, now: datetime) -> float:
    """What is left of the window, in hours (a window under way has less of it)."""
    return max(0.0, (window.end - max(window.start, now)).total_seconds()) / HOUR_S


def quarters(window: Window) -> list[Window]:
    """The window cut at the market's 15-minute grid: the pieces in which power is the same."""
    out = []
    at = window.start
    while at < window.end:
        minutes = at.minute - at.minute % 15
        grid = at.replace(minute=minutes, second=0, microsecond=0) + QUARTER
        out.append(Window(at, min(grid, window.end)))
        at = out[-1].end
    return out


def plan(
    rooms: Sequence[Room],
    committed: Mapping[Window, float],
    windows: Sequence[Window],
    *,
    now: datetime,
    horizon: Window,
) -> dict[Window, WindowRoom]:
    """Each of `windows`' room, with everything `committed` (W, in any windows) served.

    Power is the same within a quarter hour of the grid, so every window, sold or asked about,
    is cut into quarters (an hour's sell is four quarters' commitment). Serving commitments from
    assets is then a transport problem: each quarter's energy (power × its hours) flows to
    assets, at most an asset's power × hours in a quarter and its energy budget in all. By the
    max-flow min-cut theorem it is served in full exactly when every set S of quarters needs no
    more than the assets can give S (Σ over assets of min(budget, Σ_S power × hours)): when no
    set's *slack* is negative. What may be added to a window (the same power in each of its
    quarters) is the most that keeps every slack that was not negative from going below zero,
    and a deficit elsewhere from growing: a shortfall in one window is not charged to another.
    The quarters within the horizon are few (at most `MAX_COUPLED_WINDOWS`), so every set of them
    is weighed; assets that draw in the same quarters are summed through one sorted pass."""
    need: dict[Window, float] = {}
    for window, power in committed.items():
        if power > 0 and window.end > now:
            for q in quarters(window):
                need[q] = need.get(q, 0.0) + power
    asked = {window: quarters(window) for window in windows}
    every = sorted({*need, *(q for qs in asked.values() for q in qs)})
    hours = {q: _hours(q, now) for q in every}
    # Energy is shared within the horizon; past the bound (never, with the grid and
    # `horizon_windows` ≤ 12), a quarter is one where no budget may be drawn: on the safe side.
    inside = [q for q in every if q.end <= horizon.end and hours[q] > 0][:MAX_COUPLED_WINDOWS]
    bit = {q: 1 << k for k, q in enumerate(inside)}
    lasting = dict.fromkeys(every, 0.0)  # W that draws on no budget: EMS figures, no-limit assets
    drawing: dict[int, list[tuple[float, float]]] = {}  # by the quarters they draw in: (W, Wh)
    for room in rooms:
        offered = _offered_quarters(room)
        draws = 0
        for q in every:
            figure = offered.get(q)
            if figure is not None:
                lasting[q] += figure
            elif q in bit:
                if room.energy_wh is None:
                    lasting[q] += room.power_w
                else:
                    draws |= bit[q]
        if draws and room.power_w > 0 and room.energy_wh is not None:
            drawing.setdefault(draws, []).append((room.power_w, room.energy_wh))
    groups = [(mask, _Group(assets)) for mask, assets in drawing.items()]
    sets = _Sets(inside, hours, lasting, need, groups)
    out = {}
    for window, pieces in asked.items():
        alive = [q for q in pieces if hours[q] > 0]
        most = max((need.get(q, 0.0) for q in pieces), default=0.0)
        if not alive:
            out[window] = WindowRoom(window, 0.0, most, 0.0)
            continue
        free, short, capacity = math.inf, 0.0, math.inf
        for q in alive:
            if q in bit:
                capacity = min(capacity, sets.capacity(q))
                short = max(short, sets.shortfall(q))
            else:  # a quarter of its own: no energy shared with any other
                capacity = min(capacity, lasting[q])
                free = min(free, max(0.0, lasting[q] - need.get(q, 0.0)))
                short = max(short, max(0.0, need.get(q, 0.0) - lasting[q]))
        mask = sum(bit[q] for q in alive if q in bit)
        if mask:
            free = min(free, sets.free(mask))
        out[window] = WindowRoom(
            window=window,
            capacity_w=capacity,
            committed_w=most,
            free_w=free,
            shortfall_w=short,
        )
    return out


def _offered_quarters(room: Room) -> dict[Window, float]:
    """An EMS's figures by quarter (the least, where two of its windows cover one)."""
    out: dict[Window, float] = {}
    for window, figure in room.offered.items():
        for q in quarters(window):
            out[q] = min(figure, out.get(q, figure))
    return out


class _Group:
    """Σ min(budget, power × hours) over assets that draw in the same quarters, for any hours:
    one sorted pass, then a bisection a query."""

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


class _Sets:
    """Every set of the coupled quarters, by bit mask: its hours, and its slack (Wh: what the
    assets can give it less what it needs)."""

    def __init__(
        self,
        inside: Sequence[Window],
        hours: Mapping[Window, float],
        lasting: Mapping[Window, float],
        need: Mapping[Window, float],
        groups: Sequence[tuple[int, _Group]],
    ) -> None:
        self.inside = list(inside)
        self.hours = hours
        self.lasting = lasting
        self.groups = groups
        size = 1 << len(inside)
        self.span = span = [0.0] * size
        spare = [0.0] * size  # Σ (lasting − need) × hours
        self.slack = slack = [0.0] * size
        for mask in range(1, size):
            low = mask & -mask
            q = inside[low.bit_length() - 1]
            h = hours[q]
            span[mask] = span[mask ^ low] + h
            spare[mask] = spare[mask ^ low] + (lasting[q] - need.get(q, 0.0)) * h
            slack[mask] = spare[mask] + sum(g.give(span[mask & d]) for d, g in groups)
        # Per quarter: the least slack of the sets without it (A) and with it (B), each at most 0
        # for A (the empty set's).
        count = len(inside)
        self.without = [0.0] * count
        self.with_ = [math.inf] * count
        for mask in range(1, size):
            value = slack[mask]
            for k in range(count):
                if mask >> k & 1:
                    if value < self.with_[k]:
                        self.with_[k] = value
                elif value < self.without[k]:
                    self.without[k] = value

    def capacity(self, q: Window) -> float:
        """W the assets could hold in the quarter alone."""
        k = self.inside.index(q)
        h = self.hours[q]
        return self.lasting[q] + sum(g.give(h) / h for d, g in self.groups if d >> k & 1)

    def shortfall(self, q: Window) -> float:
        """W of the quarter's commitment no asset can serve, beyond what is short elsewhere."""
        k = self.inside.index(q)
        a = self.without[k]
        return max(0.0, (a - min(a, self.with_[k])) / self.hours[q])

    def free(self, asked: int) -> float:
        """W that may be added in each quarter of `asked` (a mask) together."""
        floor = 0.0  # the deficit there is already, away from the asked quarters
        touching = math.inf
        for mask in range(1, len(self.slack)):
            if mask & asked:
                touching = min(touching, self.slack[mask])
            else:
                floor = min(floor, self.slack[mask])
        if touching < floor:
            return 0.0  # the asked quarters are short already
        most = math.inf
        for mask in range(1, len(self.slack)):
            part = mask & asked
            if part:
                most = min(most, (self.slack[mask] - floor) / self.span[part])
        return max(0.0, most)


def horizon_from(now: datetime, windows: int, length_s: int = 900) -> Window:
    """From now to the end of the `windows`-th window after the one under way."""
    start = now.replace(second=0, microsecond=0)
    start -= timedelta(minutes=start.minute % (length_s // 60))
    return Window(now, start + timedelta(seconds=length_s * (windows + 1)))


def whole_watts(value: float) -> int:
    """A free reduction as an offer may use it: whole watts, never rounded up."""
    return max(0, math.floor(value + 1e-9))
