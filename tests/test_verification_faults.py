"""The verifier against the in-process sandbox with faults, through the real engine and client.

- With 10% of API calls answered 5xx and 50 ms added to each, three sells in three windows (their
  baselines supplied by the verifier), each bought by bob, are all delivered, verified and settled:
  the sandbox (the referee) counts exactly one accepted metering per contract's sell order, no
  refused resend (a resend that differed would be answered 409), and every outbox row is acked
  with no `verification.failed`.
- A 409 saying the metering was already received (here: the seller's own earlier, different
  submission) counts as done: the outbox row is acked, the market's words kept, and logged.
- The outbox survives a restart: metering enqueued while every call fails is sent, exactly once,
  by the next run on the same store.

The helpers of tests/test_verification_sandbox.py are reused: its `verifying` runs the strategy
class named `SellOnce` in that module, so these tests put their own strategy in its place
(monkeypatch) rather than copy the helper.

Bob's own order submissions are not idempotent: one whose answer is a 5xx raises `OutcomeUnknown`.
Bob then reconciles with the sandbox's own book (`market_orders`) and places again only when the
order is not there; faults stay on throughout.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio
from structlog.testing import capture_logs

from flexbot import model, wire
from flexbot.engine.orders import Intent
from flexbot.market.errors import OutcomeUnknown
from flexbot.sandbox.lifecycle import window_energy_kwh
from flexbot.sandbox.market import MarketSettings
from flexbot.store import OutboxRow, Store
from flexbot.strategy import Context, OwnOrder, Strategy, Window, flat_baseline
from tests import test_verification_sandbox as vs
from tests.conftest import MARKET_START, USERS, Sandbox
from tests.engine_harness import BOUND_S, Harness, Trader, at, market_orders, trader, until
from tests.test_verification_sandbox import SellParams, Site, verifying

pytestmark = pytest.mark.anyio

ROUTE = "POST /api/v1/verification/metering"  # baselines and metering both go there
SERVER_ERRORS = {500, 502, 503}
SETTLED = model.ContractStatus.SETTLEMENT_COMPLETED_SUCCESS
FAULTS = {"rest_error_rate": 0.1, "rest_latency_ms": 50}


@pytest.fixture
def market_settings() -> MarketSettings:
    # No rate limit: the manual wall clock never refills the buckets on its own.
    return MarketSettings(users=USERS, seed=7, rate_limit=None)


class SellEachWindow(Strategy[SellParams]):
    """Sells once in each of the first `windows` delivery windows after the market's start, without
    a baseline (the verifier supplies it). A sell the market never got (its submission answered 5xx,
    then found absent by reconciliation: rejected) is placed again. A window less than two minutes
    away is let go, so a restarted run leaves the past ones alone."""

    Params = SellParams
    windows: ClassVar[int] = 3

    async def on_start(self, ctx: Context) -> None:
        await self._sell(ctx)

    async def on_order(self, ctx: Context, order: OwnOrder) -> None:
        await self._sell(ctx)

    async def _sell(self, ctx: Context) -> None:
        for window in Window.upcoming(MARKET_START, self.windows):
            if window.start - ctx.now < timedelta(minutes=2):
                continue
            position = ctx.position(window)
            if position.sold_w == 0 and position.open_sell_w == 0:
                p = self.params
                await ctx.place(model.Side.SELL, window, power_w=p.power_w, price=p.price)


class SellFirstWindow(SellEachWindow):
    windows = 1


# --- helpers --------------------------------------------------------------------------------------


def sells(h: Harness) -> list[Intent]:
    """The sells the market has (an intent lost to a 5xx and rejected has no order id)."""
    return [i for i in h.tracker if i.request.side is model.Side.SELL and i.order_id is not None]


def in_book(h: Harness, count: int) -> bool:
    placed = sells(h)
    return len(placed) == count and all(
        i.order is not None and i.order.status == "matching_active" for i in placed
    )


def contracted(h: Harness) -> bool:
    return all(i.order is not None and len(i.order.contracts) == 1 for i in sells(h))


def bob_has(sandbox: Sandbox, window: Window) -> bool:
    return any(
        wire.parse_datetime(o["delivery_start"]) == window.start
        for o in market_orders(sandbox, "bob")
    )


async def buy_once(bob: Trader, sandbox: Sandbox, window: Window) -> None:
    """Bob buys in `window`, once. A lost answer is reconciled with the sandbox's own book first."""
    for _ in range(10):
        try:
            await bob.place(model.Side.BUY, 3000, 0.25, window)
        except OutcomeUnknown:
            if not bob_has(sandbox, window):
                continue  # the 5xx came before the market took it: placing again is safe
        return
    raise AssertionError(f"bob could not buy in {window} in 10 tries")


