"""`MarketClient`: the market's REST API over one `httpx.AsyncClient`.

Retry rules, in one place:

- 401: renew the token once and retry once (the request was not processed); then `Unauthorized`.
- 429: the request was not processed either: wait `Retry-After` (or backoff) and retry, up to
  `max_retries`; then `RateLimited`.
- 5xx and transport errors: retried with capped exponential backoff and full jitter *only* for
  idempotent calls (GET, DELETE, verification submissions, which the market keys by order and
  measurement type); then `ServerError`.
- A failure to *connect* (the request never left) is retried for every call.
- An order submission that fails after it may have reached the market (a timeout, a reset, a 5xx)
  raises `OutcomeUnknown`: the caller reconciles; the client never resends it.

Responses are read tolerantly: any 2xx is success, the order id may be `order_id` or `id`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import attrs
import httpx
import trio
from attrs import frozen

from flexbot import logs, model, wire
from flexbot.backoff import Backoff, Retrying
from flexbot.market.auth import TokenManager
from flexbot.market.errors import (
    Conflict,
    MarketError,
    NotFound,
    OutcomeUnknown,
    RateLimited,
    Rejected,
    ServerError,
    Unauthorized,
)
from flexbot.problems import Invalid, Problem

log = logs.get_logger("flexbot.market.rest")

T = TypeVar("T")
API = "/api/v1"


@frozen
class RetryPolicy:
    max_retries: int = 5
    backoff: Backoff = attrs.field(factory=lambda: Backoff(base_s=0.2, cap_s=10.0))
    max_retry_after_s: float = 60.0  # a longer Retry-After is honoured but capped


@frozen
class CancelResult:
    order_id: str
    order: model.Order | None = None
    error: MarketError | None = None


class MarketClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        tokens: TokenManager,
        *,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._http = http
        self._tokens = tokens
        self.retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        # Told the time each answered request took (method, seconds): the metrics' histogram.
        self.on_latency: Callable[[str, float], None] | None = None

    # --- orders ---------------------------------------------------------------------------------

    async def submit_order(self, request: model.OrderRequest) -> model.Order:
        """Place an order. `OutcomeUnknown` means it may exist: reconcile, do not resend."""
        body = await self._call(
            "POST", f"{API}/order/", json=wire.unstructure(request), idempotent=False
        )
        return _order_from(body, request)

    async def get_order(self, order_id: str) -> model.Order:
        body = await self._call("GET", f"{API}/order/{order_id}")
        return _decode(body, model.Order)

    async def list_orders(self) -> list[model.Order]:
        """The caller's orders (a sandbox route; the real market documents none)."""
        body = await self._call("GET", f"{API}/order/")
        if not isinstance(body, list):
            raise ServerError("order listing is not a list")
        return [_decode(item, model.Order) for item in body]

    async def cancel_order(self, order_id: str) -> model.Order | None:
        """Cancel; returns the order if the market sent it back (any 2xx is success).

        A 409 after a retry may mean our first attempt worked and only its answer was lost: the
        order is then read back, and an order found cancelled counts as cancelled by us."""
        try:
            body = await self._call("DELETE", f"{API}/order/{order_id}")
        except Conflict as exc:
            if not exc.retried:
                raise
            order = await self.get_order(order_id)
            if order.status == model.OrderStatus.CANCELLED:
                return order
            raise
        if isinstance(body, dict) and body:
            try:
                return _decode(body, model.Order)
            except ServerError:
                return None  # any 2xx is a successful cancel, whatever its body
        return None

    async def cancel_many(
        self, order_ids: Iterable[str], *, max_in_flight: int = 4
    ) -> list[CancelResult]:
        """Cancel several orders concurrently, at most `max_in_flight` at a time (the batch cancel
        of the kill switch and shutdown). Every id gets a result; failures do not stop the rest."""
        ids = list(dict.fromkeys(order_ids))
        results: dict[str, CancelResult] = {}
        limiter = trio.CapacityLimiter(max_in_flight)

        async def one(order_id: str) -> None:
            async with limiter:
                try:
                    results[order_id] = CancelResult(order_id, await self.cancel_order(order_id))
                except MarketError as exc:
                    results[order_id] = CancelResult(order_id, error=exc)

        async with trio.open_nursery() as nursery:
            for order_id in ids:
                nursery.start_soon(one, order_id)
        return [results[order_id] for order_id in ids]

    # --- verification ---------------------------------------------------------------------------

    async def submit_baseline(
        self, order_id: str, reading: model.MeterReading
    ) -> model.VerificationReceipt:
        return await self._verification(order_id, model.MeasurementType.BASELINE, reading)

    async def submit_metering(
        self, order_id: str, reading: model.MeterReading
    ) -> model.VerificationReceipt:
        return await self._verification(order_id, model.MeasurementType.METERING, reading)

    async def _verification(
        self, order_id: str, kind: model.MeasurementType, reading: model.MeterReading
    ) -> model.VerificationReceipt:
        request = model.VerificationRequest(order_id, kind, reading)
        # The docs' baseline example posts to /metering with measurement_type deciding (spec §3).
        body = await self._call(
            "POST", f"{API}/verification/metering", json=wire.unstructure(request), idempotent=True
        )
        if isinstance(body, dict) and body:
            try:
                return wire.structure(body, model.VerificationReceipt)
            except Invalid:
                pass  # any 2xx is success; the body is a courtesy
        return model.VerificationReceipt(order_id=order_id, measurement_type=kind)

    # --- the one request path -------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        idempotent: bool | None = None,
    ) -> Any:
        idempotent = method in ("GET", "DELETE") if idempotent is None else idempotent
        retrying = Retrying(self.retry.backoff, self._rng)
        renewed = False
        while True:
            token = await self._tokens.token()
            headers = {"Authorization": f"Bearer {token}"}
            started = trio.current_time()
            try:
                response = await self._http.request(method, path, json=json, headers=headers)
            except (
                httpx.ConnectError,
                httpx.ConnectTimeout,
                httpx.PoolTimeout,
                httpx.ProxyError,
                httpx.UnsupportedProtocol,
            ) as exc:
                # The request never left: safe to retry whatever the method.
                error: MarketError = ServerError(f"cannot connect: {type(exc).__name__}")
            except (httpx.TransportError, httpx.DecodingError) as exc:
                # It may have been processed (a timeout, a reset, an answer we cannot read).
                if not idempotent:
                    raise OutcomeUnknown(
                        f"{method} {path}: {type(exc).__name__} after sending; the outcome is "
                        "unknown"
                    ) from None
                error = ServerError(f"{type(exc).__name__} on {method} {path}")
            else:
                status = response.status_code
                if self.on_latency is not None:
                    self.on_latency(method, trio.current_time() - started)
                if response.is_success:
                    return _body(response)
                if status == 401 and not renewed:
                    renewed = True
                    await self._tokens.renew_after_401(token)
                    continue
                if status == 429:
                    error = RateLimited(_message(response), _retry_after(response))
                elif status >= 500:
                    if not idempotent:
                        raise OutcomeUnknown(
                            f"{method} {path} answered {status}: {_message(response)}; the "
                            "outcome is unknown",
                            status=status,
                        )
                    error = ServerError(f"{status}: {_message(response)}", status=status)
                else:
                    client_error = _client_error(response)
                    client_error.retried = retrying.attempt > 0
                    raise client_error
            if retrying.attempt >= self.retry.max_retries:
                raise error
            delay = retrying.next_delay()
            if isinstance(error, RateLimited) and error.retry_after_s is not None:
                delay = min(error.retry_after_s, self.retry.max_retry_after_s)
            log.info(
                "rest.retry",
                method=method,
                path=path,
                reason=str(error),
                attempt=retrying.attempt,
                delay_s=round(delay, 3),
            )
            await trio.sleep(delay)


