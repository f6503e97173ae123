"""The optional Prometheus endpoint (`metrics.listen: 127.0.0.1:9108`), served by hypercorn on trio.

Most figures are read from the running parts when Prometheus scrapes (a custom collector over the
engine's counters, the tracker, the stream stats): nothing to keep in step. The REST latency
histogram is fed by the market client; the outbox figures come from the store, refreshed every few
seconds by a task (the store is not read from the scrape itself). The registry is this object's
own, never the process-global one.

| metric | type | labels |
|---|---|---|
| flexbot_orders | gauge | strategy, state (pending, open, unknown, done, rejected…) |
| flexbot_order_events_total | counter | event (intents, placed, rejected, unknown, fills…) |
| flexbot_filled_power_watts | gauge | strategy, side (power of all contracts) |
| flexbot_contract_{energy_kwh,eur} | gauge | strategy, side, standing (settled, pending, failed) |
| flexbot_settled_eur_total | counter | strategy, side: € of contracts settled since start |
| flexbot_risk_rejections_total | counter | limit |
| flexbot_ws_{connects,disconnects,messages}_total | counter | endpoint |
| flexbot_ws_messages_too_big_total | counter | endpoint (links closed 1009, message too big) |
| flexbot_ws_connected | gauge | endpoint |
| flexbot_ticker_dropped_total | counter | |
| flexbot_backlog_dropped_total | counter | backlog, strategy (items lost to a buffer's cap) |
| flexbot_backlog_size, flexbot_backlog_capacity | gauge | backlog, strategy |
| flexbot_token_grants_total | counter | |
| flexbot_outbox_pending, flexbot_outbox_oldest_age_seconds | gauge | |
| flexbot_verification_submissions_total | counter | |
| flexbot_alarms | gauge | alarm (1 while raised) |
| flexbot_assets | gauge | site, state (fresh: counted; stale: offers nothing) |
| flexbot_asset_bad_messages_total | counter | |
| flexbot_site_{deliverable,committed,free}_watts | gauge | site, window (0: the next, … 3) |
| flexbot_site_meter_age_seconds | gauge | site (its meters' oldest last reading) |

The backlogs (`flexbot.parts.backlogs`) are `feed_ticker`, `inbox_orders` and `inbox_facts` (per
strategy; `strategy` is empty for the others) and `verifier_enqueued`; the alarm `backlog_full`
says when one is at its capacity or dropped something.
| flexbot_rest_request_seconds | histogram | method |
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, cast

import trio
from attrs import frozen
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from hypercorn.typing import Framework
from prometheus_client import CollectorRegistry, Histogram, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flexbot import logs
from flexbot.buffers import BoundedSet
from flexbot.engine.deliverable import site_rooms
from flexbot.engine.orders import Change
from flexbot.ledger import Ledger, Standing, amount_eur, standing
from flexbot.parts import Parts, backlogs
from flexbot.trading import IntentState, Window

if TYPE_CHECKING:
    from flexbot.market import MarketFeed

log = logs.get_logger("flexbot.metrics")


@frozen
class MetricsSettings:
    listen: str  # host:port


class Metrics(Collector):
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # € of contracts settled since start, by (strategy, side); each contract counted once.
        self.settled_eur: dict[tuple[str, str], Decimal] = {}
        self._settled_seen: BoundedSet[str] = BoundedSet(SETTLED_REMEMBERED)
        self.rest_latency = Histogram(
            "flexbot_rest_request_seconds",
            "Time the market took to answer a REST request",
            ["method"],
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.parts: Parts | None = None
        self.outbox_pending = 0
        self.outbox_oldest_age_s = 0.0
        self.alarms: set[str] = set()
        self.registry.register(self)

    def attach(self, parts: Parts) -> None:
        self.parts = parts
        parts.market.client.on_latency = self.observe_latency
        parts.engine.observers.append(self.observe_change)

    def observe_change(self, change: Change) -> None:
        """A contract settled (seen first now): its money counts in `flexbot_settled_eur_total`."""
        contract = change.contract
        if contract is None or standing(contract) is not Standing.SETTLED:
            return
        if contract.contract_id in self._settled_seen:
            return
        self._settled_seen.add(contract.contract_id)
        key = (change.order.strategy, str(change.order.side))
        self.settled_eur[key] = self.settled_eur.get(key, Decimal(0)) + amount_eur(contract)

    def observe_latency(self, method: str, seconds: float) -> None:
        self.rest_latency.labels(method=method).observe(seconds)

    def collect(self) -> Iterator[Metric]:
        parts = self.parts
        if parts is None:
            return
        orders = GaugeMetricFamily("flexbot_orders", "Own orders", labels=["strategy", "state"])
        by_state: Counter[tuple[str, str]] = Counter()
        filled: dict[tuple[str, str], Decimal] = {}
        for intent in parts.tracker:
            by_state[(intent.strategy, str(intent.state))] += 1
            key = (intent.strategy, str(intent.request.side))
            filled[key] = filled.get(key, Decimal(0)) + intent.snapshot().filled_power_w
        for strategy in parts.engine.runners:
            for state in IntentState:
                orders.add_metric([strategy, str(state)], by_state[(strategy, str(state))])
        yield orders
        power = GaugeMetricFamily(
            "flexbot_filled_power_watts", "Power of own contracts", labels=["strategy", "side"]
        )
        for (strategy, side), watts in sorted(filled.items()):
            power.add_metric([strategy, side], float(watts))
        yield power
        counts = parts.engine.counts
        events = CounterMetricFamily("flexbot_order_events", "Order events", labels=["event"])
        for event in ("intents", "placed", "rejected", "unknown", "cancelled", "fills"):
            events.add_metric([event], counts.get(event, 0))
        yield events
        risk = CounterMetricFamily(
            "flexbot_risk_rejections", "Intents refused by risk", labels=["limit"]
        )
        for name, value in sorted(counts.items()):
            if name.startswith("risk_rejected:"):
                risk.add_metric([name.partition(":")[2]], value)
        yield risk
        yield from self._streams(parts)
        yield CounterMetricFamily(
            "flexbot_token_grants", "Tokens obtained", value=parts.market.tokens.grants
        )
        yield CounterMetricFamily(
            "flexbot_verification_submissions",
            "Baselines and meterings acknowledged",
            value=parts.verifier.sent,
        )
        yield GaugeMetricFamily(
            "flexbot_outbox_pending", "Submissions waiting", value=self.outbox_pending
        )
        yield GaugeMetricFamily(
            "flexbot_outbox_oldest_age_seconds",
            "Age of the oldest waiting submission",
            value=self.outbox_oldest_age_s,
        )
        alarms = GaugeMetricFamily("flexbot_alarms", "Raised alarms", labels=["alarm"])
        for alarm in ALARMS:
            alarms.add_metric([alarm], 1 if alarm in self.alarms else 0)
        yield alarms
        yield from backlog_metrics(parts)
        yield from portfolio_metrics(parts)
        yield from money_metrics(parts, self.settled_eur)

    def _streams(self, parts: Parts) -> Iterator[Metric]:
        yield from stream_metrics(parts.feed)

    async def refresh_outbox(self, every_s: float = 5.0) -> None:
        while True:
            parts = self.parts
            if parts is not None:
                pending, oldest = await parts.store.run(parts.store.sync.outbox_backlog)
                self.outbox_pending = pending
                self.outbox_oldest_age_s = 0.0 if oldest is None else time.time() - oldest
            await trio.sleep(every_s)

    async def serve(
        self,
        settings: MetricsSettings,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve `/metrics` (any path, in fact) until cancelled; starts with the bound address."""
        config = HypercornConfig()
        config.bind = [settings.listen]
        config.accesslog = None
        config.errorlog = None
        app = cast(Framework, make_asgi_app(self.registry))
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(partial(serve, app, config))
            log.info("metrics.listening", address=binds[0])
            task_status.started(binds[0])


