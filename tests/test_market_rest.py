"""`MarketClient` (flexbot.market.rest): every typed call against the in-process sandbox, the error
mapping, and the retry rules of the module docstring, with the sandbox's faults switched on.

The sandbox always answers a submission with 200 and `order_id`, so the tolerant reading of other
shapes (`id`, 201, an unreadable body) is checked with an `httpx.MockTransport`: the one place here
where the market is faked. The backoff schedule is checked with hypothesis.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from flexbot import model, wire
from flexbot.backoff import Backoff, Retrying
from flexbot.market import (
    Conflict,
    ConnectionSettings,
    Credentials,
    MarketClient,
    NotFound,
    OutcomeUnknown,
    RateLimited,
    Rejected,
    RetryPolicy,
    Secret,
    ServerError,
    TokenManager,
    Unauthorized,
    connect,
)
from flexbot.market.auth import TOKEN_PATH
from flexbot.sandbox.auth import NotAuthenticated
from flexbot.sandbox.market import MarketSettings
from tests.conftest import MARKET_START, USERS, MaxRandom, Sandbox

pytestmark = pytest.mark.anyio

START = MARKET_START + timedelta(hours=1)  # 11:00, an hour after the market's start
END = START + timedelta(hours=1)
EXPIRY = MARKET_START + timedelta(minutes=30)
FAST = RetryPolicy(max_retries=5, backoff=Backoff(base_s=0.01, cap_s=0.05))
ORDER_POST = "POST /api/v1/order"


@pytest.fixture
def market_settings() -> MarketSettings:
    # No rate limit: the manual wall clock never refills the buckets on its own.
    return MarketSettings(users=USERS, seed=7, rate_limit=None)


# --- helpers --------------------------------------------------------------------------------------


class Recorder(httpx.AsyncBaseTransport):
    """Forwards to a real transport; records each request's method, path and status, and the most
    requests of each method that were in flight at once."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.calls: list[tuple[str, str, int, float]] = []  # method, path, status, trio start
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        method, started = request.method, trio.current_time()
        self.in_flight[method] += 1
        self.max_in_flight[method] = max(self.max_in_flight[method], self.in_flight[method])
        try:
            response = await self.inner.handle_async_request(request)
        finally:
            self.in_flight[method] -= 1
        self.calls.append((method, request.url.path, response.status_code, started))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def api(self, method: str | None = None) -> list[tuple[str, str, int, float]]:
        return [c for c in self.calls if c[1].startswith("/api/") and method in (None, c[0])]


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    recorder = Recorder()
    yield recorder
    await recorder.aclose()


@pytest.fixture
async def http(sandbox: Sandbox, recorder: Recorder) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=sandbox.base_url, transport=recorder, timeout=5
    ) as client:
        yield client


@pytest.fixture
async def tokens(http: httpx.AsyncClient) -> TokenManager:
    tokens = TokenManager(http, Credentials("alice", Secret("alice-pw")))
    await tokens.login()
    return tokens


@pytest.fixture
def client(http: httpx.AsyncClient, tokens: TokenManager) -> MarketClient:
    return MarketClient(http, tokens, retry=FAST)


def request(
    side: str = "buy",
    power: str = "1000",
    price: str = "0.20",
    *,
    start: datetime = START,
    hours: int = 1,
    baseline: model.MeterReading | None = None,
    **changes: Any,
) -> model.OrderRequest:
    req = model.OrderRequest(
        side=model.Side(side),
        power=Decimal(power),
        price=Decimal(price),
        delivery_start=start,
        delivery_end=start + timedelta(hours=hours),
        expiry_time=EXPIRY,
        location=model.Location(("meter-1",), "DE"),
        baseline=baseline,
    )
    return attrs.evolve(req, **changes)


