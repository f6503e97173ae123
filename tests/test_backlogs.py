"""Every backlog bounded and visible: the `backlog_full` alarm and `backlog.dropped` lines, the
`flexbot_backlog_*` metrics, the alarms' metering check that reads only what the tracker holds,
and the verifier's memory of outbox keys let go with the orders it was about.

The running parts are stood in for by plain namespaces holding the real buffers, the real tracker
and a real SQLite store: the checks read nothing else of them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import trio
from structlog.testing import capture_logs

from flexbot import model
from flexbot.alarms import AlarmBounds, AlarmMemory, backlog_alarms, metering_alarms
from flexbot.buffers import BoundedSet, DropOldest
from flexbot.engine.inbox import Inbox
from flexbot.engine.orders import Intent, OrderTracker
from flexbot.market import MarketClient
from flexbot.metrics import ALARMS, backlog_metrics
from flexbot.parts import Parts
from flexbot.store import AsyncStore, OutboxRow, Store
from flexbot.verification import VerificationSettings, Verifier

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def parts_of(**fields: Any) -> Parts:
    return cast(Parts, SimpleNamespace(**fields))


def buffers() -> tuple[Parts, DropOldest[int], Inbox, BoundedSet[tuple[str, str]]]:
    ticker: DropOldest[int] = DropOldest(2)
    inbox = Inbox(2, order_capacity=3)
    enqueued: BoundedSet[tuple[str, str]] = BoundedSet(4)
    parts = parts_of(
        feed=SimpleNamespace(ticker=ticker),
        engine=SimpleNamespace(runners={"seller": SimpleNamespace(inbox=inbox)}),
        verifier=SimpleNamespace(enqueued=enqueued),
    )
    return parts, ticker, inbox, enqueued


def test_a_backlog_at_its_capacity_or_dropping_raises_backlog_full_and_logs_drops_per_check() -> (
    None
):
    parts, ticker, inbox, _ = buffers()
    memory = AlarmMemory()
    assert backlog_alarms(parts, memory) == {}

    ticker.put(1)
    ticker.put(2)  # full, nothing lost yet
    with capture_logs() as logs:
        found = backlog_alarms(parts, memory)
    assert found == {
        "backlog:feed_ticker:": {
            "alarm": "backlog_full",
            "backlog": "feed_ticker",
            "size": 2,
            "capacity": 2,
            "dropped": 0,
        }
    }
    assert logs == []

    for fact in range(5):  # three of the strategy's facts lost, and one ticker item
        inbox.put_fact(cast(model.Ticker, fact))
    ticker.put(3)
    with capture_logs() as logs:
        found = backlog_alarms(parts, memory)
    assert set(found) == {"backlog:feed_ticker:", "backlog:inbox_facts:seller"}
    assert found["backlog:inbox_facts:seller"]["strategy"] == "seller"
    assert [(e["event"], e["backlog"], e["dropped"], e["total"]) for e in logs] == [
        ("backlog.dropped", "feed_ticker", 1, 1),
        ("backlog.dropped", "inbox_facts", 3, 3),
    ]

    ticker.take_nowait()  # below capacity, and nothing dropped since the last check
    inbox.facts.take_nowait()
    with capture_logs() as logs:
        assert backlog_alarms(parts, memory) == {}
    assert logs == []  # one line per check at most, and only for new drops


def test_the_metrics_show_each_backlogs_drops_size_and_capacity() -> None:
    parts, ticker, _, enqueued = buffers()
    for item in range(3):
        ticker.put(item)
    enqueued.add(("m-1", "baseline"))
    families = {family.name: family for family in backlog_metrics(parts)}
    samples = {
        (name, s.labels["backlog"], s.labels["strategy"]): s.value
        for name, family in families.items()
        for s in family.samples
    }
    assert samples[("flexbot_backlog_dropped", "feed_ticker", "")] == 1
    assert samples[("flexbot_backlog_size", "feed_ticker", "")] == 2
    assert samples[("flexbot_backlog_capacity", "inbox_orders", "seller")] == 3
    assert samples[("flexbot_backlog_capacity", "inbox_facts", "seller")] == 2
    assert samples[("flexbot_backlog_size", "verifier_enqueued", "")] == 1
    assert "backlog_full" in ALARMS


# --- the metering check reads what the tracker holds, not the outbox history ----------------------


def a_sell(end: datetime) -> model.OrderRequest:
    return model.OrderRequest(
        side=model.Side.SELL,
        power=Decimal(1000),
        price=Decimal("0.20"),
        delivery_start=end - timedelta(minutes=15),
        delivery_end=end,
        expiry_time=end - timedelta(minutes=16),
        location=model.Location(("site-1",), "DE"),
    )


async def sold(tracker: OrderTracker, i: int, end: datetime) -> Intent:
    """A sell of the tracker's with a contract, order id `m-<i>`."""
    request = a_sell(end)
    intent = await tracker.new_intent("seller", "0", request, NOW)
    contract = model.Contract(
        contract_id=f"c-{i}",
        buy_order_id="someone",
        sell_order_id=f"m-{i}",
        power=request.power,
        energy=Decimal(250),
        price=request.price,
        delivery_start=request.delivery_start,
        delivery_end=request.delivery_end,
        status=model.ContractStatus.CREATED,
    )
    order = model.Order(
        order_id=f"m-{i}",
        side=request.side,
        power=request.power,
        price=request.price,
        delivery_start=request.delivery_start,
        delivery_end=request.delivery_end,
        status=model.OrderStatus.FILLED,
        contracts=(contract,),
    )
    await tracker.placed(intent, order, NOW)
    return intent


