"""The life of a contract after the trade: verification, then settlement (spec §5, §7).

The rules are those of `flexbot/sandbox/lifecycle.py` (its docstring). Every test talks to an
in-process sandbox over real loopback HTTP; market time moves only with `sandbox.advance(seconds)`.
Contract statuses are read through REST (either party's order, `contracts`; the sell order's
`verification`), and the market's event hook (`SandboxMarket.subscribe`) shows that each status
change was announced exactly once, in the spec's order.

The numbers: market time starts at 10:00; the delivery window is 11:00-12:00; the sell offers
1000 W (1 kWh scheduled) at 0.30 €/kWh against a baseline of 0.5 kWh per quarter hour (2 kWh).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import attrs
import httpx
import pytest

from flexbot.sandbox.events import ContractChanged, Event
from flexbot.sandbox.lifecycle import LifecycleRules
from flexbot.sandbox.market import MarketSettings
from tests.conftest import MARKET_START, USERS, Sandbox
from tests.test_sandbox_conformance import get_order, submit

pytestmark = pytest.mark.anyio

START = "2026-11-23T11:00:00Z"
END = "2026-11-23T12:00:00Z"
EXPIRY = "2026-11-23T10:30:00Z"

METERING_DEADLINE_S = 3600
MIN_DELIVERED_PCT = 90
SETTLEMENT_DELAY_S = 300

BASELINE_KWH = 0.5  # per quarter hour: 2 kWh over the window
SELL_PRICE = 0.30  # the resting sell's price is the contract price

SUCCESS = [
    "created",
    "verification_initiated",
    "verification_completed_success",
    "settlement_initiated",
    "settlement_completed_success",
]
FAILURE = ["created", "verification_initiated", "verification_completed_failed"]

# Spec §9: the stale legacy baseline every official sell order carries.
LEGACY_BASELINE: dict[str, Any] = {
    "metering_id": "ce15bc33-2bda-4d26-8ddd-b958b22b569b",
    "created_at": "2019-08-24T14:15:00Z",
    "reading_start": "2019-08-24T14:15:00Z",
    "reading_end": "2019-08-24T14:30:00Z",
    "resolution": 1,
    "direction": "consumption",
    "quality": "estimated",
    "energy_product": "apparent",
    "unit_measured": "kWh",
    "data_points": [{"2019-08-24T14:15:00Z": 1}],
}


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def fmt(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


TO_END_S = (parse_ts(END) - MARKET_START).total_seconds()  # market start -> delivery end


@pytest.fixture
def market_settings() -> MarketSettings:
    """No rate limit (the manual wall never refills it) and tokens that outlive the hours the tests
    advance; the lifecycle rules spelled out, so the numbers below follow from this page."""
    return MarketSettings(
        users=USERS,
        seed=7,
        rate_limit=None,
        token_ttl_s=7 * 86400,
        refresh_ttl_s=14 * 86400,
        lifecycle=LifecycleRules(
            metering_deadline_s=METERING_DEADLINE_S,
            min_delivered_pct=Decimal(MIN_DELIVERED_PCT),
            settlement_delay_s=SETTLEMENT_DELAY_S,
        ),
    )


# --- helpers --------------------------------------------------------------------------------------


def reading(
    kwh: float | list[float],
    *,
    unit: str = "kWh",
    start: str = START,
    stamps: list[datetime] | None = None,
    metering_id: str = "meter-1",
) -> dict[str, Any]:
    """A `metering_data` object: one point per quarter hour of the window, stamped at its end."""
    t0 = parse_ts(start)
    values = kwh if isinstance(kwh, list) else [kwh] * 4
    if stamps is None:
        stamps = [t0 + timedelta(minutes=15 * (i + 1)) for i in range(len(values))]
    return {
        "metering_id": metering_id,
        "created_at": fmt(t0),
        "reading_start": fmt(t0),
        "reading_end": fmt(t0 + timedelta(hours=1)),
        "resolution": 900,
        "unit_measured": unit,
        "data_points": [
            {"timestamp": fmt(t), "value": v} for t, v in zip(stamps, values, strict=True)
        ],
    }


def order_body(side: str, power: float, price: float, **extra: Any) -> dict[str, Any]:
    return {
        "side": side,
        "power": power,
        "price": price,
        "delivery_start": START,
        "delivery_end": END,
        "expiry_time": EXPIRY,
        "location": {"location_id": ["loc-1"], "country_code": "DE"},
        **extra,
    }


async def bearer(http: httpx.AsyncClient, user: str) -> dict[str, str]:
    form = (
        f"client_id=glocalflexmarket_public_api&grant_type=password"
        f"&username={user}&password={USERS[user]}"
    )
    r = await http.post(
        "/auth/oauth/v2/token",
        content=form.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@attrs.define
class Trade:
    """Alice's sell, taken whole by Bob's buy: one contract."""

    http: httpx.AsyncClient
    alice: dict[str, str]
    bob: dict[str, str]
    sell_id: str
    buy_id: str
    contract_id: str

    async def send(self, data: dict[str, Any], kind: str = "metering") -> httpx.Response:
        body = {"order_id": self.sell_id, "measurement_type": kind, "metering_data": data}
        return await self.http.post(f"/api/v1/verification/{kind}", json=body, headers=self.alice)

    async def contract(self) -> dict[str, Any]:
        """The contract as both parties read it: identical on the sell and on the buy, and the
        sell order's `verification` mirrors the contract's."""
        sell = await get_order(self.http, self.alice, self.sell_id)
        buy = await get_order(self.http, self.bob, self.buy_id)
        contract: dict[str, Any]
        (contract,) = sell["contracts"]
        assert contract["contract_id"] == self.contract_id
        assert [c for c in buy["contracts"] if c["contract_id"] == self.contract_id] == [contract]
        assert sell["verification"] == contract["verification_result"]
        return contract

    async def status(self) -> str:
        status: str = (await self.contract())["status"]
        return status


async def trade(
    http: httpx.AsyncClient,
    *,
    baseline: dict[str, Any] | None = None,
    sell_power: float = 1000.0,
    buy_power: float = 1000.0,
) -> Trade:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    base = reading(BASELINE_KWH) if baseline is None else baseline
    sell = await submit(http, alice, order_body("sell", sell_power, SELL_PRICE, baseline=base))
    assert sell["status"] == "matching_active"
    buy = await submit(http, bob, order_body("buy", buy_power, 0.40))
    (contract,) = buy["contracts"]
    assert contract["sell_order_id"] == sell["order_id"]
    assert contract["status"] == "created"
    assert contract["verification_result"] is None
    assert contract["settlement"] is None
    done = Trade(http, alice, bob, sell["order_id"], buy["order_id"], contract["contract_id"])
    assert (await done.contract()) == contract
    return done


Recorder = Callable[[str], list[str]]


@pytest.fixture
def contract_events(sandbox: Sandbox) -> Recorder:
    """The statuses the market announced for one contract (ContractChanged events), in order."""
    seen: list[ContractChanged] = []

    def on_events(events: list[Event]) -> None:
        seen.extend(e for e in events if isinstance(e, ContractChanged))

    sandbox.market.subscribe(on_events)

    def statuses(contract_id: str) -> list[str]:
        mine = [e for e in seen if e.contract.contract_id == contract_id]
        assert all((e.buyer, e.seller) == ("bob", "alice") for e in mine)
        return [str(e.contract.status) for e in mine]

    return statuses


def assert_failed(contract: dict[str, Any], *needles: str) -> str:
    assert contract["status"] == "verification_completed_failed"
    verification = contract["verification_result"]
    assert verification["status"] == "completed_failed"
    reason: str = verification["reason"]
    assert isinstance(reason, str)
    for needle in needles:
        assert needle in reason.lower(), reason
    assert contract["settlement"] is None
    return reason


# --- the whole way to settlement ------------------------------------------------------------------


async def test_a_metered_reduction_is_verified_and_settled_in_the_specs_order(
    http: httpx.AsyncClient, sandbox: Sandbox, contract_events: Recorder
) -> None:
    deal = await trade(http)
    good = reading(0.26)  # 1.04 kWh against a baseline of 2 kWh: 0.96 kWh shed

    # During delivery nothing moves, and metering is too early.
    sandbox.advance(TO_END_S - 1)
    assert await deal.status() == "created"
    r = await deal.send(good)
    assert r.status_code == 422, r.text
    assert [p["loc"] for p in r.json()["detail"]] == [["body", "measurement_type"]]

    # At the delivery end verification starts and waits for the metering.
    sandbox.advance(1)
    contract = await deal.contract()
    assert contract["status"] == "verification_initiated"
    assert contract["verification_result"]["status"] == "initiated"
    assert contract["verification_result"]["result"] is None
    assert contract["settlement"] is None
    verification_id = contract["verification_result"]["verification_id"]

    r = await deal.send(good)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "order_id": deal.sell_id,
        "measurement_type": "metering",
        "status": "received",
    }

    # Verified at once; settlement starts at once.
    contract = await deal.contract()
    assert contract["status"] == "settlement_initiated"
    verification = contract["verification_result"]
    assert verification["verification_id"] == verification_id
    assert verification["status"] == "completed_success"
    assert verification["reason"] is None
    result = dict(verification["result"])
    assert parse_ts(result.pop("created_at")) == parse_ts(END)
    assert result == {
        "baseline": {"energy": 2.0},
        "metering": {"energy": 1.04},
        "scheduled": 1.0,
        "delivered": 0.96,
        "delivered_percentage": 96.0,
    }
    settlement = contract["settlement"]
    assert settlement["status"] == "initiated"
    assert settlement["amount_eur"] == 0.288  # 0.30 €/kWh x 0.96 kWh

    sandbox.advance(SETTLEMENT_DELAY_S - 1)
    assert await deal.status() == "settlement_initiated"
    sandbox.advance(1)
    contract = await deal.contract()
    assert contract["status"] == "settlement_completed_success"
    assert contract["settlement"]["status"] == "completed_success"
    assert contract["settlement"]["settlement_id"] == settlement["settlement_id"]
    assert contract["settlement"]["amount_eur"] == 0.288
    assert contract["verification_result"] == verification

    # Nothing happens after the end, not even at the metering deadline.
    sandbox.advance(2 * METERING_DEADLINE_S)
    assert await deal.contract() == contract
    assert contract_events(deal.contract_id) == SUCCESS
    stats = (await http.get("/sandbox/stats")).json()
    assert stats["contracts_by_status"] == {"settlement_completed_success": 1}
    assert stats["verification_submissions"] == {deal.sell_id: {"metering": 1}}


@pytest.mark.parametrize(
    ("metered_kwh", "delivered", "percentage", "amount"),
    [
        (0.275, 0.9, 90.0, 0.27),  # exactly the threshold passes
        (0.0, 2.0, 200.0, 0.30),  # more than promised: paid for the scheduled 1 kWh only
        (0.75, 1.0, 100.0, 0.30),  # consumption up by 1 kWh: |B - M| counts (spec §7)
    ],
    ids=["at-threshold", "over-delivery-capped", "increase-counts"],
)
async def test_payout_is_price_times_the_delivered_energy_capped_at_the_scheduled(
    http: httpx.AsyncClient,
    sandbox: Sandbox,
    contract_events: Recorder,
    metered_kwh: float,
    delivered: float,
    percentage: float,
    amount: float,
) -> None:
    deal = await trade(http)
    sandbox.advance(TO_END_S)
    assert (await deal.send(reading(metered_kwh))).status_code == 200

    sandbox.advance(SETTLEMENT_DELAY_S)
    contract = await deal.contract()
    assert contract["status"] == "settlement_completed_success"
    result = contract["verification_result"]["result"]
    assert result["metering"] == {"energy": 4 * metered_kwh}
    assert result["delivered"] == delivered
    assert result["delivered_percentage"] == percentage
    assert contract["settlement"]["amount_eur"] == amount
    assert contract_events(deal.contract_id) == SUCCESS


@pytest.mark.parametrize(
    ("baseline_unit", "metering_unit"),
    [("kWh", "Wh"), ("Wh", "kWh"), ("Wh", "Wh")],
)
async def test_readings_in_wh_are_converted_to_kwh(
    http: httpx.AsyncClient,
    sandbox: Sandbox,
    contract_events: Recorder,
    baseline_unit: str,
    metering_unit: str,
) -> None:
    in_unit = {"kWh": 1.0, "Wh": 1000.0}
    baseline = reading(BASELINE_KWH * in_unit[baseline_unit], unit=baseline_unit)
    deal = await trade(http, baseline=baseline)
    sandbox.advance(TO_END_S)

    assert (await deal.send(reading(0.26 * in_unit[metering_unit], unit=metering_unit))).is_success

    contract = await deal.contract()
    assert contract["status"] == "settlement_initiated"
    result = contract["verification_result"]["result"]
    assert result["baseline"] == {"energy": 2.0}
    assert result["metering"] == {"energy": 1.04}
    assert result["delivered"] == 0.96
    assert result["delivered_percentage"] == 96.0
    assert contract["settlement"]["amount_eur"] == 0.288


# --- verification failures ------------------------------------------------------------------------


async def test_delivering_below_the_threshold_fails_verification_with_a_reason(
    http: httpx.AsyncClient, sandbox: Sandbox, contract_events: Recorder
) -> None:
    deal = await trade(http)
    sandbox.advance(TO_END_S)

    assert (await deal.send(reading(0.3))).status_code == 200  # 1.2 kWh: 0.8 kWh shed

    contract = await deal.contract()
    reason = assert_failed(contract, "80", str(MIN_DELIVERED_PCT))
    # The numbers that decided it are reported with the failure.
    result = contract["verification_result"]["result"]
    assert result["baseline"] == {"energy": 2.0}
    assert result["metering"] == {"energy": 1.2}
    assert result["scheduled"] == 1.0
    assert result["delivered"] == 0.8
    assert result["delivered_percentage"] == 80.0
    # A failure is final: no settlement follows, ever.
    sandbox.advance(SETTLEMENT_DELAY_S + 2 * METERING_DEADLINE_S)
    assert await deal.contract() == contract
    assert contract["verification_result"]["reason"] == reason
    assert contract_events(deal.contract_id) == FAILURE


async def test_no_metering_by_the_deadline_fails_verification(
    http: httpx.AsyncClient, sandbox: Sandbox, contract_events: Recorder
) -> None:
    deal = await trade(http)
    sandbox.advance(TO_END_S)
    assert await deal.status() == "verification_initiated"

    sandbox.advance(METERING_DEADLINE_S)
    # The deadline is inclusive: metering could still come at this very instant.
    assert await deal.status() == "verification_initiated"
    sandbox.advance(1)

    contract = await deal.contract()
    assert_failed(contract, "metering")
    assert contract["verification_result"]["result"]["delivered"] is None
    # Too late now, however good the metering.
    sandbox.advance(1)
    r = await deal.send(reading(0.0))
    assert r.status_code == 409, r.text
    assert isinstance(r.json()["detail"], str)
    assert await deal.contract() == contract
    assert contract_events(deal.contract_id) == FAILURE


async def test_one_jump_past_the_deadline_still_announces_every_step_once(
    http: httpx.AsyncClient, sandbox: Sandbox, contract_events: Recorder
) -> None:
    deal = await trade(http)

    sandbox.advance(TO_END_S + METERING_DEADLINE_S + 3600)

    assert_failed(await deal.contract(), "metering")
    assert contract_events(deal.contract_id) == FAILURE


async def test_the_legacy_baseline_is_rejected_at_verification(
    http: httpx.AsyncClient, sandbox: Sandbox, contract_events: Recorder
) -> None:
    # Spec §9: the official client's sell carries a 2019 baseline; it is accepted and matches...
    deal = await trade(http, baseline=LEGACY_BASELINE)
    sandbox.advance(TO_END_S)

    # ... and verification, not the submission, judges it, however good the metering.
    assert (await deal.send(reading(0.0))).status_code == 200

    contract = await deal.contract()
    assert_failed(contract, "baseline")
    assert contract_events(deal.contract_id) == FAILURE


def _quarters(*minutes: int) -> list[datetime]:
    return [parse_ts(START) + timedelta(minutes=m) for m in minutes]


@pytest.mark.parametrize(
    "metering",
    [
        reading([0.2, 0.2, 0.2]),
        reading(0.2, start="2026-11-22T11:00:00Z"),
        reading(0.2, stamps=_quarters(15, 30, 45, 75)),
        reading(0.2) | {"resolution": 60},
    ],
    ids=["three-quarters-only", "the-day-before", "last-point-after-the-end", "resolution-60"],
)
async def test_metering_that_does_not_cover_the_window_fails_verification(
    http: httpx.AsyncClient, sandbox: Sandbox, contract_events: Recorder, metering: dict[str, Any]
) -> None:
    deal = await trade(http)
    sandbox.advance(TO_END_S)

    assert (await deal.send(metering)).status_code == 200  # the submission checks types only

    assert_failed(await deal.contract(), "metering", "cover")
    assert contract_events(deal.contract_id) == FAILURE


# --- what metering the market takes, and when -----------------------------------------------------


async def test_identical_metering_is_a_counted_duplicate_and_different_metering_is_409(
    http: httpx.AsyncClient, sandbox: Sandbox, contract_events: Recorder
) -> None:
    deal = await trade(http)
    sandbox.advance(TO_END_S)
    first = reading(0.26)
    assert (await deal.send(first)).status_code == 200
    verified = await deal.contract()

    r = await deal.send(first)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "received"
    r = await deal.send(reading(0.0, metering_id="meter-2"))
    assert r.status_code == 409, r.text
    assert isinstance(r.json()["detail"], str)

    # Verified once, on the first metering.
    assert await deal.contract() == verified
    sandbox.advance(SETTLEMENT_DELAY_S)
    assert (await deal.send(first)).status_code == 200  # still a duplicate after settlement
    assert (await deal.contract())["settlement"]["amount_eur"] == 0.288
    stats = (await http.get("/sandbox/stats")).json()
    assert stats["verification_submissions"] == {deal.sell_id: {"metering": 1}}
    assert stats["verification_duplicates"] == {deal.sell_id: {"metering": 2}}
    assert stats["requests"]["POST /api/v1/verification/metering"] == {"200": 3, "409": 1}
    assert contract_events(deal.contract_id) == SUCCESS


@pytest.mark.parametrize(
    "after_start_s",
    [-1800, 0, 1800, 3599],
    ids=["before-delivery", "at-delivery-start", "mid-delivery", "one-second-before-end"],
)
async def test_metering_before_the_delivery_end_is_422_and_changes_nothing(
    http: httpx.AsyncClient,
    sandbox: Sandbox,
    contract_events: Recorder,
    after_start_s: int,
) -> None:
    deal = await trade(http)
    sandbox.advance((parse_ts(START) - MARKET_START).total_seconds() + after_start_s)

    r = await deal.send(reading(0.26))

    assert r.status_code == 422, r.text
    (problem,) = r.json()["detail"]
    assert problem["loc"] == ["body", "measurement_type"]
    assert "delivery end" in problem["msg"]
    stats = (await http.get("/sandbox/stats")).json()
    assert stats["verification_submissions"] == {}
    assert stats["verification_duplicates"] == {}
    # The refused metering was not kept: the contract waits for metering and then goes missing.
    sandbox.advance(TO_END_S + METERING_DEADLINE_S)
    assert_failed(await deal.contract(), "metering")
    assert contract_events(deal.contract_id) == FAILURE


@pytest.mark.parametrize(
    ("after_end_s", "status", "final"),
    [
        (0, 200, "settlement_initiated"),
        (METERING_DEADLINE_S - 1, 200, "settlement_initiated"),
        (METERING_DEADLINE_S + 1, 409, "verification_completed_failed"),
    ],
    ids=["at-delivery-end", "last-second", "after-deadline"],
)
async def test_metering_is_taken_from_delivery_end_until_the_deadline(
    http: httpx.AsyncClient,
    sandbox: Sandbox,
    after_end_s: int,
    status: int,
    final: str,
) -> None:
    deal = await trade(http)
    sandbox.advance(TO_END_S + after_end_s)

    r = await deal.send(reading(0.26))

    assert r.status_code == status, r.text
    assert await deal.status() == final


async def test_metering_for_a_sell_without_a_contract_is_409(
    http: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    alice = await bearer(http, "alice")
    unmatched = await submit(http, alice, order_body("sell", 1000.0, 0.30, baseline=reading(0.5)))
    waiting = await submit(http, alice, order_body("sell", 1000.0, 0.30))
    assert waiting["status"] == "awaiting_baseline_data"
    sandbox.advance(TO_END_S)

    for order in (unmatched, waiting):
        body = {
            "order_id": order["order_id"],
            "measurement_type": "metering",
            "metering_data": reading(0.26),
        }
        r = await http.post("/api/v1/verification/metering", json=body, headers=alice)
        assert r.status_code == 409, r.text
        assert isinstance(r.json()["detail"], str)
        assert (await get_order(http, alice, order["order_id"]))["verification"] is None
    stats = (await http.get("/sandbox/stats")).json()
    assert stats["verification_submissions"] == {}
    assert stats["contracts_by_status"] == {}


async def test_the_current_baseline_again_is_a_duplicate_even_after_the_match(
    http: httpx.AsyncClient, sandbox: Sandbox, contract_events: Recorder
) -> None:
    deal = await trade(http)

    r = await deal.send(reading(BASELINE_KWH), kind="baseline")
    assert r.status_code == 200, r.text
    r = await deal.send(reading(0.6), kind="baseline")
    assert r.status_code == 409, r.text

    stats = (await http.get("/sandbox/stats")).json()
    assert stats["verification_submissions"] == {}
    assert stats["verification_duplicates"] == {deal.sell_id: {"baseline": 1}}
    # The verification uses the baseline the order matched with.
    sandbox.advance(TO_END_S)
    assert (await deal.send(reading(0.26))).status_code == 200
    assert (await deal.contract())["verification_result"]["result"]["baseline"] == {"energy": 2.0}
    assert contract_events(deal.contract_id) == SUCCESS[:-1]


# --- the buyer's view -----------------------------------------------------------------------------


async def test_a_buyer_with_two_contracts_sees_each_contracts_own_lifecycle(
    http: httpx.AsyncClient, sandbox: Sandbox, contract_events: Recorder
) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    good = await submit(http, alice, order_body("sell", 1000.0, 0.30, baseline=reading(0.5)))
    poor = await submit(http, alice, order_body("sell", 1000.0, 0.35, baseline=reading(0.5)))
    buy = await submit(http, bob, order_body("buy", 3000.0, 0.40))
    assert buy["status"] == "partial_filled"
    # The buyer cancels the rest; the contracts already made live on (spec §5).
    r = await http.delete(f"/api/v1/order/{buy['order_id']}", headers=bob)
    assert r.json()["status"] == "cancelled"
    by_sell = {c["sell_order_id"]: c["contract_id"] for c in buy["contracts"]}
    assert set(by_sell) == {good["order_id"], poor["order_id"]}

    async def statuses() -> dict[str, str]:
        """Each contract's status as the buyer reads it, checked against the seller's reading."""
        mine = await get_order(http, bob, buy["order_id"])
        seen = {c["sell_order_id"]: c for c in mine["contracts"]}
        for sell_id, contract in seen.items():
            (theirs,) = (await get_order(http, alice, sell_id))["contracts"]
            assert theirs == contract
        return {sell_id: c["status"] for sell_id, c in seen.items()}

    assert await statuses() == {good["order_id"]: "created", poor["order_id"]: "created"}
    sandbox.advance(TO_END_S)
    assert await statuses() == {
        good["order_id"]: "verification_initiated",
        poor["order_id"]: "verification_initiated",
    }
    for sell, kwh in ((good, 0.25), (poor, 0.45)):  # 1 kWh shed; 0.2 kWh shed
        body = {"order_id": sell["order_id"], "measurement_type": "metering"}
        r = await http.post(
            "/api/v1/verification/metering",
            json=body | {"metering_data": reading(kwh)},
            headers=alice,
        )
        assert r.status_code == 200, r.text
    assert await statuses() == {
        good["order_id"]: "settlement_initiated",
        poor["order_id"]: "verification_completed_failed",
    }
    sandbox.advance(SETTLEMENT_DELAY_S)
    assert await statuses() == {
        good["order_id"]: "settlement_completed_success",
        poor["order_id"]: "verification_completed_failed",
    }
    mine = await get_order(http, bob, buy["order_id"])
    assert mine["status"] == "cancelled"
    assert mine["verification"] is None  # verification belongs to sell orders
    assert contract_events(by_sell[good["order_id"]]) == SUCCESS
    assert contract_events(by_sell[poor["order_id"]]) == FAILURE
    stats = (await http.get("/sandbox/stats")).json()
    assert stats["contracts_by_status"] == {
        "settlement_completed_success": 1,
        "verification_completed_failed": 1,
    }


# --- edge cases of the lifecycle rules --------------------------------------------------------


async def test_settlement_waits_its_delay_even_across_the_metering_deadline(
    http: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    deal = await trade(http)
    sandbox.advance(TO_END_S + METERING_DEADLINE_S - 100)  # metering 100 s before the deadline
    assert (await deal.send(reading(0.26))).status_code == 200
    assert await deal.status() == "settlement_initiated"

    sandbox.advance(100)  # the deadline: 100 of the 300 settlement seconds have passed

    assert await deal.status() == "settlement_initiated"


async def test_metering_with_a_repeated_timestamp_and_a_gap_does_not_cover_the_window(
    http: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    deal = await trade(http)
    sandbox.advance(TO_END_S)
    gappy = reading(0.26, stamps=_quarters(15, 30, 30, 60))  # nothing for 11:30-11:45

    assert (await deal.send(gappy)).status_code == 200

    assert_failed(await deal.contract(), "metering", "cover")


async def test_just_below_the_threshold_fails_however_close(
    http: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    deal = await trade(http)
    sandbox.advance(TO_END_S)

    # 1.10004 kWh metered against 2 kWh: 0.89996 kWh of 1 kWh, 89.996 %.
    assert (await deal.send(reading(0.27501))).status_code == 200

    assert_failed(await deal.contract(), str(MIN_DELIVERED_PCT))
