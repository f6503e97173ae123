"""The market client's tokens (`flexbot.market.auth`) against the in-process sandbox.

Every test talks to the sandbox over real loopback HTTP through a recording transport, so the token
endpoint calls (their grant type, status and trio time) are counted exactly. The sandbox judges
token lifetimes on its manual wall clock, the client schedules renewals on trio's clock: tests that
let tokens expire run a small task that advances the wall in step with trio time.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import attrs
import httpx
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from flexbot.backoff import Backoff
from flexbot.market import (
    AuthFailed,
    ConnectionSettings,
    Credentials,
    CredentialsMissing,
    MarketClient,
    Secret,
    TokenManager,
    Unauthorized,
    resolve_password,
)
from flexbot.market.auth import TOKEN_PATH
from flexbot.sandbox.market import MarketSettings
from tests.conftest import USERS, MaxRandom, Sandbox

pytestmark = pytest.mark.anyio

API_PATH = "/api/v1/order"


@pytest.fixture
def market_settings() -> MarketSettings:
    # No rate limit: the manual wall clock never refills the buckets on its own.
    return MarketSettings(users=USERS, seed=7, rate_limit=None)


# --- helpers --------------------------------------------------------------------------------------


@attrs.define
class Call:
    method: str
    path: str
    grant_type: str | None
    started: float  # trio time
    status: int | None = None


class Recorder(httpx.AsyncBaseTransport):
    """Forwards to a real transport and records each request (never its secrets)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.calls: list[Call] = []
        self.token_bodies: list[dict[str, Any]] = []  # token responses, for the strict test

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        grant_type = None
        if request.url.path == TOKEN_PATH:
            grant_type = dict(parse_qsl(request.content.decode())).get("grant_type")
        call = Call(request.method, request.url.path, grant_type, trio.current_time())
        self.calls.append(call)
        response = await self.inner.handle_async_request(request)
        call.status = response.status_code
        if grant_type is not None and response.status_code == 200:
            body = await response.aread()
            self.token_bodies.append(httpx.Response(200, content=body).json())
            return httpx.Response(200, headers=response.headers, content=body)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def token_calls(self) -> list[tuple[str | None, int | None]]:
        return [(c.grant_type, c.status) for c in self.calls if c.path == TOKEN_PATH]

    def api_statuses(self) -> list[int | None]:
        return [c.status for c in self.calls if c.path.startswith("/api/")]


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


def manager(http: httpx.AsyncClient, password: str = "alice-pw", **kwargs: Any) -> TokenManager:
    return TokenManager(http, Credentials("alice", Secret(password)), **kwargs)


async def keep_wall_in_step(sandbox: Sandbox, step_s: float = 0.02) -> None:
    """Advance the sandbox's manual wall by exactly the trio time that passes."""
    last = trio.current_time()
    while True:
        await trio.sleep(step_s)
        now = trio.current_time()
        sandbox.advance(now - last)
        last = now


async def until(condition: Callable[[], bool], bound: float = 5.0) -> None:
    """Wait (bounded) for a condition that another task makes true. The counters polled here
    belong to code under test that offers no event to wait on."""
    with trio.fail_after(bound):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.005)


async def api_status(http: httpx.AsyncClient, token: str) -> int:
    r = await http.get(API_PATH, headers={"Authorization": f"Bearer {token}"})
    return r.status_code


# --- login and token() ----------------------------------------------------------------------------


async def test_login_uses_the_password_grant_and_the_token_works(
    http: httpx.AsyncClient, recorder: Recorder
) -> None:
    tokens = manager(http)
    await tokens.login()
    token = await tokens.token()
    assert await tokens.token() == token  # a fresh token is reused, not re-fetched
    assert recorder.token_calls() == [("password", 200)]
    assert tokens.grants == 1
    assert await api_status(http, token) == 200


async def test_token_logs_in_on_first_use(http: httpx.AsyncClient, recorder: Recorder) -> None:
    tokens = manager(http)
    assert await api_status(http, await tokens.token()) == 200
    assert recorder.token_calls() == [("password", 200)]