def outbox_with_history(path: Path, acked: list[str], pending: list[str]) -> Store:
    store = Store.open(path)
    for order_id in acked + pending:
        store.enqueue(order_id, "metering", "{}", 0.0)
    for order_id in acked:
        store.settle(order_id, "metering", "acked", 1.0, None)
    return store


def spied(store: Store) -> list[str]:
    """The order ids the outbox is asked about, from here on."""
    asked: list[str] = []
    outbox: Callable[..., list[OutboxRow]] = store.outbox

    def spy(order_id: str | None = None) -> list[OutboxRow]:
        asked.append(order_id or "*")
        return outbox(order_id)

    store.outbox = spy  # type: ignore[method-assign]
    return asked


def test_the_metering_check_asks_only_about_overdue_orders_and_remembers_the_acked(
    tmp_path: Path,
) -> None:
    history = [f"old-{n}" for n in range(500)]  # acked long ago, no longer tracked
    store = outbox_with_history(tmp_path / "flexbot.db", [*history, "m-1"], ["m-2"])
    asked = spied(store)

    async def main() -> None:
        tracker = OrderTracker(None)
        past = NOW - timedelta(hours=3)
        for i in (1, 2):
            await sold(tracker, i, past)
        await sold(tracker, 3, NOW + timedelta(hours=1))  # not due yet
        parts = parts_of(
            tracker=tracker,
            clock=SimpleNamespace(now=lambda: NOW),
            verifier=SimpleNamespace(settings=VerificationSettings()),
            store=AsyncStore(store),
        )
        memory = AlarmMemory()
        found = await metering_alarms(parts, AlarmBounds(), memory)
        assert list(found) == ["metering:m-2"]
        assert sorted(asked) == ["m-1", "m-2"]
        assert list(memory.acked) == ["m-1"]
        asked.clear()
        assert list(await metering_alarms(parts, AlarmBounds(), memory)) == ["metering:m-2"]
        assert asked == ["m-2"]  # m-1's acknowledgement is final: not asked again

    trio.run(main)
    store.close()


# --- the verifier's memory ----------------------------------------------------------------------


def test_the_verifier_reads_the_keys_of_tracked_orders_only_and_lets_go_with_them(
    tmp_path: Path,
) -> None:
    history = [f"old-{n}" for n in range(300)]
    store = outbox_with_history(tmp_path / "flexbot.db", [*history, "m-1"], [])
    asked = spied(store)

    async def main() -> None:
        tracker = OrderTracker(None)
        await sold(tracker, 1, NOW - timedelta(hours=3))
        verifier = Verifier(
            VerificationSettings(interval_s=3600),
            tracker=tracker,
            store=AsyncStore(store),
            client=cast(MarketClient, None),  # nothing is due: nothing is sent
            clock=SimpleNamespace(now=lambda: NOW),
            meters=[],
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(verifier.run)
            assert asked == ["m-1"]  # not the outbox's whole history
            assert list(verifier.enqueued) == [("m-1", "metering")]
            verifier.enqueued.add(("m-gone", "baseline"))  # an order the tracker let go of
            await verifier.scan()
            assert list(verifier.enqueued) == [("m-1", "metering")]
            nursery.cancel_scope.cancel()
        assert verifier.enqueued.dropped == 0

    trio.run(main)
    store.close()
