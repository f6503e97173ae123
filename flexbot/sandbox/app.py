"""The sandbox's HTTP face: auth, REST and introspection routes as a Starlette app.

Routes are thin: they authenticate, rate-limit, hand the decoded body to `SandboxMarket` and map its
errors to the statuses of the spec (§3): 401 without a valid token, 422 with a FastAPI-style detail
list that locates each problem, 404 for an unknown or foreign order, 409 for a change to a final
order, 429 with `Retry-After`. Every path answers with and without a trailing slash, no redirect.

The token endpoint is rate-limited per user like the REST routes (its own buckets, the same limit).
The `/sandbox/*` routes that only read stay open; the one that changes the sandbox
(`POST /sandbox/faults`) answers 403 unless faults were switchable from the start
(`MarketSettings.faults_switchable`) or the request carries the operator's admin token.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

import orjson
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from flexbot import logs, wire
from flexbot.problems import Invalid
from flexbot.sandbox.auth import NotAuthenticated, OAuthError
from flexbot.sandbox.lifecycle import MeteringRefused
from flexbot.sandbox.market import ADMIN_TOKEN_ENV, SandboxMarket
from flexbot.sandbox.matching import BaselineLocked, NotASell, OrderFinal, OrderNotFound
from flexbot.sandbox.streams import Channel, StreamHub, serve_stream

log = logs.get_logger("flexbot.sandbox")

AMBIGUOUS_HANG_S = 60.0  # longer than any sane client timeout; then a 504 for the record
MAX_BODY_BYTES = 1 << 20  # a day of 15-minute data points is ~10 KB; 1 MiB is generous

ADMIN_HEADER = "X-Sandbox-Admin-Token"
ADMIN_REFUSED = (
    "changing the sandbox is off: start it with a fault on (--fault NAME=VALUE), or send the "
    f"admin token (${ADMIN_TOKEN_ENV} at its start) in the {ADMIN_HEADER} header"
)
# The token endpoint's bucket for requests that name no known user (unknown names, bad refresh
# tokens): one shared bucket, so made-up names cannot grow the limiter's table.
UNKNOWN_REQUESTER = "\0unknown"

Endpoint = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(data), status_code=status, headers=headers, media_type="application/json"
    )


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 past `MAX_BODY_BYTES` so memory stays bounded."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _detail(exc: Invalid) -> list[dict[str, Any]]:
    return [{"loc": ["body", *p.loc], "msg": p.msg, "type": p.type} for p in exc.problems]


def _both(path: str, endpoint: Endpoint, methods: Sequence[str]) -> list[BaseRoute]:
    """The spec's clients use both `/order` and `/order/`: serve each, redirect neither."""
    return [
        Route(path, endpoint, methods=list(methods)),
        Route(path + "/", endpoint, methods=list(methods)),
    ]