def _body(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return wire.loads(response.content)
    except Invalid:
        return None  # a 2xx with an unreadable body is still a success


def _message(response: httpx.Response) -> str:
    """The market's own words: `detail` (FastAPI style), an OAuth2 error, or the status."""
    body = _body(response)
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):
            return "; ".join(str(p) for p in _problems(detail)) or f"HTTP {response.status_code}"
        if "error" in body:
            return str(body.get("error_description") or body["error"])
    return f"HTTP {response.status_code}"


def _problems(detail: list[Any]) -> list[Problem]:
    problems = []
    for item in detail:
        if not isinstance(item, Mapping):
            continue
        raw_loc = item.get("loc") or []
        if not isinstance(raw_loc, list | tuple):
            raw_loc = [raw_loc]  # a server may send one name instead of a path
        loc = tuple(p for p in raw_loc if isinstance(p, str | int) and not isinstance(p, bool))
        if loc[:1] == ("body",):
            loc = loc[1:]
        problems.append(
            Problem(loc, str(item.get("msg", "")), str(item.get("type", "value_error")))
        )
    return problems


def _client_error(response: httpx.Response) -> MarketError:
    status, message = response.status_code, _message(response)
    if status == 401:
        return Unauthorized(f"401 after a token renewal: {message}", status=401)
    if status == 404:
        return NotFound(message, status=404)
    if status == 409:
        return Conflict(message, status=409)
    body = _body(response)
    detail = body.get("detail") if isinstance(body, dict) else None
    problems = _problems(detail) if isinstance(detail, list) else []
    return Rejected(message, problems, status=status)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare; fall back to our own backoff


def _decode(body: Any, cls: type[T]) -> T:
    if isinstance(body, dict) and "order_id" not in body and "id" in body:
        body = {**body, "order_id": body["id"]}
    try:
        return wire.structure(body, cls)
    except Invalid as exc:
        raise ServerError(f"unreadable {cls.__name__} from the market: {exc}") from None


def _order_from(body: Any, request: model.OrderRequest) -> model.Order:
    """The submitted order, from whatever 2xx body the market sent: the full order (the sandbox),
    or only an id (`order_id` or `id`), completed from our own request."""
    if isinstance(body, dict):
        order_id = body.get("order_id", body.get("id"))
        if isinstance(order_id, str | int) and not isinstance(order_id, bool):
            try:
                return _decode(body, model.Order)
            except ServerError:
                return model.Order(
                    order_id=str(order_id),
                    side=request.side,
                    power=request.power,
                    price=request.price,
                    delivery_start=request.delivery_start,
                    delivery_end=request.delivery_end,
                    expiry_time=request.expiry_time,
                    location=request.location,
                    status=str(body.get("status", "accepted")),
                )
    # Accepted, but we cannot tell which order it is: as good as not knowing.
    raise OutcomeUnknown("order accepted but the response names no order id", status=200)