def reading(start: datetime = START, end: datetime = END, kwh: str = "0.25") -> model.MeterReading:
    steps = int((end - start).total_seconds() // 900)
    return model.MeterReading(
        data_points=tuple(
            model.DataPoint(start + timedelta(minutes=15 * (i + 1)), Decimal(kwh))
            for i in range(steps)
        ),
        metering_id="meter-1",
        created_at=start,
        reading_start=start,
        reading_end=end,
    )


def placed(sandbox: Sandbox, user: str = "alice") -> list[str]:
    return [o.order_id for o in sandbox.market.matcher.orders(user)]


def order_posts(sandbox: Sandbox) -> int:
    return sum(n for (route, _), n in sandbox.market.requests.items() if route == ORDER_POST)


async def until(condition: Callable[[], bool], bound: float = 5.0) -> None:
    """Wait (bounded) for a condition that another task makes true. The counters polled here
    belong to code under test that offers no event to wait on."""
    with trio.fail_after(bound):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.005)


async def settled_order_posts(sandbox: Sandbox, at_least: int) -> int:
    """The sandbox counts a request once its response has gone out, a moment after the client
    read it: wait (bounded) for the count to reach `at_least`, then report it."""
    await until(lambda: order_posts(sandbox) >= at_least)
    return order_posts(sandbox)


# --- every typed call -----------------------------------------------------------------------------


async def test_submit_returns_the_placed_order_with_its_id(
    sandbox: Sandbox, client: MarketClient
) -> None:
    order = await client.submit_order(request())
    assert order.order_id
    assert placed(sandbox) == [order.order_id]
    assert order.side is model.Side.BUY
    assert order.power == Decimal(1000)
    assert order.price == Decimal("0.20")
    assert order.delivery_start == START
    assert order.status == model.OrderStatus.MATCHING_ACTIVE
    assert order.energy == Decimal(1000)  # 1000 W for one hour


async def test_get_and_list_return_the_callers_orders_only(
    sandbox: Sandbox, client: MarketClient
) -> None:
    mine = [await client.submit_order(request(price=p)) for p in ("0.10", "0.11")]
    sandbox.market.place("bob", request(price="0.12"))
    got = await client.get_order(mine[0].order_id)
    assert got == mine[0]
    listed = await client.list_orders()
    assert sorted(o.order_id for o in listed) == sorted(o.order_id for o in mine)


async def test_cancel_returns_the_cancelled_order(sandbox: Sandbox, client: MarketClient) -> None:
    order = await client.submit_order(request())
    cancelled = await client.cancel_order(order.order_id)
    assert cancelled is not None
    assert cancelled.order_id == order.order_id
    assert cancelled.status == model.OrderStatus.CANCELLED
    assert sandbox.market.matcher.order(order.order_id).status == model.OrderStatus.CANCELLED


async def test_cancel_many_keeps_at_most_max_in_flight_and_reports_every_id(
    sandbox: Sandbox, client: MarketClient, recorder: Recorder
) -> None:
    ids = [(await client.submit_order(request(price=f"0.{10 + i}"))).order_id for i in range(10)]
    sandbox.market.faults.update({"rest_latency_ms": 50})  # so that the cancels overlap
    wanted = [*ids, "no-such-order", ids[0]]  # an unknown id, and a duplicate
    started = trio.current_time()
    results = await client.cancel_many(wanted, max_in_flight=3)
    elapsed = trio.current_time() - started
    assert recorder.max_in_flight["DELETE"] == 3
    assert [r.order_id for r in results] == [*ids, "no-such-order"]  # in order, deduplicated
    for result in results[:-1]:
        assert result.error is None
        assert result.order is not None
        assert result.order.status == model.OrderStatus.CANCELLED
    assert isinstance(results[-1].error, NotFound)
    assert len(recorder.api("DELETE")) == 11  # each id once
    assert elapsed >= 4 * 0.05  # 11 cancels, 3 at a time, 50 ms each: at least four rounds
    assert all(o.status == model.OrderStatus.CANCELLED for o in sandbox.market.matcher.orders())


async def test_submit_baseline_activates_a_waiting_sell(
    sandbox: Sandbox, client: MarketClient
) -> None:
    sell = await client.submit_order(request("sell", price="0.30"))
    assert sell.status == model.OrderStatus.AWAITING_BASELINE_DATA
    receipt = await client.submit_baseline(sell.order_id, reading())
    assert receipt == model.VerificationReceipt(sell.order_id, model.MeasurementType.BASELINE)
    now = await client.get_order(sell.order_id)
    assert now.status == model.OrderStatus.MATCHING_ACTIVE
    assert now.baseline == reading()
    assert sandbox.market.verifications[sell.order_id] == Counter(baseline=1)