ALARMS = ("stream_silent", "token_expired", "metering_overdue", "outbox_stale", "backlog_full")


def backlog_metrics(parts: Parts) -> Iterator[Metric]:
    """Each bounded buffer's drops, size and capacity, read at scrape time."""
    labels = ["backlog", "strategy"]
    dropped = CounterMetricFamily(
        "flexbot_backlog_dropped", "Items lost to a bounded buffer's capacity", labels=labels
    )
    size = GaugeMetricFamily(
        "flexbot_backlog_size", "Items waiting in a bounded buffer", labels=labels
    )
    capacity = GaugeMetricFamily(
        "flexbot_backlog_capacity", "The most items a bounded buffer holds", labels=labels
    )
    for backlog, strategy, buffer in backlogs(parts):
        dropped.add_metric([backlog, strategy], buffer.dropped)
        size.add_metric([backlog, strategy], len(buffer))
        capacity.add_metric([backlog, strategy], buffer.capacity)
    yield from (dropped, size, capacity)


SETTLED_REMEMBERED = 100_000  # contract ids known settled (so a repeated report counts once)


def money_metrics(parts: Parts, settled_eur: dict[tuple[str, str], Decimal]) -> Iterator[Metric]:
    """Energy and money of the contracts in memory, by where they stand; € settled since start."""
    labels = ["strategy", "side", "standing"]
    energy = GaugeMetricFamily(
        "flexbot_contract_energy_kwh", "Energy of own contracts in memory", labels=labels
    )
    money = GaugeMetricFamily(
        "flexbot_contract_eur", "Money of own contracts in memory", labels=labels
    )
    ledger = Ledger.of(parts.tracker.fills())
    for (strategy, side, which), tally in sorted(ledger.cells.items()):
        energy.add_metric([strategy, side, str(which)], float(tally.energy_kwh))
        money.add_metric([strategy, side, str(which)], float(tally.eur))
    yield energy
    yield money
    settled = CounterMetricFamily(
        "flexbot_settled_eur", "Money of contracts settled since start", labels=["strategy", "side"]
    )
    for (strategy, side), eur in sorted(settled_eur.items()):
        settled.add_metric([strategy, side], float(eur))
    yield settled


