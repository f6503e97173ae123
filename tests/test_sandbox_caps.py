"""The sandbox refuses absurd orders (issue 14): caps on location ids, power, price, the delivery
window and how far ahead an order may reach, each a located 422 (`flexbot.rules.MarketCaps`).

The caps are assumed [A]: the sandbox enforces them, flexbot's own order path must not. HTTP tests
run the in-process sandbox of conftest.py over real loopback HTTP with its manual wall clock
(market time stays at 2026-11-23T10:00:00Z); the property tests drive `flexbot.rules` directly
against an oracle written without the module's helpers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import attrs
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexbot import model, rules
from flexbot.problems import Loc, render_loc
from flexbot.rules import MarketCaps, Strictness
from flexbot.sandbox.app import MAX_BODY_BYTES
from flexbot.sandbox.market import MarketSettings
from tests.conftest import MARKET_START, USERS, Sandbox
from tests.test_sandbox_conformance import END, EXPIRY, START, bearer, order_body

pytestmark = pytest.mark.anyio

QUARTER = timedelta(minutes=15)
CAPS = MarketCaps()
# Market time never moves in these tests: the lead cap ends exactly here.
HORIZON = MARKET_START + timedelta(seconds=CAPS.max_lead_s)


def utc(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def market_settings(request: pytest.FixtureRequest) -> MarketSettings:
    """No rate limit (the manual wall never refills it); overrides by indirect parametrization."""
    overrides: dict[str, Any] = getattr(request, "param", {})
    return MarketSettings(**({"users": USERS, "seed": 7, "rate_limit": None} | overrides))


def with_market(**overrides: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("market_settings", [overrides], indirect=True, ids=[""])


def located(body: dict[str, Any], ids: list[str | None] | None = None) -> dict[str, Any]:
    if ids is not None:
        body["location"] = {"location_id": ids, "country_code": "DE"}
    return body


async def post(http: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    alice = await bearer(http)
    return await http.post("/api/v1/order", json=body, headers=alice)


# --- each cap over HTTP: at the cap accepted, past it a located 422 -------------------------------

FAR_START = HORIZON + QUARTER
# (name, body at the cap, body past it, the 422's detail entries past it)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], list[dict[str, Any]]]] = [
    (
        "location-id-count",
        located(order_body(), ["site"] * 100),
        located(order_body(), ["site"] * 101),
        [
            {
                "loc": ["body", "location", "location_id"],
                "msg": "must name at most 100 location ids, got 101",
                "type": "too_long",
            }
        ],
    ),
    (
        "location-id-length",
        located(order_body(), ["x" * 128]),
        located(order_body(), ["ok", "x" * 129]),
        [
            {
                "loc": ["body", "location", "location_id", 1],
                "msg": "must be at most 128 characters, got 129",
                "type": "string_too_long",
            }
        ],
    ),
    (
        "power-below-min",
        order_body(power=1.0),
        order_body(power=0.999),
        [{"loc": ["body", "power"], "msg": "must be at least 1 W", "type": "greater_than_equal"}],
    ),
    (
        "power-above-max",
        order_body(power=100_000_000.0),
        order_body(power=100_000_000.001),
        [
            {
                "loc": ["body", "power"],
                "msg": "must be at most 100000000 W",
                "type": "less_than_equal",
            }
        ],
    ),
    (
        "price-above-max",
        order_body(price=10.0),
        order_body(price=10.000001),
        [{"loc": ["body", "price"], "msg": "must be at most 10 €/kWh", "type": "less_than_equal"}],
    ),
    (
        "window-longer-than-a-day",
        order_body(end=utc(MARKET_START + timedelta(hours=25))),
        order_body(end=utc(MARKET_START + timedelta(hours=25, minutes=15))),
        [
            {
                "loc": ["body", "delivery_end"],
                "msg": "must be at most 24 h after delivery_start, got 24.25 h",
                "type": "less_than_equal",
            }
        ],
    ),
    (
        "delivery-too-far-ahead",
        order_body(start=utc(HORIZON), end=utc(HORIZON + QUARTER)),
        order_body(start=utc(FAR_START), end=utc(FAR_START + QUARTER)),
        [
            {
                "loc": ["body", "delivery_start"],
                "msg": "must be at most 31 days ahead (not after 2026-12-24T10:00:00Z)",
                "type": "less_than_equal",
            }
        ],
    ),
    (
        "expiry-too-far-ahead",
        order_body(start=utc(HORIZON), end=utc(HORIZON + QUARTER), expiry=utc(HORIZON - QUARTER)),
        order_body(
            start=utc(FAR_START), end=utc(FAR_START + QUARTER), expiry=utc(HORIZON + QUARTER / 3)
        ),
        [
            {
                "loc": ["body", "delivery_start"],
                "msg": "must be at most 31 days ahead (not after 2026-12-24T10:00:00Z)",
                "type": "less_than_equal",
            },
            {
                "loc": ["body", "expiry_time"],
                "msg": "must be at most 31 days ahead (not after 2026-12-24T10:00:00Z)",
                "type": "less_than_equal",
            },
        ],
    ),
]


@pytest.mark.parametrize(
    ("past", "detail"), [(past, detail) for _, _, past, detail in CASES], ids=[c[0] for c in CASES]
)
async def test_each_cap_refuses_an_order_past_it_with_a_located_422(
    http: httpx.AsyncClient, past: dict[str, Any], detail: list[dict[str, Any]]
) -> None:
    r = await post(http, past)
    assert r.status_code == 422, r.text
    assert r.json() == {"detail": detail}
    alice = await bearer(http)
    assert (await http.get("/api/v1/order", headers=alice)).json() == []


@pytest.mark.parametrize("at_cap", [at for _, at, _, _ in CASES], ids=[c[0] for c in CASES])
async def test_an_order_exactly_at_a_cap_is_accepted(
    http: httpx.AsyncClient, at_cap: dict[str, Any]
) -> None:
    r = await post(http, at_cap)
    assert r.status_code == 200, r.text


async def test_every_cap_broken_at_once_is_reported_at_once(http: httpx.AsyncClient) -> None:
    body = order_body(power=2e8, price=11.0, start=utc(FAR_START), end=utc(FAR_START + 2 * QUARTER))
    r = await post(http, located(body, ["x" * 200] * 101))
    assert r.status_code == 422
    found = [tuple(p["loc"]) for p in r.json()["detail"]]
    # The long ids are reported only within the count cap: a bounded answer to any request.
    id_problems = [loc for loc in found if loc[:3] == ("body", "location", "location_id")]
    assert len(id_problems) == 1 + 100
    assert {loc for loc in found if loc not in id_problems} == {
        ("body", "power"),
        ("body", "price"),
        ("body", "delivery_start"),
    }


async def test_the_seen_abuse_leaves_the_public_book_empty(
    http: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    """Seen: 17 orders with a 1 MB location id each made the book 18.8 MB. Each is refused now,
    at the id, with a short answer (not an echo of the megabyte)."""
    huge = "x" * 1_000_000
    for _ in range(17):
        r = await post(http, located(order_body(side="buy"), [huge]))
        assert r.status_code == 422
        assert len(r.content) < 500
        [problem] = r.json()["detail"]
        assert problem["loc"] == ["body", "location", "location_id", 0]
    book = sandbox.market.matcher.book()
    assert book.bids == {}
    assert book.asks == {}


async def test_a_body_over_the_size_cap_is_413_before_it_is_parsed(
    http: httpx.AsyncClient,
) -> None:
    alice = await bearer(http)
    body = b'{"side": "buy", "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    r = await http.post("/api/v1/order", content=body, headers=alice)
    assert r.status_code == 413
    assert str(MAX_BODY_BYTES) in r.json()["detail"]


@with_market(caps=MarketCaps(max_location_ids=2, max_window_s=3600))
async def test_the_caps_are_settings(http: httpx.AsyncClient) -> None:
    assert (await post(http, located(order_body(), ["a", "b"]))).status_code == 200
    r = await post(http, located(order_body(), ["a", "b", "c"]))
    assert r.json()["detail"][0]["msg"] == "must name at most 2 location ids, got 3"
    r = await post(http, order_body(end=utc(MARKET_START + timedelta(hours=2, minutes=15))))
    assert r.json()["detail"][0]["msg"] == "must be at most 1 h after delivery_start, got 1.25 h"


@with_market(caps=None)
async def test_without_caps_the_sandbox_takes_what_the_market_rules_allow(
    http: httpx.AsyncClient,
) -> None:
    body = order_body(power=2e8, price=50.0, end=utc(MARKET_START + timedelta(days=2)))
    assert (await post(http, located(body, ["x" * 1000] * 500))).status_code == 200


# --- properties: within every cap is never refused for a cap, past one always is ------------------


def cap_oracle(req: model.OrderRequest, now: datetime, caps: MarketCaps) -> set[Loc]:
    """The fields of a request (valid by the market's rules) that exceed a cap."""
    bad: set[Loc] = set()
    ids = req.location.location_id
    if len(ids) > caps.max_location_ids:
        bad.add(("location", "location_id"))
    for i, location_id in enumerate(ids):
        # Past the count cap, the count is the problem: ids there are not judged one by one.
        if i < caps.max_location_ids and len(location_id or "") > caps.max_location_id_chars:
            bad.add(("location", "location_id", i))
    if not caps.min_power_w <= req.power <= caps.max_power_w:
        bad.add(("power",))
    if req.price > caps.max_price_eur_kwh:
        bad.add(("price",))
    if req.delivery_end - req.delivery_start > timedelta(seconds=caps.max_window_s):
        bad.add(("delivery_end",))
    for name in ("delivery_start", "expiry_time"):
        if getattr(req, name) - now > timedelta(seconds=caps.max_lead_s):
            bad.add((name,))
    return bad


def around(value: Decimal, step: Decimal | int) -> st.SearchStrategy[Decimal]:
    """A value at, just below or just above `value`, or well inside or outside it."""
    return st.sampled_from([value, value - step, value + step, value / 2, value * 2])


@st.composite
def capped_requests(draw: st.DrawFn) -> tuple[model.OrderRequest, datetime, MarketCaps]:
    """Caps, a market time and a request that the market's own rules accept, with each capped
    quantity on, just inside, or just past its cap (or far from it)."""
    caps = MarketCaps(
        max_location_ids=draw(st.integers(0, 4)),
        max_location_id_chars=draw(st.integers(1, 6)),
        min_power_w=draw(st.sampled_from([Decimal("0.001"), Decimal(1), Decimal(500)])),
        max_power_w=draw(st.sampled_from([Decimal(1000), Decimal(10**8)])),
        max_price_eur_kwh=draw(st.sampled_from([Decimal("0.5"), Decimal(10)])),
        max_window_s=draw(st.integers(1, 12)) * 900,
        max_lead_s=draw(st.integers(1, 48)) * 900 + draw(st.sampled_from([0, 1, 899])),
    )
    now = datetime(2030, 1, 1, tzinfo=UTC) + draw(st.integers(0, 10**6)) * timedelta(seconds=7)
    grid = rules.floor_to_grid(now)
    start = grid + draw(st.integers(1, caps.max_lead_s // 900 + 3)) * QUARTER
    end = start + draw(st.integers(1, caps.max_window_s // 900 + 2)) * QUARTER
    expiry = draw(st.sampled_from([now + timedelta(microseconds=1), start - timedelta(seconds=1)]))
    if not now < expiry:
        expiry = now + (start - now) / 2
    count = draw(st.integers(0, caps.max_location_ids + 2))
    lengths = st.integers(1, caps.max_location_id_chars + 2)
    ids = tuple("i" * draw(lengths) for _ in range(count))
    power = draw(st.one_of(around(caps.min_power_w, Decimal("0.001")), around(caps.max_power_w, 1)))
    price = draw(
        st.one_of(st.just(Decimal(0)), around(caps.max_price_eur_kwh, Decimal("0.000001")))
    )
    req = model.OrderRequest(
        side=draw(st.sampled_from(list(model.Side))),
        power=max(power, Decimal("0.0001")),  # > 0: the market's own rule, not a cap
        price=price,
        delivery_start=start,
        delivery_end=end,
        expiry_time=expiry,
        location=model.Location(ids, draw(st.sampled_from(["", "DE"]))),
    )
    return req, now, caps


@settings(max_examples=400, deadline=None)
@given(case=capped_requests())
def test_an_order_is_refused_for_a_cap_exactly_when_it_exceeds_one(
    case: tuple[model.OrderRequest, datetime, MarketCaps],
) -> None:
    req, now, caps = case
    assert rules.check_order_request(req, now, strictness=Strictness.MARKET) == []  # the premise
    problems = rules.check_order_request(req, now, strictness=Strictness.MARKET, caps=caps)
    for problem in problems:
        assert str(problem).startswith(render_loc(problem.loc) + ": ")
    assert {p.loc for p in problems} == cap_oracle(req, now, caps)


@settings(max_examples=200, deadline=None)
@given(case=capped_requests())
def test_flexbots_own_order_check_never_applies_the_assumed_caps(
    case: tuple[model.OrderRequest, datetime, MarketCaps],
) -> None:
    """The client's check (`Strictness.CLIENT`, no caps: what the engine and `flexbot orders`
    call) judges only the market's documented rules, whatever the sandbox assumes."""
    req, now, _ = case
    req = attrs.evolve(req, location=attrs.evolve(req.location, location_id=("site",)))
    huge = attrs.evolve(
        req,
        power=Decimal(10**12),
        price=Decimal(10**6),
        location=model.Location(("x" * 10_000,) * 1000, "DE"),
    )
    for request in (req, huge):
        assert rules.check_order_request(request, now) == []
        assert rules.check_order_request(request, now, strictness=Strictness.CLIENT) == []


def test_the_default_caps_are_the_named_constants() -> None:
    assert MarketSettings().caps == MarketCaps(
        max_location_ids=rules.MAX_LOCATION_IDS,
        max_location_id_chars=rules.MAX_LOCATION_ID_CHARS,
        min_power_w=rules.MIN_POWER_W,
        max_power_w=rules.MAX_POWER_W,
        max_price_eur_kwh=rules.MAX_PRICE_EUR_KWH,
        max_window_s=rules.MAX_WINDOW_S,
        max_lead_s=rules.MAX_LEAD_S,
    )


def test_a_null_location_id_is_within_every_length_cap() -> None:
    """The official client sends `[null]` (spec §9): the market accepts it, so must the caps."""
    now = MARKET_START
    req = model.OrderRequest(
        side=model.Side.BUY,
        power=Decimal(1400),
        price=Decimal("0.65"),
        delivery_start=datetime.fromisoformat(START),
        delivery_end=datetime.fromisoformat(END),
        expiry_time=datetime.fromisoformat(EXPIRY),
        location=model.Location((None,), "CH"),
    )
    assert rules.check_order_request(req, now, strictness=Strictness.MARKET, caps=CAPS) == []
