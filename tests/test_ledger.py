"""Money and energy of contracts: kWh from power over the window (or the market's Wh), € = price ×
kWh, summed by strategy, side and standing without losing or doubling any; the metrics count
each settled contract's money once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flexbot import model
from flexbot.ledger import Ledger, Standing, amount_eur, energy_kwh, standing
from flexbot.trading import IntentState, OwnOrder

START = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)


def contract(
    contract_id: str = "c-1",
    power: int = 2000,
    price: str = "0.25",
    minutes: int = 15,
    status: str = "verification_completed_success",
    energy: int = 0,
) -> model.Contract:
    return model.Contract(
        contract_id=contract_id,
        buy_order_id="b",
        sell_order_id="s",
        power=Decimal(power),
        energy=Decimal(energy),
        price=Decimal(price),
        delivery_start=START,
        delivery_end=START + timedelta(minutes=minutes),
        status=status,
    )


def test_energy_is_power_over_the_window_unless_the_market_says_it_in_wh() -> None:
    assert energy_kwh(contract(power=2000, minutes=15)) == Decimal("0.5")
    assert energy_kwh(contract(power=2000, minutes=60)) == Decimal(2)
    assert energy_kwh(contract(power=2000, energy=450)) == Decimal("0.45")
    assert amount_eur(contract(power=2000, price="0.25")) == Decimal("0.125")


def test_where_a_contract_stands() -> None:
    assert standing(contract(status="settlement_completed_success")) is Standing.SETTLED
    assert standing(contract(status="verification_completed_failed")) is Standing.FAILED
    for status in ("verification_initiated", "settlement_initiated", "something_new"):
        assert standing(contract(status=status)) is Standing.PENDING


def test_the_table_says_each_strategys_money_and_the_net() -> None:
    ledger = Ledger.of(
        [
            ("seller", "sell", contract("a", 2000, "0.30", status="settlement_completed_success")),
            ("seller", "sell", contract("b", 1000, "0.30", status="verification_completed_failed")),
            ("seller", "sell", contract("b", 1000, "0.30")),  # the same contract again: once
            ("buyer", "buy", contract("c", 4000, "0.20")),
        ]
    )
    assert ledger.net_eur() == Decimal("0.15") - Decimal("0.20")
    lines = ledger.lines()
    assert lines[1].split() == ["buyer", "buy", "-", "1.000", "kWh", "€0.20", "-"]
    assert lines[2].split() == [
        "seller",
        "sell",
        "0.500",
        "kWh",
        "€0.15",
        "-",
        "0.250",
        "kWh",
        "€0.08",
    ]
    assert lines[-1].startswith("  net: €-0.05")
    assert Ledger().lines() == ["  no contracts"]


statuses = st.sampled_from(
    ["settlement_completed_success", "verification_completed_failed", "verification_initiated"]
)


@settings(max_examples=200, deadline=None)
@given(
    fills=st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.sampled_from(["buy", "sell"]),
            st.integers(1, 50_000),
            st.decimals("0.01", "2.00", places=2),
            st.sampled_from([15, 30, 60]),
            statuses,
        ),
        max_size=30,
    )
)
def test_nothing_is_lost_or_counted_twice(fills: list[tuple[Any, ...]]) -> None:
    made = [
        (strategy, side, contract(f"c-{i}", power, str(price), minutes, status))
        for i, (strategy, side, power, price, minutes, status) in enumerate(fills)
    ]
    ledger = Ledger.of([*made, *made])  # reports repeat: each contract counts once
    for side in ("buy", "sell"):
        mine = [c for _, s, c in made if s == side]
        whole = ledger.total(side)
        assert whole.contracts == len(mine)
        assert whole.energy_kwh == sum((energy_kwh(c) for c in mine), Decimal(0))
        assert whole.eur == sum((amount_eur(c) for c in mine), Decimal(0))
        parts = [ledger.total(side, which) for which in Standing]
        assert sum((p.eur for p in parts), Decimal(0)) == whole.eur
    by_day = sum((t.energy_kwh for t in ledger.days.values()), Decimal(0))
    assert by_day == ledger.total("buy").energy_kwh + ledger.total("sell").energy_kwh


def test_the_metrics_count_a_settled_contracts_money_once() -> None:
    from flexbot.engine.orders import Change
    from flexbot.metrics import Metrics

    metrics = Metrics()
    request = model.OrderRequest(
        side=model.Side.SELL,
        power=Decimal(2000),
        price=Decimal("0.3"),
        delivery_start=START,
        delivery_end=START + timedelta(minutes=15),
        expiry_time=START - timedelta(minutes=5),
        location=model.Location(location_id=("s",)),
    )
    own = OwnOrder("id", "seller", request, IntentState.DONE)
    settled = contract(power=2000, price="0.30", status="settlement_completed_success")
    for change in (Change(own, contract()), Change(own, settled), Change(own, settled)):
        metrics.observe_change(change)
    assert metrics.settled_eur == {("seller", "sell"): Decimal("0.15")}