async def test_token_renews_an_expired_token_before_handing_it_out(
    sandbox: Sandbox, http: httpx.AsyncClient, recorder: Recorder
) -> None:
    sandbox.market.faults.update({"token_ttl": 1})
    tokens = manager(http)
    await tokens.login()
    first = await tokens.token()
    await trio.sleep(1.05)  # the token's whole lifetime passes on trio's clock...
    sandbox.advance(1.05)  # ...and on the sandbox's wall
    assert await api_status(http, first) == 401
    second = await tokens.token()
    assert second != first
    assert await api_status(http, second) == 200
    assert recorder.token_calls() == [("password", 200), ("refresh_token", 200)]


# --- the refresher --------------------------------------------------------------------------------


# Virtual time: under a loaded machine real time would starve the request loop and the counts.
@pytest.mark.parametrize(
    "anyio_backend", [("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})]
)
async def test_refresher_renews_ahead_of_expiry_with_the_refresh_grant_and_never_floods(
    sandbox: Sandbox, http: httpx.AsyncClient, recorder: Recorder
) -> None:
    ttl, run_s = 2.0, 6.0
    sandbox.market.faults.update({"token_ttl": ttl})
    tokens = manager(http)
    client = MarketClient(http, tokens)
    calls = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_wall_in_step, sandbox)
        await nursery.start(tokens.run)
        started = trio.current_time()
        while trio.current_time() - started < run_s:
            assert await client.list_orders() == []  # raises on any error
            calls += 1
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()

    assert calls > 50
    # Renewed ahead of expiry: no request ever carried an expired token.
    assert 401 not in recorder.api_statuses()
    assert set(recorder.api_statuses()) == {200}
    grants = recorder.token_calls()
    assert grants[0] == ("password", 200)
    assert set(grants[1:]) == {("refresh_token", 200)}
    # Renewals at 0.7..0.8 of the lifetime (refresh_fraction 0.8, jitter 0.1): about run/(0.8 ttl).
    renewals = len(grants) - 1
    assert run_s / (0.8 * ttl) - 1 <= renewals <= run_s / (0.7 * ttl) + 1
    assert tokens.grants == len(grants)
    # Never two renewals in a burst: consecutive token calls are at least 0.7 × ttl apart.
    times = [c.started for c in recorder.calls if c.path == TOKEN_PATH]
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.7 * ttl - 0.05


async def test_refresher_renewal_times_follow_refresh_fraction_and_jitter(
    sandbox: Sandbox, http: httpx.AsyncClient, recorder: Recorder
) -> None:
    sandbox.market.faults.update({"token_ttl": 1})
    # MaxRandom takes the full jitter: the renewal comes at (0.5 - 0.2) of the lifetime.
    tokens = manager(http, refresh_fraction=0.5, jitter=0.2, rng=MaxRandom())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_wall_in_step, sandbox)
        await nursery.start(tokens.run)
        await until(lambda: tokens.grants >= 4, bound=3)
        nursery.cancel_scope.cancel()
    times = [c.started for c in recorder.calls if c.path == TOKEN_PATH]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.3 - 0.01 <= gap <= 0.3 + 0.1 for gap in gaps), gaps


def test_refresh_fraction_and_jitter_are_checked() -> None:
    http = httpx.AsyncClient()
    for bad in ({"refresh_fraction": 0}, {"refresh_fraction": 1.5}, {"jitter": 0.8}):
        with pytest.raises(ValueError, match="refresh_fraction"):
            manager(http, **bad)


# --- refusals and fallbacks -----------------------------------------------------------------------


async def test_expired_refresh_token_falls_back_to_the_password_grant(
    sandbox: Sandbox, http: httpx.AsyncClient, recorder: Recorder
) -> None:
    tokens = manager(http)
    client = MarketClient(http, tokens)
    await tokens.login()
    assert await client.list_orders() == []
    # Past the refresh lifetime (1800 s): the server refuses both the access and the refresh token.
    sandbox.advance(sandbox.market.settings.refresh_ttl_s + 1)
    assert await client.list_orders() == []  # 401 → refresh refused → password → retried once
    assert recorder.token_calls() == [
        ("password", 200),
        ("refresh_token", 400),
        ("password", 200),
    ]
    assert recorder.api_statuses() == [200, 401, 200]