async def test_submit_metering_after_delivery_is_received(
    sandbox: Sandbox, client: MarketClient
) -> None:
    sell = await client.submit_order(request("sell", price="0.30", baseline=reading()))
    sandbox.market.place("bob", request("buy", price="0.40"))
    matched = await client.get_order(sell.order_id)
    assert matched.status == model.OrderStatus.FILLED
    # Past the delivery end: the tokens expired meanwhile, the client logs in again by itself.
    sandbox.advance((END - MARKET_START).total_seconds() + 60)
    receipt = await client.submit_metering(sell.order_id, reading(kwh="0.0"))
    assert receipt.measurement_type == model.MeasurementType.METERING
    assert receipt.order_id == sell.order_id
    assert sandbox.market.verifications[sell.order_id]["metering"] == 1


# --- error mapping --------------------------------------------------------------------------------


async def test_422_is_rejected_with_problems_located_in_the_request_body(
    client: MarketClient,
) -> None:
    bad = request(power="0", expiry_time=START + timedelta(minutes=5))
    with pytest.raises(Rejected) as caught:
        await client.submit_order(bad)
    assert caught.value.status == 422
    locs = {p.loc for p in caught.value.problems}
    assert locs == {("power",), ("expiry_time",)}
    assert all(p.msg for p in caught.value.problems)
    assert "$.power" in str(caught.value)


async def test_verification_data_for_a_buy_is_rejected_at_its_field(client: MarketClient) -> None:
    buy = await client.submit_order(request())
    with pytest.raises(Rejected) as caught:
        await client.submit_baseline(buy.order_id, reading())
    assert [p.loc for p in caught.value.problems] == [("order_id",)]


async def test_unknown_or_foreign_order_is_not_found(
    sandbox: Sandbox, client: MarketClient
) -> None:
    bobs = sandbox.market.place("bob", request())
    for order_id in ("no-such-order", bobs.order_id):
        with pytest.raises(NotFound) as caught:
            await client.get_order(order_id)
        assert caught.value.status == 404
        with pytest.raises(NotFound):
            await client.cancel_order(order_id)
    assert sandbox.market.matcher.order(bobs.order_id).status == model.OrderStatus.MATCHING_ACTIVE


async def test_cancelling_a_final_order_is_a_conflict(client: MarketClient) -> None:
    order = await client.submit_order(request())
    await client.cancel_order(order.order_id)
    with pytest.raises(Conflict) as caught:
        await client.cancel_order(order.order_id)
    assert caught.value.status == 409
    assert "final" in str(caught.value)


async def test_an_expired_token_is_renewed_once_and_the_call_retried(
    sandbox: Sandbox, client: MarketClient, tokens: TokenManager, recorder: Recorder
) -> None:
    sandbox.advance(301)  # the server's view: alice's access token has expired
    assert await client.list_orders() == []
    assert [c[2] for c in recorder.api()] == [401, 200]
    assert tokens.grants == 2


async def test_a_persistent_401_is_unauthorized_after_exactly_one_renewal_and_retry(
    sandbox: Sandbox,
    client: MarketClient,
    tokens: TokenManager,
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(authorization: str | None) -> str:
        raise NotAuthenticated("Invalid token")

    monkeypatch.setattr(sandbox.market.issuer, "authenticate", refuse)
    with pytest.raises(Unauthorized) as caught:
        await client.submit_order(request())
    assert caught.value.status == 401
    assert [(c[0], c[2]) for c in recorder.api()] == [("POST", 401), ("POST", 401)]
    assert tokens.grants == 2  # the login, and one renewal
    assert [c[0] for c in recorder.calls if c[1] == TOKEN_PATH] == ["POST", "POST"]


# --- 429 ------------------------------------------------------------------------------------------


async def test_429_waits_retry_after_then_retries(
    sandbox: Sandbox, client: MarketClient, recorder: Recorder
) -> None:
    sandbox.market.faults.update({"rest_429_rate": 1.0})

    async def lift_after_first_429() -> None:
        await until(lambda: any(c[2] == 429 for c in recorder.api()))
        sandbox.market.faults.update({"rest_429_rate": 0.0})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lift_after_first_429)
        with trio.fail_after(5):
            order = await client.submit_order(request())
    calls = recorder.api("POST")
    assert [c[2] for c in calls] == [429, 200]
    waited = calls[1][3] - calls[0][3]
    assert 1.0 <= waited < 1.5  # Retry-After: 1, not the 10 ms backoff
    assert placed(sandbox) == [order.order_id]


