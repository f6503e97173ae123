"""Edge cases of the market client found in review: each test pins one behaviour.

Token-endpoint answers that no real market gives on demand (a 404 from a wrong URL, a refresh
answer without a refresh token, a 2xx cancel without an order) come from an `httpx.MockTransport`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import httpx
import pytest
import trio
import trio.testing

from flexbot import model
from flexbot.buffers import Conflator, DropOldest
from flexbot.market import AuthFailed, Credentials, MarketClient, Secret, TokenManager
from flexbot.market.auth import TOKEN_PATH
from flexbot.market.streams import StreamSettings

pytestmark = pytest.mark.anyio

Handler = Callable[[httpx.Request], httpx.Response]


def http_of(handler: Handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url="https://market.test", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("status", [403, 404, 405])
async def test_a_token_endpoint_that_is_not_one_fails_at_once(status: int) -> None:
    calls = 0

    def handler(_: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(status, text="<html>nope</html>")

    async with http_of(handler) as http:
        tokens = TokenManager(http, Credentials("alice", Secret("pw")))
        with pytest.raises(AuthFailed, match="check the market URL"):
            await tokens.login()
    assert calls == 1  # not retried: a wrong URL does not get better


async def test_a_2xx_that_is_no_token_response_fails_at_once() -> None:
    async with http_of(lambda _: httpx.Response(200, text="<html>portal</html>")) as http:
        with pytest.raises(AuthFailed, match="not an OAuth2 token response"):
            await TokenManager(http, Credentials("alice", Secret("pw"))).login()


async def test_a_refresh_answer_without_a_refresh_token_keeps_the_old_one() -> None:
    forms: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        forms.append(request.content)
        if b"grant_type=password" in request.content:
            return httpx.Response(
                200, json={"access_token": "a1", "refresh_token": "r1", "expires_in": 60}
            )
        return httpx.Response(200, json={"access_token": "a2", "expires_in": 60})

    async with http_of(handler) as http:
        tokens = TokenManager(http, Credentials("alice", Secret("pw")))
        await tokens.login()
        assert await tokens.renew_after_401("a1") == "a2"
        assert await tokens.renew_after_401("a2") == "a2"  # refreshed again, with r1 again
    refreshes = [f for f in forms if b"grant_type=refresh_token" in f]
    assert len(refreshes) == 2
    assert all(b"refresh_token=r1" in f for f in refreshes)  # r1 kept, no fallback to password
    assert sum(b"grant_type=password" in f for f in forms) == 1


async def test_a_cancel_answered_2xx_without_an_order_is_a_success() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == TOKEN_PATH:
            return httpx.Response(
                200, json={"access_token": "t", "refresh_token": "r", "expires_in": 60}
            )
        return httpx.Response(200, json={"detail": "order cancelled"})

    async with http_of(handler) as http:
        tokens = TokenManager(http, Credentials("alice", Secret("pw")))
        assert await MarketClient(http, tokens).cancel_order("o-1") is None


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf])
def test_stream_settings_refuse_intervals_that_would_spin_or_crash(value: float) -> None:
    with pytest.raises(ValueError, match="ping_interval_s"):
        StreamSettings(ws_url="ws://x", ping_interval_s=value)


@pytest.mark.parametrize(
    "make", [Conflator, lambda: DropOldest(4)], ids=["conflator", "drop-oldest"]
)
async def test_two_readers_of_a_buffer_never_strand_one(
    make: Callable[[], Conflator[int] | DropOldest[int]],
) -> None:
    buffer = make()
    got: list[int] = []

    async def reader() -> None:
        got.append(await buffer.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        buffer.put(1)
        await trio.testing.wait_all_tasks_blocked()
        buffer.put(2)
        with trio.fail_after(1):  # a stranded reader would never finish: the nursery would hang
            await trio.testing.wait_all_tasks_blocked()
    assert sorted(got) == [1, 2]


def test_a_token_response_may_leave_the_refresh_token_out() -> None:
    assert model.TokenResponse(access_token="a", expires_in=1).refresh_token == ""