def build_app(market: SandboxMarket, hub: StreamHub) -> Starlette:
    faults = market.faults

    async def user_of(request: Request) -> str:
        """Every `/api/v1` call: injected latency, Bearer auth, the rate limit, injected errors."""
        if faults.settings.rest_latency_ms:
            faults.injected["rest_latency"] += 1
            await trio.sleep(faults.settings.rest_latency_ms / 1000)
        try:
            user = market.issuer.authenticate(request.headers.get("authorization"))
        except NotAuthenticated as exc:
            raise ApiError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from None
        request.scope["flexbot.user"] = user
        if market.limiter is not None:
            retry_after = market.limiter.acquire(user)
            if retry_after is not None:
                raise ApiError(429, "Too many requests", {"Retry-After": str(retry_after)})
        if faults.chance(faults.settings.rest_429_rate, "rest_429"):
            raise ApiError(429, "Too many requests (injected)", {"Retry-After": "1"})
        if faults.chance(faults.settings.rest_error_rate, "rest_5xx"):
            status = faults.choice((500, 502, 503))
            raise ApiError(status, f"injected server error {status}")
        return user

    async def body_of(request: Request) -> Any:
        # The docs' curl examples send JSON labelled as a form: parse JSON whatever the header says.
        return wire.loads(await read_body(request))

    def admin(request: Request) -> bool:
        """May this request change the sandbox? The token is compared in constant time and never
        logged. Bytes are compared: Starlette decodes a header as latin-1, and the environment
        keeps undecodable bytes as surrogates."""
        if market.settings.faults_switchable:
            return True
        expected, presented = market.settings.admin_token, request.headers.get(ADMIN_HEADER)
        if expected is None or presented is None:
            return False
        wanted = expected.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(presented.encode("latin-1"), wanted)

    async def token(request: Request) -> Response:
        form = dict(parse_qsl((await read_body(request)).decode("utf-8", "replace")))
        if market.token_limiter is not None:
            requester = market.issuer.requester(form)
            retry_after = market.token_limiter.acquire(requester or UNKNOWN_REQUESTER)
            if retry_after is not None:
                request.scope["flexbot.user"] = requester
                return json_response(
                    {"error": "too_many_requests", "error_description": "Too many token requests"},
                    429,
                    headers={"Retry-After": str(retry_after)},
                )
        if faults.token_endpoint_down():
            return json_response(
                {"error": "temporarily_unavailable", "error_description": "injected outage"}, 503
            )
        try:
            issued = market.issuer.token(form, access_ttl_s=faults.settings.token_ttl or None)
        except OAuthError as exc:
            return json_response(
                {"error": exc.error, "error_description": exc.description}, exc.status
            )
        request.scope["flexbot.user"] = form.get("username") or None
        return json_response(
            wire.unstructure(issued), headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
        )

    async def order_collection(request: Request) -> Response:
        user = await user_of(request)
        if request.method == "GET":
            if not market.settings.listing:  # as the real market: no such route documented
                raise ApiError(405, "Method Not Allowed")
            return json_response(wire.unstructure(market.list_orders(user)))
        order = market.submit_order(user, await body_of(request))
        if faults.chance(
            faults.settings.ambiguous_rate, "ambiguous_" + faults.settings.ambiguous_mode
        ):
            # The order exists, but the client will not learn it from this response.
            if faults.settings.ambiguous_mode == "hang":
                await trio.sleep(AMBIGUOUS_HANG_S)
            raise ApiError(504, "Gateway Timeout")
        return json_response(wire.unstructure(order))

    async def order_item(request: Request) -> Response:
        user = await user_of(request)
        order_id = request.path_params["order_id"]
        if request.method == "DELETE":
            return json_response(wire.unstructure(market.cancel_order(user, order_id)))
        return json_response(wire.unstructure(market.get_order(user, order_id)))

    async def verification(request: Request) -> Response:
        user = await user_of(request)
        receipt = market.submit_verification(user, await body_of(request))
        return json_response(wire.unstructure(receipt))

    async def sandbox_clock(request: Request) -> Response:
        return json_response(
            {"now": wire.format_datetime(market.clock.now()), "time_scale": market.clock.scale}
        )

    async def sandbox_orders(request: Request) -> Response:
        return json_response(market.introspect_orders())

    async def sandbox_stats(request: Request) -> Response:
        return json_response({**market.stats(), "websocket": hub.snapshot()})

    async def sandbox_faults(request: Request) -> Response:
        if request.method == "POST":
            if not admin(request):
                log.warning("sandbox.admin_refused", path=request.url.path)
                raise ApiError(403, ADMIN_REFUSED)
            changes = await body_of(request)
            if not isinstance(changes, dict):
                raise Invalid.single((), "expected a JSON object of fault settings")
            faults.update(changes)
            log.info("sandbox.faults", **changes)
        return json_response(faults.snapshot())

    async def stream(websocket: WebSocket) -> None:
        await serve_stream(websocket, market, hub)

    routes: list[BaseRoute] = [
        *_both("/auth/oauth/v2/token", token, ["POST"]),
        *_both("/api/v1/order", order_collection, ["GET", "POST"]),
        *_both("/api/v1/order/{order_id}", order_item, ["GET", "DELETE"]),
        *_both("/api/v1/verification/metering", verification, ["POST"]),
        *_both("/api/v1/verification/baseline", verification, ["POST"]),
        *_both("/sandbox/clock", sandbox_clock, ["GET"]),
        *_both("/sandbox/orders", sandbox_orders, ["GET"]),
        *_both("/sandbox/stats", sandbox_stats, ["GET"]),
        *_both("/sandbox/faults", sandbox_faults, ["GET", "POST"]),
        *(
            WebSocketRoute(f"/api/v1/ws/{channel}{slash}", stream)
            for channel in Channel
            for slash in ("", "/")
        ),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        # Unknown routes and wrong methods answer in the API's JSON shape, not Starlette's text.
        assert isinstance(exc, HTTPException)
        return json_response({"detail": exc.detail}, exc.status_code, exc.headers)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return json_response({"detail": exc.detail}, exc.status, exc.headers)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Invalid)
        return json_response({"detail": _detail(exc)}, 422)

    async def market_error(request: Request, exc: Exception) -> Response:
        order_id = str(exc)
        if isinstance(exc, OrderNotFound):
            return json_response({"detail": f"Order {order_id} not found"}, 404)
        if isinstance(exc, OrderFinal):
            return json_response({"detail": f"Order {order_id} is final and cannot change"}, 409)
        if isinstance(exc, BaselineLocked):
            return json_response(
                {"detail": f"Order {order_id} has matched or ended: its baseline is fixed"}, 409
            )
        if isinstance(exc, MeteringRefused):
            if exc.invalid:
                loc = ["body", "measurement_type"]
                detail = [{"loc": loc, "msg": str(exc), "type": "value_error"}]
                return json_response({"detail": detail}, 422)
            return json_response({"detail": str(exc)}, 409)
        if isinstance(exc, NotASell):
            detail = [
                {
                    "loc": ["body", "order_id"],
                    "msg": "verification data belongs to sell orders only",
                    "type": "value_error",
                }
            ]
            return json_response({"detail": detail}, 422)
        raise exc

    app = Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: http_error,
            ApiError: api_error,
            Invalid: invalid,
            OrderNotFound: market_error,
            OrderFinal: market_error,
            BaselineLocked: market_error,
            NotASell: market_error,
            MeteringRefused: market_error,
        },
    )
    app.router.redirect_slashes = False
    return app


class RequestLog:
    """ASGI middleware: one log line and one stats count per HTTP request."""

    def __init__(self, app: ASGIApp, market: SandboxMarket) -> None:
        self.app = app
        self.market = market

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.market.requests[(f"{scope['method']} {template.rstrip('/') or '/'}", status)] += 1
            log.info(
                "http.request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                user=scope.get("flexbot.user"),
                ms=round((time.perf_counter() - started) * 1000, 2),
            )