async def step_until(
    site: Site, done: Callable[[], bool], steps: int = 120, *, h: Harness | None = None
) -> bool:
    """Move market time on a minute at a time until `done()`; False if it never was.

    With `h`, market time waits while a submission is pending in its outbox: the client's retries
    after a 5xx wait real seconds, and at a market minute per step of ~30 ms, one second of them
    would be half an hour of market time (the metering deadline is an hour). In production market
    time runs at wall speed, so the retries take no market time to speak of."""
    for _ in range(steps):
        if done():
            return True
        if h is not None:
            await drained(h)
        await site.step(60)
    with trio.move_on_after(2):
        await until(done)
    return done()


async def drained(h: Harness) -> None:
    """Wait (bounded) until nothing is pending in the outbox."""
    assert h.store is not None
    with trio.fail_after(BOUND_S):
        while (await h.store.run(h.store.sync.outbox_backlog))[0]:  # noqa: ASYNC110 - no event
            await trio.sleep(0.02)


def contracts_report(sandbox: Sandbox) -> list[tuple[str, str, str | None]]:
    """(sell order id, status, verification reason) of each contract: for failure messages."""
    return [
        (
            c.sell_order_id,
            str(c.status),
            c.verification_result.reason if c.verification_result else None,
        )
        for c in sandbox.market.matcher.contracts.values()
    ]


async def outbox(h: Harness) -> list[OutboxRow]:
    assert h.store is not None
    return await h.store.run(h.store.sync.outbox)


def answered(sandbox: Sandbox, route: str = ROUTE) -> Counter[int]:
    """How the sandbox answered `route`, by status (its own request log)."""
    return Counter({status: n for (r, status), n in sandbox.market.requests.items() if r == route})


