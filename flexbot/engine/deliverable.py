"""What a pool can still deliver: the fleet's rooms (`flexbot.assets`) less the sells the tracker
holds for its sites. The availability risk limit and `ctx.deliverable` both read it here, so a
strategy that offers what it is told is never refused for it.

A pool is the set of sites an order names. A sell counts whole against every pool sharing one of
its sites: exact for pools that do not overlap (an aggregator sells the same pool again and
again), and on the safe side for those that do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal

from flexbot.assets import Fleet, WindowRoom, plan, quarters, whole_watts
from flexbot.engine.orders import Intent, OrderTracker, committed_sells, sell_commitments
from flexbot.engine.risk import PoolRoom
from flexbot.trading import Deliverable, Window

Rooms = dict[Window, tuple[PoolRoom, WindowRoom, int]]


def pool_rooms(
    fleet: Fleet,
    tracker: OrderTracker | Iterable[Intent],
    sites: Iterable[str | None],
    windows: Sequence[Window],
    *,
    now: datetime,
    dry_run: bool | None = None,
) -> Rooms:
    """Each window's room for the pool of `sites`: as the risk check reads it, as the model
    planned it, and the number of assets counted. The sells are the tracker's (the daemon), or
    any intents (`flexbot status`, from the journal)."""
    pool = tuple(dict.fromkeys(s for s in sites if s))
    if isinstance(tracker, OrderTracker):
        # Past the horizon, a window shares nothing with another: only the asked ones matter.
        until = fleet.horizon(now).end
        committed = tracker.committed_sells(
            pool, after=now, dry_run=dry_run, until=until, also=windows
        )
    else:
        committed = committed_sells(tracker, pool, after=now, dry_run=dry_run)
    return _rooms(fleet, committed, pool, windows, now)


def site_rooms(
    fleet: Fleet,
    intents: Iterable[Intent],
    sites: Iterable[str],
    windows: Sequence[Window],
    *,
    now: datetime,
    dry_run: bool | None = None,
) -> dict[str, Rooms]:
    """`pool_rooms` of each site as a pool of its own (status, metrics): the sells read once for
    all the sites, not once a site."""
    by_site: dict[str, dict[Window, Decimal]] = {site: {} for site in sites}
    for named, window, power in sell_commitments(intents, after=now, dry_run=dry_run):
        for site in dict.fromkeys(named):
            committed = by_site.get(site) if site is not None else None
            if committed is not None:
                committed[window] = committed.get(window, Decimal(0)) + power
    return {
        site: _rooms(fleet, committed, (site,), windows, now) for site, committed in by_site.items()
    }


def _rooms(
    fleet: Fleet,
    committed: Mapping[Window, Decimal],
    pool: tuple[str, ...],
    windows: Sequence[Window],
    now: datetime,
) -> Rooms:
    rooms = fleet.rooms(pool, now)
    planned = plan(
        rooms,
        {w: float(p) for w, p in committed.items()},
        windows,
        now=now,
        horizon=fleet.horizon(now),
    )
    out = {}
    for window in windows:
        room = planned[window]
        servable = room.committed_w - room.shortfall_w + room.free_w
        risk = PoolRoom(_most_committed(committed, window), Decimal(whole_watts(servable)))
        out[window] = (risk, room, len(rooms))
    return out


def _most_committed(committed: Mapping[Window, Decimal], window: Window) -> Decimal:
    """W committed in the window's busiest quarter hour (an hour's sell counts in each of its
    quarters; a quarter's, in the hours holding it), exactly."""
    most = Decimal(0)
    for q in quarters(window):
        here = sum(
            (p for w, p in committed.items() if w.start < q.end and q.start < w.end), Decimal(0)
        )
        most = max(most, here)
    return most


def deliverable(
    fleet: Fleet,
    tracker: OrderTracker | Iterable[Intent],
    sites: Iterable[str | None],
    windows: Sequence[Window],
    *,
    now: datetime,
    ratio: Decimal,
    dry_run: bool | None = None,
) -> list[Deliverable]:
    """Each window's `Deliverable` for the pool of `sites`; `ratio`: the share of what the assets
    can serve that may be committed (the `max_commit_ratio` risk limit), so that an order of
    `available_w` passes it."""
    pool = tuple(dict.fromkeys(s for s in sites if s))
    out = []
    rooms = pool_rooms(fleet, tracker, pool, windows, now=now, dry_run=dry_run)
    for window in windows:
        risk, room, assets = rooms[window]
        allowed = ratio * risk.servable_w - risk.committed_w
        out.append(
            Deliverable(
                window=window,
                sites=pool,
                capacity_w=Decimal(whole_watts(room.capacity_w)),
                committed_w=risk.committed_w,
                available_w=max(Decimal(0), allowed.to_integral_value(rounding=ROUND_FLOOR)),
                assets=assets,
            )
        )
    return out