async def test_persistent_429_is_rate_limited_after_the_allowed_retries(
    sandbox: Sandbox, http: httpx.AsyncClient, tokens: TokenManager, recorder: Recorder
) -> None:
    client = MarketClient(http, tokens, retry=RetryPolicy(max_retries=2, max_retry_after_s=0.05))
    sandbox.market.faults.update({"rest_429_rate": 1.0})
    with pytest.raises(RateLimited) as caught:
        await client.get_order("whatever")
    assert caught.value.retry_after_s == 1.0
    assert caught.value.status == 429
    calls = recorder.api()
    assert [c[2] for c in calls] == [429, 429, 429]
    # The cap on Retry-After holds: 50 ms between attempts, not 1 s.
    assert all(0.05 <= b[3] - a[3] < 0.5 for a, b in itertools.pairwise(calls))


# --- 5xx and lost answers -------------------------------------------------------------------------


async def test_idempotent_calls_ride_out_ten_percent_server_errors(
    sandbox: Sandbox, client: MarketClient, recorder: Recorder
) -> None:
    sells = [await client.submit_order(request("sell", price=f"0.{50 + i}")) for i in range(12)]
    buys = [await client.submit_order(request("buy", price=f"0.{10 + i}")) for i in range(12)]
    ids = [o.order_id for o in sells + buys]
    sandbox.market.faults.update({"rest_error_rate": 0.1})
    for order_id in ids:
        assert (await client.get_order(order_id)).order_id == order_id
    for sell in sells:
        await client.submit_baseline(sell.order_id, reading())
    for _ in range(6):
        assert len(await client.list_orders()) == 24
    results = await client.cancel_many(ids)
    assert [r.error for r in results] == [None] * 24
    injected = sandbox.market.faults.injected["rest_5xx"]
    assert injected >= 3  # the fault did fire, and every call still succeeded
    assert sum(1 for c in recorder.api() if c[2] >= 500) == injected
    # Each baseline reached the market once: the retried ones never arrived twice.
    assert all(sandbox.market.verifications[s.order_id] == {"baseline": 1} for s in sells)
    assert not sandbox.market.duplicates
    assert all(o.status == model.OrderStatus.CANCELLED for o in sandbox.market.matcher.orders())


async def test_idempotent_call_gives_up_with_server_error_after_max_retries(
    sandbox: Sandbox, client: MarketClient, recorder: Recorder
) -> None:
    sandbox.market.faults.update({"rest_error_rate": 1.0})
    with pytest.raises(ServerError) as caught:
        await client.list_orders()
    assert caught.value.status in (500, 502, 503)
    assert len(recorder.api("GET")) == FAST.max_retries + 1


async def test_submission_answered_5xx_is_outcome_unknown_and_never_resent(
    sandbox: Sandbox, client: MarketClient, recorder: Recorder
) -> None:
    sandbox.market.faults.update({"rest_error_rate": 1.0})
    with pytest.raises(OutcomeUnknown) as caught:
        await client.submit_order(request())
    assert caught.value.status in (500, 502, 503)
    assert len(recorder.api("POST")) == 1
    assert await settled_order_posts(sandbox, 1) == 1
    assert placed(sandbox) == []  # injected errors come before the market