SITE_WINDOWS = 4  # upcoming windows reported per site


def portfolio_metrics(parts: Parts) -> Iterator[Metric]:
    """Per site: its assets, fresh or stale, what it can deliver in the next windows against
    what is committed there, and how old its meters' readings are."""
    now = parts.clock.now()
    ages = GaugeMetricFamily(
        "flexbot_site_meter_age_seconds",
        "Age of the oldest last reading of a site's meters",
        labels=["site"],
    )
    oldest: dict[str, float] = {}
    for meter in parts.hub.meters:
        last = parts.hub.last_reading.get(meter.id)
        age = (now - last).total_seconds() if last is not None else float("inf")
        oldest[meter.location_id] = max(oldest.get(meter.location_id, 0.0), age)
    for site, age in sorted(oldest.items()):
        ages.add_metric([site], age)
    yield ages
    fleet = parts.fleet
    if fleet is None:
        return
    assets = GaugeMetricFamily("flexbot_assets", "Assets known", labels=["site", "state"])
    figures = {
        name: GaugeMetricFamily(
            f"flexbot_site_{name}_watts",
            f"Reduction {name} in an upcoming window",
            labels=["site", "window"],
        )
        for name in ("deliverable", "committed", "free")
    }
    windows = Window.upcoming(now, SITE_WINDOWS)
    sites = sorted(fleet.by_site)
    by_site = site_rooms(fleet, parts.tracker, sites, windows, now=now, dry_run=False)
    for site in sites:
        fresh = sum(1 for a in fleet.assets([site]) if fleet.fresh(a, now))
        assets.add_metric([site, "fresh"], fresh)
        assets.add_metric([site, "stale"], len(fleet.by_site[site]) - fresh)
        rooms = by_site[site]
        for index, window in enumerate(windows):
            risk, room, _ = rooms[window]
            label = [site, str(index)]
            figures["deliverable"].add_metric(label, room.capacity_w)
            figures["committed"].add_metric(label, float(risk.committed_w))
            figures["free"].add_metric(label, room.free_w)
    yield assets
    yield from figures.values()
    yield CounterMetricFamily(
        "flexbot_asset_bad_messages",
        "Asset messages that could not be read",
        value=fleet.bad_messages,
    )


def stream_metrics(feed: MarketFeed) -> Iterator[Metric]:
    """The WebSocket figures, read from the feed's consumers at scrape time."""
    help_texts = {
        "connects": "WebSocket connects",
        "disconnects": "WebSocket disconnects",
        "messages": "WebSocket messages",
        "messages_too_big": "WebSocket links closed (1009) for a message over the size limit",
    }
    families = {
        name: CounterMetricFamily(f"flexbot_ws_{name}", text, labels=["endpoint"])
        for name, text in help_texts.items()
    }
    connected = GaugeMetricFamily("flexbot_ws_connected", "Link up", labels=["endpoint"])
    for endpoint, consumer in feed.consumers.items():
        stats = consumer.stats
        families["connects"].add_metric([str(endpoint)], stats.connects)
        families["disconnects"].add_metric([str(endpoint)], stats.disconnects)
        families["messages"].add_metric([str(endpoint)], stats.frames)
        families["messages_too_big"].add_metric([str(endpoint)], stats.too_big)
        connected.add_metric([str(endpoint)], 1 if consumer.connected else 0)
    yield from families.values()
    yield connected
    yield CounterMetricFamily(
        "flexbot_ticker_dropped", "Ticker events dropped", value=feed.ticker.dropped
    )