async def test_refresh_token_used_by_someone_else_under_strict_refresh_falls_back_to_password(
    sandbox: Sandbox, http: httpx.AsyncClient, recorder: Recorder
) -> None:
    sandbox.market.issuer.strict_refresh = True  # a used refresh token is dead at once
    tokens = manager(http)
    await tokens.login()
    stale = await tokens.token()
    # Another party replays our refresh token first: ours is spent.
    replay = {
        "client_id": "glocalflexmarket_public_api",
        "grant_type": "refresh_token",
        "refresh_token": recorder.token_bodies[0]["refresh_token"],
    }
    assert (await http.post(TOKEN_PATH, data=replay)).status_code == 200
    fresh = await tokens.renew_after_401(stale)
    assert fresh != stale
    assert await api_status(http, fresh) == 200
    assert recorder.token_calls() == [
        ("password", 200),
        ("refresh_token", 200),  # the replay
        ("refresh_token", 400),
        ("password", 200),
    ]


async def test_wrong_password_raises_auth_failed_and_is_not_retried(
    http: httpx.AsyncClient, recorder: Recorder
) -> None:
    tokens = manager(http, password="not-alices-pw")
    with pytest.raises(AuthFailed, match="invalid_grant") as caught:
        await tokens.login()
    assert "not-alices-pw" not in str(caught.value)
    assert recorder.token_calls() == [("password", 401)]
    # The refresher ends too, at once, instead of looping on the token endpoint.
    with trio.fail_after(2), pytest.raises(AuthFailed):
        await tokens.run()
    assert recorder.token_calls() == [("password", 401), ("password", 401)]
    assert tokens.grants == 0


async def test_unknown_user_raises_auth_failed(http: httpx.AsyncClient) -> None:
    tokens = TokenManager(http, Credentials("mallory", Secret("x")))
    with pytest.raises(AuthFailed):
        await tokens.login()


async def test_token_endpoint_outage_is_retried_with_backoff_then_succeeds(
    sandbox: Sandbox, http: httpx.AsyncClient, recorder: Recorder
) -> None:
    sandbox.market.faults.update({"token_fail_for": 1.0})
    backoff = Backoff(base_s=0.1, cap_s=0.4)
    tokens = manager(http, backoff=backoff, rng=MaxRandom())
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_wall_in_step, sandbox)
            with trio.fail_after(5):
                await tokens.login()
            nursery.cancel_scope.cancel()
    calls = recorder.token_calls()
    assert calls[-1] == ("password", 200)
    assert set(calls[:-1]) == {("password", 503)}
    # 0.1 + 0.2 + 0.4 + 0.4 s of backoff covers the 1 s outage: five or six attempts, no flood.
    assert 5 <= len(calls) <= 6
    times = [c.started for c in recorder.calls if c.path == TOKEN_PATH]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for attempt, gap in enumerate(gaps):
        assert gap >= backoff.ceiling(attempt) - 0.005, gaps
    warnings = [e for e in logs if e["event"] == "auth.token_failed"]
    assert len(warnings) == len(calls) - 1
    assert warnings[0]["retry_in_s"] == 0.1
    assert sandbox.market.faults.injected["token_fail"] == len(calls) - 1


async def test_concurrent_renewals_after_401_share_one_grant(
    http: httpx.AsyncClient, recorder: Recorder
) -> None:
    tokens = manager(http)
    await tokens.login()
    stale = await tokens.token()
    results: list[str] = []

    async def renew() -> None:
        results.append(await tokens.renew_after_401(stale))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(renew)
    assert len(results) == 20
    assert len(set(results)) == 1
    assert results[0] != stale
    assert tokens.grants == 2
    assert recorder.token_calls() == [("password", 200), ("refresh_token", 200)]
    # A late caller with the same stale token gets the new one without another grant.
    assert await tokens.renew_after_401(stale) == results[0]
    assert tokens.grants == 2
    assert await api_status(http, results[0]) == 200


async def test_a_persistent_401_reaches_the_caller_after_exactly_one_renewal(
    sandbox: Sandbox,
    http: httpx.AsyncClient,
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens = manager(http)
    client = MarketClient(http, tokens)
    await tokens.login()
    from flexbot.sandbox.auth import NotAuthenticated

    def refuse(authorization: str | None) -> str:
        raise NotAuthenticated("Invalid token")

    monkeypatch.setattr(sandbox.market.issuer, "authenticate", refuse)
    with pytest.raises(Unauthorized) as caught:
        await client.list_orders()
    assert caught.value.status == 401
    assert recorder.api_statuses() == [401, 401]
    assert recorder.token_calls() == [("password", 200), ("refresh_token", 200)]


# --- secrets stay secret --------------------------------------------------------------------------


def test_secret_never_shows_its_value() -> None:
    secret = Secret("hunter2")
    assert secret.reveal() == "hunter2"
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret])):
        assert "hunter2" not in text
    assert secret == Secret("hunter2")
    assert secret != Secret("other")
    assert secret != "hunter2"
    assert hash(secret) == hash(Secret("hunter2"))