async def test_submission_whose_answer_is_lost_as_504_is_outcome_unknown_and_placed_once(
    sandbox: Sandbox, client: MarketClient, recorder: Recorder
) -> None:
    sandbox.market.faults.update({"ambiguous_rate": 1.0, "ambiguous_mode": "504"})
    with pytest.raises(OutcomeUnknown) as caught:
        await client.submit_order(request())
    assert caught.value.status == 504
    assert len(recorder.api("POST")) == 1
    assert len(placed(sandbox)) == 1
    assert sandbox.market.faults.injected["ambiguous_504"] == 1


async def test_submission_that_hangs_past_the_timeout_is_outcome_unknown_and_placed_once(
    sandbox: Sandbox,
) -> None:
    settings = ConnectionSettings(
        url=sandbox.base_url, username="alice", password=Secret("alice-pw"), timeout_s=0.5
    )
    sandbox.market.faults.update({"ambiguous_rate": 1.0, "ambiguous_mode": "hang"})
    async with connect(settings) as session:
        started = trio.current_time()
        with trio.fail_after(5), pytest.raises(OutcomeUnknown, match="Timeout"):
            await session.client.submit_order(request())
        assert 0.5 <= trio.current_time() - started < 2
    # One submission reached the market (and hangs there): one order, never a second.
    assert len(placed(sandbox)) == 1
    assert sandbox.market.faults.injected["ambiguous_hang"] == 1


# --- tolerant reading, with a fake market ---------------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]
TOKEN_BODY = {"access_token": "tok", "refresh_token": "ref", "expires_in": 300}


def order_json(**changes: Any) -> dict[str, Any]:
    order = model.Order(
        order_id="o-1",
        side=model.Side.BUY,
        power=Decimal(1000),
        price=Decimal("0.20"),
        delivery_start=START,
        delivery_end=END,
        status=model.OrderStatus.ACCEPTED,
    )
    data: dict[str, Any] = wire.unstructure(order)
    return {**data, **changes}


def fake_market(handler: Handler, *, retry: RetryPolicy = FAST) -> MarketClient:
    def route(req: httpx.Request) -> httpx.Response:
        if req.url.path == TOKEN_PATH:
            return httpx.Response(200, json=TOKEN_BODY)
        return handler(req)

    http = httpx.AsyncClient(base_url="https://market.test", transport=httpx.MockTransport(route))
    tokens = TokenManager(http, Credentials("alice", Secret("pw")))
    return MarketClient(http, tokens, retry=retry, rng=MaxRandom())


