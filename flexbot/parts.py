"""What a running daemon is made of: the parts the daemon builds and the watchers read.

It sits below the daemon, the alarms and the metrics, so that the watchers depend on the parts
they read rather than on the daemon that assembled them.
"""

from __future__ import annotations

from attrs import define

from flexbot.assets import Fleet
from flexbot.buffers import Bounded
from flexbot.clock import MarketClock
from flexbot.engine.engine import Engine
from flexbot.engine.orders import OrderTracker
from flexbot.market import MarketFeed, MarketSession
from flexbot.meters.hub import MeterHub
from flexbot.store import AsyncStore
from flexbot.verification import Verifier


@define
class Parts:
    """The running parts, for the alarms, the metrics and the demo's progress (the daemon swaps
    in a recording feed before the streams start)."""

    engine: Engine
    verifier: Verifier
    hub: MeterHub
    feed: MarketFeed
    tracker: OrderTracker
    store: AsyncStore
    market: MarketSession
    clock: MarketClock
    fleet: Fleet | None = None  # the portfolio's assets (config `assets`)


def summary_line(parts: Parts) -> str:
    """One line for systemd's STATUS= and for people."""
    counts = parts.engine.counts
    live = len(parts.tracker.live())
    return (
        f"{len(parts.engine.runners)} strategies, {live} open orders, "
        f"{counts.get('placed', 0)} placed, {counts.get('fills', 0)} fills, "
        f"{parts.verifier.sent} verification submissions"
    )


def backlogs(parts: Parts) -> list[tuple[str, str, Bounded]]:
    """(backlog, strategy or "", buffer) for every bounded buffer or memory of the running parts
    that may drop: what `flexbot_backlog_*` and the `backlog_full` alarm read."""
    found: list[tuple[str, str, Bounded]] = [("feed_ticker", "", parts.feed.ticker)]
    for name, runner in sorted(parts.engine.runners.items()):
        found.append(("inbox_orders", name, runner.inbox.changes))
        found.append(("inbox_facts", name, runner.inbox.facts))
    found.append(("verifier_enqueued", "", parts.verifier.enqueued))
    return found