def test_credentials_and_connection_settings_never_show_the_password() -> None:
    credentials = Credentials("alice", Secret("hunter2"))
    settings = ConnectionSettings(url="https://x", username="alice", password=Secret("hunter2"))
    for obj in (credentials, settings):
        assert "hunter2" not in repr(obj)
        assert "hunter2" not in str(obj)
    assert "alice" in repr(credentials)


async def test_token_manager_errors_and_logs_never_show_a_token_or_password(
    sandbox: Sandbox,
    http: httpx.AsyncClient,
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secrets: list[str] = ["alice-pw", "wrong-pw-123"]
    errors: list[BaseException] = []
    with capture_logs() as logs:
        tokens = manager(http)
        client = MarketClient(http, tokens)
        await tokens.login()
        stale = await tokens.token()
        sandbox.advance(sandbox.market.settings.refresh_ttl_s + 1)  # refresh refused → password
        await client.list_orders()
        await tokens.renew_after_401(await tokens.token())
        with pytest.raises(AuthFailed) as failed:
            await manager(http, password="wrong-pw-123").login()
        errors.append(failed.value)
        from flexbot.sandbox.auth import NotAuthenticated

        def refuse(authorization: str | None) -> str:
            raise NotAuthenticated("Invalid token")

        monkeypatch.setattr(sandbox.market.issuer, "authenticate", refuse)
        with pytest.raises(Unauthorized) as unauthorized:
            await client.list_orders()
        errors.append(unauthorized.value)
    for body in recorder.token_bodies:
        secrets += [body["access_token"], body["refresh_token"]]
    assert stale in secrets
    assert len(secrets) == 2 + 2 * 4

    shown = [repr(tokens), str(vars(tokens)), repr(logs)]
    shown += [text for exc in errors for text in (str(exc), repr(exc), repr(exc.args))]
    for text in shown:
        for secret in secrets:
            assert secret not in text
    assert any(e["event"] == "auth.refresh_refused" for e in logs)


# --- resolve_password -----------------------------------------------------------------------------


def credential_dir(tmp_path: Path, password: str) -> Path:
    directory = tmp_path / "creds"
    directory.mkdir()
    (directory / "flexbot-password").write_text(password + "\n")
    return directory


def test_resolve_password_prefers_the_file_then_env_then_the_systemd_credential(
    tmp_path: Path,
) -> None:
    file = tmp_path / "pw"
    file.write_text("from-file\r\n")
    creds = credential_dir(tmp_path, "from-credential")
    env = {"FLEXBOT_PASSWORD": "from-env", "CREDENTIALS_DIRECTORY": str(creds)}
    assert resolve_password(file, env).reveal() == "from-file"
    assert resolve_password(None, env).reveal() == "from-env"
    assert resolve_password(None, {"CREDENTIALS_DIRECTORY": str(creds)}).reveal() == (
        "from-credential"
    )
    # An empty variable is as good as none.
    env_empty = {"FLEXBOT_PASSWORD": "", "CREDENTIALS_DIRECTORY": str(creds)}
    assert resolve_password(None, env_empty).reveal() == "from-credential"


def test_resolve_password_keeps_inner_whitespace_and_strips_only_the_line_end(
    tmp_path: Path,
) -> None:
    file = tmp_path / "pw"
    file.write_text(" pass word \n")
    assert resolve_password(file, {}).reveal() == " pass word "


def test_resolve_password_names_every_place_it_looked(tmp_path: Path) -> None:
    empty_creds = tmp_path / "empty"
    empty_creds.mkdir()
    for env in ({}, {"CREDENTIALS_DIRECTORY": str(empty_creds)}):
        with pytest.raises(CredentialsMissing) as caught:
            resolve_password(None, env)
        message = str(caught.value)
        assert "password file" in message
        assert "$FLEXBOT_PASSWORD" in message
        assert "flexbot-password" in message


def test_resolve_password_reports_an_unreadable_file_without_falling_back(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CredentialsMissing) as caught:
        resolve_password(missing, {"FLEXBOT_PASSWORD": "from-env"})
    assert str(missing) in str(caught.value)
    assert "from-env" not in str(caught.value)