def answering(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A handler that gives these answers in turn (raising the exceptions), recording requests."""
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler, seen


@pytest.mark.parametrize("status", [200, 201, 202])
async def test_submission_answered_with_id_instead_of_order_id_and_any_2xx_is_accepted(
    status: int,
) -> None:
    body = order_json()
    body["id"] = body.pop("order_id")
    handler, seen = answering(httpx.Response(status, json=body))
    order = await fake_market(handler).submit_order(request())
    assert order.order_id == "o-1"
    assert order.status == model.OrderStatus.ACCEPTED
    assert len(seen) == 1


@pytest.mark.parametrize("body", [{"id": 42}, {"order_id": "o-9", "status": "pending"}])
async def test_submission_answered_with_only_an_id_is_completed_from_the_request(
    body: dict[str, Any],
) -> None:
    handler, _ = answering(httpx.Response(201, json=body))
    sent = request()
    order = await fake_market(handler).submit_order(sent)
    assert order.order_id == str(body.get("order_id", body.get("id")))
    assert (order.side, order.power, order.price) == (sent.side, sent.power, sent.price)
    assert (order.delivery_start, order.delivery_end) == (sent.delivery_start, sent.delivery_end)
    assert order.status == body.get("status", "accepted")


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"<html>proxy says hello</html>"),
        httpx.Response(201, content=b""),
        httpx.Response(200, json={"status": "accepted"}),
        httpx.Response(200, json=[{"order_id": "o-1"}]),
        httpx.Response(200, json={"id": True}),
    ],
    ids=["html", "empty", "no-id", "list", "bool-id"],
)
async def test_submission_accepted_without_a_readable_id_is_outcome_unknown(
    response: httpx.Response,
) -> None:
    handler, seen = answering(response)
    with pytest.raises(OutcomeUnknown):
        await fake_market(handler).submit_order(request())
    assert len(seen) == 1


async def test_get_reads_an_id_field_and_cancel_accepts_an_empty_2xx() -> None:
    body = order_json()
    body["id"] = body.pop("order_id")
    handler, _ = answering(httpx.Response(200, json=body), httpx.Response(204))
    client = fake_market(handler)
    assert (await client.get_order("o-1")).order_id == "o-1"
    assert await client.cancel_order("o-1") is None


async def test_unreadable_order_from_a_get_is_a_server_error() -> None:
    handler, _ = answering(httpx.Response(200, json={"order_id": "o-1", "side": "buy"}))
    with pytest.raises(ServerError, match="unreadable Order"):
        await fake_market(handler).get_order("o-1")


async def test_a_failure_to_connect_is_retried_even_for_a_submission() -> None:
    handler, seen = answering(
        httpx.ConnectError("connection refused"), httpx.Response(200, json=order_json())
    )
    order = await fake_market(handler).submit_order(request())
    assert order.order_id == "o-1"
    assert len(seen) == 2


@pytest.mark.parametrize(
    "error",
    [httpx.ReadTimeout("timed out"), httpx.ReadError("reset"), httpx.RemoteProtocolError("eof")],
    ids=lambda e: type(e).__name__,
)
async def test_a_failure_after_sending_a_submission_is_outcome_unknown_and_not_resent(
    error: Exception,
) -> None:
    handler, seen = answering(error, httpx.Response(200, json=order_json()))
    with pytest.raises(OutcomeUnknown, match=type(error).__name__):
        await fake_market(handler).submit_order(request())
    assert len(seen) == 1


# A connect or pool timeout means the request never left. (rest.py at 08e5cf3 took them for
# "after sending" and raised OutcomeUnknown for a submission.)
@pytest.mark.parametrize(
    "error",
    [httpx.ConnectTimeout("connect timed out"), httpx.PoolTimeout("no free connection")],
    ids=lambda e: type(e).__name__,
)
async def test_a_timeout_before_the_request_left_is_retried_even_for_a_submission(
    error: Exception,
) -> None:
    handler, seen = answering(error, httpx.Response(200, json=order_json()))
    order = await fake_market(handler).submit_order(request())
    assert order.order_id == "o-1"
    assert len(seen) == 2


async def test_transport_errors_on_idempotent_calls_are_retried() -> None:
    handler, seen = answering(
        httpx.ReadTimeout("timed out"),
        httpx.Response(503, json={"detail": "busy"}),
        httpx.RemoteProtocolError("eof"),
        httpx.Response(200, json=order_json()),
    )
    assert (await fake_market(handler).get_order("o-1")).order_id == "o-1"
    assert len(seen) == 4


async def test_429_with_an_http_date_retry_after_falls_back_to_backoff() -> None:
    date = httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    handler, seen = answering(date, httpx.Response(200, json=order_json()))
    started = trio.current_time()
    await fake_market(handler).get_order("o-1")
    assert len(seen) == 2
    assert trio.current_time() - started < 0.5  # the 10 ms backoff, not a date far away


async def test_other_4xx_are_rejected_with_the_markets_words_and_status() -> None:
    handler, _ = answering(httpx.Response(403, json={"detail": "Forbidden for this account"}))
    with pytest.raises(Rejected, match="Forbidden for this account") as caught:
        await fake_market(handler).submit_order(request())
    assert caught.value.status == 403
    assert caught.value.problems == ()


async def test_the_request_body_is_the_wire_shape_of_the_order() -> None:
    handler, seen = answering(httpx.Response(200, json=order_json()))
    await fake_market(handler).submit_order(request())
    body = orjson.loads(seen[0].content)
    assert body["side"] == "buy"
    assert body["delivery_start"].startswith("2026-11-23T11:00:00")
    assert body["delivery_start"].endswith("Z")
    assert seen[0].headers["authorization"] == "Bearer tok"
    assert seen[0].url.path == "/api/v1/order/"


# --- the backoff schedule -------------------------------------------------------------------------

backoffs = st.builds(
    Backoff,
    base_s=st.floats(min_value=0.001, max_value=100, allow_nan=False),
    cap_s=st.floats(min_value=0.001, max_value=10_000, allow_nan=False),
    factor=st.floats(min_value=1.0, max_value=10.0, allow_nan=False),
)


@given(backoffs, st.integers(min_value=0, max_value=200))
def test_backoff_ceiling_is_monotone_and_capped(backoff: Backoff, attempt: int) -> None:
    ceiling = backoff.ceiling(attempt)
    assert 0 <= ceiling <= backoff.cap_s
    assert backoff.ceiling(attempt + 1) >= ceiling


@given(backoffs)
def test_backoff_first_ceiling_is_the_base(backoff: Backoff) -> None:
    assert backoff.ceiling(0) == min(backoff.base_s, backoff.cap_s)


@given(backoffs, st.integers(min_value=0, max_value=200), st.integers())
def test_backoff_delay_is_within_zero_and_the_ceiling(
    backoff: Backoff, attempt: int, seed: int
) -> None:
    delay = backoff.delay(attempt, random.Random(seed))
    assert 0 <= delay <= backoff.ceiling(attempt)


@given(
    st.builds(
        Backoff,
        base_s=st.floats(min_value=0.001, max_value=100, allow_nan=False),
        cap_s=st.floats(min_value=0.001, max_value=1e300, allow_nan=False),
        factor=st.floats(min_value=1.5, max_value=1e6, allow_nan=False),
    ),
    st.integers(min_value=10**6, max_value=10**18),
)
def test_backoff_huge_attempt_numbers_do_not_overflow(backoff: Backoff, attempt: int) -> None:
    ceiling = backoff.ceiling(attempt)
    assert ceiling == backoff.cap_s or ceiling == backoff.base_s  # the cap, or a base above it
    assert 0 <= backoff.delay(attempt, random.Random(0)) <= backoff.cap_s


def test_backoff_defaults_double_from_half_a_second_to_thirty() -> None:
    backoff = Backoff()
    assert [backoff.ceiling(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    with pytest.raises(ValueError, match="from 0"):
        backoff.ceiling(-1)


@given(st.integers(min_value=0, max_value=50), st.integers())
def test_retrying_counts_attempts_and_resets(retries: int, seed: int) -> None:
    backoff = Backoff(base_s=0.1, cap_s=2.0)
    retrying = Retrying(backoff, random.Random(seed))
    for n in range(retries):
        assert 0 <= retrying.next_delay() <= backoff.ceiling(n)
    assert retrying.attempt == retries
    retrying.reset()
    assert retrying.attempt == 0
    assert retrying.next_delay() <= backoff.base_s


def test_market_start_is_timezone_aware() -> None:
    assert START.tzinfo is UTC


async def test_a_retried_cancel_that_meets_409_reads_the_order_and_counts_it_cancelled() -> None:
    """The first DELETE went through but its answer was lost (503): the retry finds the order
    final (409). Read back, it is cancelled: the cancel succeeded, not a conflict."""
    cancelled = order_json(status="cancelled")
    handler, seen = answering(
        httpx.Response(503, json={"detail": "lost"}),
        httpx.Response(409, json={"detail": "Order o-1 is final"}),
        httpx.Response(200, json=cancelled),
    )
    order = await fake_market(handler).cancel_order("o-1")
    assert order is not None
    assert order.status == model.OrderStatus.CANCELLED
    assert [r.method for r in seen] == ["DELETE", "DELETE", "GET"]


async def test_a_first_attempt_409_on_cancel_stays_a_conflict() -> None:
    handler, seen = answering(httpx.Response(409, json={"detail": "Order o-1 is final"}))
    with pytest.raises(Conflict, match="final"):
        await fake_market(handler).cancel_order("o-1")
    assert [r.method for r in seen] == ["DELETE"]


async def test_a_retried_cancel_of_a_filled_order_stays_a_conflict() -> None:
    handler, _ = answering(
        httpx.Response(502),
        httpx.Response(409, json={"detail": "Order o-1 is final"}),
        httpx.Response(200, json=order_json(status="filled")),
    )
    with pytest.raises(Conflict):
        await fake_market(handler).cancel_order("o-1")