def verifier_events(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """What the verifier said: for failure messages."""
    kinds = {"verification", "metering", "baseline", "meter", "settlement"}
    return [e for e in logs if e["event"].split(".")[0] in kinds]


def judged_metering(sandbox: Sandbox, order_id: str) -> model.EnergyAmount | None:
    """The metering energy the market's verification of `order_id`'s contract used."""
    (contract,) = [
        c for c in sandbox.market.matcher.contracts.values() if c.sell_order_id == order_id
    ]
    verification = contract.verification_result
    return verification.result.metering if verification and verification.result else None


def metering_of(row: OutboxRow, sandbox: Sandbox) -> model.EnergyAmount:
    """The energy of a stored metering body over its contract's window, as the market sums it."""
    (contract,) = [
        c for c in sandbox.market.matcher.contracts.values() if c.sell_order_id == row.order_id
    ]
    reading = wire.decode(row.body, model.MeterReading)
    return model.EnergyAmount(
        window_energy_kwh(reading, contract.delivery_start, contract.delivery_end)
    )


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


# --- 1. faults: every contract gets exactly one metering ------------------------------------------


async def test_each_contract_gets_exactly_one_metering_through_5xx_and_latency(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vs, "SellOnce", SellEachWindow)
    sandbox.market.faults.update(FAULTS)
    with capture_logs() as logs:
        async with trader(sandbox) as bob, verifying(sandbox, tmp_path) as (h, verifier, site):
            # Three sells, each in the book once the verifier's baseline is in.
            await until(lambda: in_book(h, 3))
            for sell in sells(h):
                await buy_once(bob, sandbox, Window.of(sell.request))
            await until(lambda: contracted(h))

            def all_settled() -> bool:
                statuses = [c.status for c in sandbox.market.matcher.contracts.values()]
                return statuses == [SETTLED] * 3

            # Delivery, the settling delay, metering, verification, settlement.
            settled = await step_until(site, all_settled, h=h)
            assert settled, (contracts_report(sandbox), verifier_events(logs))
            await until(lambda: verifier.sent == 6)  # the acks are recorded after the answers
            rows = await outbox(h)
            sell_ids = {i.order_id for i in sells(h)}

    market = sandbox.market
    contracts = list(market.matcher.contracts.values())
    assert len(contracts) == 3
    assert {c.sell_order_id for c in contracts} == sell_ids
    # The referee: one accepted baseline and one accepted metering per sell, nothing else.
    assert {oid: dict(n) for oid, n in market.verifications.items()} == {
        oid: {"baseline": 1, "metering": 1} for oid in sell_ids
    }
    # Resends after a 5xx were identical: a different one would have been answered 409 (or 422).
    # (A 401 is an access token that expired as market time ran: renewed, then the same call.)
    statuses = answered(sandbox)
    assert set(statuses) <= {200, 401, *SERVER_ERRORS}, statuses
    duplicates = sum(sum(n.values()) for n in market.duplicates.values())
    assert statuses[200] == 6 + duplicates
    # The faults did fire (the dice are seeded; which call they hit depends on timing).
    assert market.faults.injected["rest_5xx"] > 0
    assert market.faults.injected["rest_latency"] > 0
    # The outbox agrees: every submission acked, none failed.
    assert sorted((r.order_id, r.measurement_type, r.state) for r in rows) == sorted(
        (oid, kind, "acked") for oid in sell_ids for kind in ("baseline", "metering")
    )
    assert not events(logs, "verification.failed")
    # What the market judged is what the outbox holds.
    for row in rows:
        if row.measurement_type == "metering":
            assert judged_metering(sandbox, row.order_id) == metering_of(row, sandbox)
    assert len(market_orders(sandbox, "bob")) == 3  # bob never placed twice


# --- 2. a 409 "already received" counts as done --------------------------------------------------


async def test_a_409_already_received_counts_as_done_and_is_logged(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vs, "SellOnce", SellFirstWindow)
    with capture_logs() as logs:
        async with trader(sandbox) as bob, verifying(sandbox, tmp_path) as (h, verifier, site):
            await until(lambda: in_book(h, 1))
            (sell,) = sells(h)
            order_id = sell.order_id
            assert order_id is not None
            window = Window.of(sell.request)
            await buy_once(bob, sandbox, window)
            await until(lambda: contracted(h))
            # Market time reaches delivery end; the verifier waits `settle_delay_s` more.
            assert await step_until(site, lambda: at(sandbox) >= window.end)
            assert [r.measurement_type for r in await outbox(h)] == ["baseline"]
            # The seller's own submission, by hand, with other content, goes first.
            theirs = flat_baseline(window, Decimal(1234), created_at=at(sandbox))
            await h.market.client.submit_metering(order_id, theirs)

            def answered_metering() -> bool:
                return any(
                    e["event"]
                    in (
                        "verification.submitted",
                        "verification.already_received",
                        "verification.failed",
                    )
                    and e.get("measurement_type") == "metering"
                    for e in logs
                )

            assert await step_until(site, answered_metering, steps=5), logs[-20:]
            rows = {r.measurement_type: r for r in await outbox(h)}

    metering = rows["metering"]
    assert metering.state == "acked"
    assert metering.last_error is not None
    assert "already received" in metering.last_error
    assert metering.attempts == 1
    # The market holds the earlier submission, judged that one, and answered the verifier's with
    # one 409: "acked" here means the market has *a* metering, not the verifier's.
    assert dict(sandbox.market.verifications[order_id]) == {"baseline": 1, "metering": 1}
    assert judged_metering(sandbox, order_id) == model.EnergyAmount(
        window_energy_kwh(theirs, window.start, window.end)
    )
    assert judged_metering(sandbox, order_id) != metering_of(metering, sandbox)
    assert answered(sandbox)[409] == 1
    assert verifier.sent == 2
    # Done, but worth a look: a warning with the market's words; not a failure.
    (submitted,) = [
        e
        for e in events(logs, "verification.already_received")
        if e["measurement_type"] == "metering"
    ]
    assert submitted["order_id"] == order_id
    assert submitted["log_level"] == "warning"
    assert "already received" in submitted["reason"]
    assert not events(logs, "verification.failed")


# --- 3. the outbox resumes after a restart -------------------------------------------------------


async def test_the_outbox_resumes_after_a_restart_and_sends_exactly_once(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vs, "SellOnce", SellFirstWindow)
    async with trader(sandbox) as bob:
        async with verifying(sandbox, tmp_path) as (h, verifier, site):
            await until(lambda: in_book(h, 1))
            (sell,) = sells(h)
            order_id = sell.order_id
            assert order_id is not None
            window = Window.of(sell.request)
            await buy_once(bob, sandbox, window)
            await until(lambda: contracted(h))
            assert await step_until(site, lambda: at(sandbox) >= window.end)
            # From now on every API call is answered 5xx; the metering comes due.
            sandbox.market.faults.update({"rest_error_rate": 1.0})
            await site.step(60)
            await until(lambda: sum(answered(sandbox)[s] for s in SERVER_ERRORS) >= 1)
            assert verifier.sent == 1  # the baseline only
        # The run ended while the client was still retrying: the market has no metering.
        assert sandbox.market.verifications[order_id]["metering"] == 0
        store = Store.open(tmp_path / "flexbot.db")
        try:
            (held,) = [r for r in store.outbox() if r.measurement_type == "metering"]
        finally:
            store.close()
        assert held.state == "pending"

        sandbox.market.faults.update({"rest_error_rate": 0.0})
        async with verifying(sandbox, tmp_path) as (h, verifier, site):
            await until(lambda: verifier.sent == 1)
            (sent,) = [r for r in await outbox(h) if r.measurement_type == "metering"]
            await trio.sleep(0.3)  # several scan intervals: nothing is sent again
            assert verifier.sent == 1  # no second baseline either
            rows = await outbox(h)
    assert len(market_orders(sandbox, "alice")) == 1  # the restarted run placed nothing new
    assert sent.state == "acked"
    assert sent.body == held.body  # the stored body, not a rebuilt one
    assert judged_metering(sandbox, order_id) == metering_of(held, sandbox)
    assert {(r.measurement_type, r.state) for r in rows} == {
        ("baseline", "acked"),
        ("metering", "acked"),
    }
    assert dict(sandbox.market.verifications[order_id]) == {"baseline": 1, "metering": 1}
    assert not sandbox.market.duplicates
    assert answered(sandbox)[200] == 2
