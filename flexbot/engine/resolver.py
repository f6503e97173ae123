"""The resolver: what became of submissions whose answer was lost.

An UNKNOWN intent may or may not be an order on the market; it is never sent again. The resolver
looks for it in the market's listing of our orders (where the market has one: the real market
does not, and a 404 or 405 stops the asking), matched by what the order must look like
(`could_be`). Found: it is placed. Absent from the listings for `not_placed_after_s`: it did not
take effect. Like an order of the operator's own (which the listing cannot tell apart): it waits.
Unseen until past its expiry (plus `lapse_grace_s`): lapsed. An order's report on `/trade`
resolves it sooner, without the resolver.

It runs every `resolve_interval_s`, and at once when the desk finds an unknown submission. Each
round also lets go of what is settled and long past (the journal keeps it), so memory stays
bounded over months.
"""

from __future__ import annotations

from datetime import timedelta

import trio

from flexbot import logs, model
from flexbot.clock import Clock
from flexbot.engine.desk import Broker, Deliver, describe
from flexbot.engine.orders import OrderTracker, Unclaimed, could_be, lapse_due
from flexbot.engine.settings import EngineSettings
from flexbot.market import MarketError
from flexbot.trading import IntentState

log = logs.get_logger("flexbot.engine.resolver")

FORGET_AFTER = timedelta(days=1)


class Resolver:
    def __init__(
        self,
        settings: EngineSettings,
        *,
        clock: Clock,
        tracker: OrderTracker,
        broker: Broker | None,
        deliver: Deliver,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.tracker = tracker
        self.broker = broker
        self._deliver = deliver
        self._wake = trio.Event()
        self._listing: bool | None = None  # does the market list our orders? None: not tried
        self._ambiguous: set[str] = set()  # unknown intents logged as `order.ambiguous` once
        self._unknown_since: dict[str, float] = {}  # client id → trio time first found unlisted

    def wake(self) -> None:
        """An unknown submission was found: look for it now rather than at the next round."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            with trio.move_on_after(self.settings.resolve_interval_s):
                await self._wake.wait()
            self._wake = trio.Event()
            if self.tracker.unresolved():
                await self.resolve()
            self.tracker.forget_finished(self.clock.now() - FORGET_AFTER)
            live = {i.client_id for i in self.tracker.live()}
            self._ambiguous &= live
            self._unknown_since = {k: v for k, v in self._unknown_since.items() if k in live}

    async def resolve(self) -> None:
        """Find the orders of unknown submissions; lapse those past their expiry."""
        listed = await self._list_orders()
        now = self.clock.now()
        started = trio.current_time()
        sorted_out = await self.tracker.unclaimed(listed) if listed is not None else Unclaimed([])
        found = sorted_out.free
        for intent in self.tracker.unresolved():
            if intent.dry_run or intent.state is not IntentState.UNKNOWN:
                continue  # paper, or resolved by /trade while an earlier one was saved
            if listed is not None:
                found = [o for o in found if self.tracker.by_order_id(o.order_id) is None]
                order = next((o for o in found if could_be(intent, o)), None)
                if order is not None:
                    log.info("order.resolved", **describe(intent), how="listing")
                    self._deliver([await self.tracker.placed(intent, order, now)])
                    continue
                if any(could_be(intent, o) for o in sorted_out.ambiguous):
                    # Ours or the operator's: not "not placed"; wait for the operator's answer.
                    if intent.client_id not in self._ambiguous:
                        self._ambiguous.add(intent.client_id)
                        log.info("order.ambiguous", **describe(intent), like="an operator's order")
                else:
                    age = started - self._unknown_since.setdefault(intent.client_id, started)
                    if age >= self.settings.not_placed_after_s:
                        reason = "not on the market: the unknown submission did not take effect"
                        change = await self.tracker.set_state(
                            intent, IntentState.REJECTED, now, reason
                        )
                        log.warning("order.not_placed", **describe(intent))
                        self._deliver([change])
                        continue
            if lapse_due(intent, now, timedelta(seconds=self.settings.lapse_grace_s)):
                reason = "never seen on the market before its expiry"
                change = await self.tracker.set_state(intent, IntentState.LAPSED, now, reason)
                log.warning("order.lapsed", **describe(intent))
                self._deliver([change])

    async def _list_orders(self) -> list[model.Order] | None:
        """The market's list of our orders, or None where it has none (the real market)."""
        if self._listing is False or self.broker is None:
            return None
        try:
            listed = await self.broker.list_orders()
        except MarketError as exc:
            if exc.status in (404, 405):
                self._listing = False
                log.info("reconcile.listing_unavailable", status=exc.status)
            else:
                log.info("reconcile.listing_failed", reason=str(exc))
            return None
        self._listing = True
        return listed
