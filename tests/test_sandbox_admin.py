"""The sandbox's own routes (issue 14): who may change the sandbox, and the token endpoint's rate
limit.

`POST /sandbox/faults` answers only when faults were switchable from the start (a fault on at
start) or with the operator's admin token (`$FLEXBOT_SANDBOX_ADMIN_TOKEN`, compared in constant
time, never logged); otherwise 403 with a message that says how. The read-only routes stay open.
The token endpoint has per-user buckets like the REST routes: 429 with `Retry-After`.

In-process tests run the sandbox of conftest.py over real loopback HTTP with its manual wall clock;
the last tests start `flexbot sandbox` as a user does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from flexbot import wire
from flexbot.sandbox.app import ADMIN_HEADER, ADMIN_REFUSED
from flexbot.sandbox.faults import FaultSettings
from flexbot.sandbox.launch import launched_sandbox
from flexbot.sandbox.market import ADMIN_TOKEN_ENV, MarketSettings
from flexbot.sandbox.ratelimit import RateLimit
from tests.conftest import USERS, Sandbox
from tests.processes import READY_S, ROOT
from tests.test_sandbox_conformance import (
    CLIENT_ID,
    FORM,
    TOKEN_PATH,
    password_form,
    refresh,
)

pytestmark = pytest.mark.anyio

ADMIN_TOKEN = "operator-s3cret-7f1c"
DEFAULT_FAULTS = wire.CONVERTER.unstructure(FaultSettings())


@pytest.fixture
def market_settings(request: pytest.FixtureRequest) -> MarketSettings:
    """No rate limit and no admin token unless a test asks (indirect parametrization)."""
    overrides: dict[str, Any] = getattr(request, "param", {})
    base: dict[str, Any] = {"users": USERS, "seed": 7, "rate_limit": None, "admin_token": None}
    return MarketSettings(**(base | overrides))


def with_market(**overrides: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("market_settings", [overrides], indirect=True, ids=[""])


async def fault_settings(http: httpx.AsyncClient) -> dict[str, Any]:
    r = await http.get("/sandbox/faults")
    assert r.status_code == 200
    settings: dict[str, Any] = r.json()["settings"]
    return settings


# --- POST /sandbox/faults -------------------------------------------------------------------------


async def test_faults_cannot_be_changed_on_a_sandbox_started_without_them(
    http: httpx.AsyncClient,
) -> None:
    with capture_logs() as logs:
        r = await http.post("/sandbox/faults", json={"rest_error_rate": 1.0})
    assert r.status_code == 403
    assert r.json() == {"detail": ADMIN_REFUSED}
    assert "--fault" in ADMIN_REFUSED
    assert ADMIN_TOKEN_ENV in ADMIN_REFUSED
    assert ADMIN_HEADER in ADMIN_REFUSED
    assert await fault_settings(http) == DEFAULT_FAULTS  # nothing changed
    refused = [e for e in logs if e["event"] == "sandbox.admin_refused"]
    assert [e["path"] for e in refused] == ["/sandbox/faults"]


@with_market(admin_token=ADMIN_TOKEN)
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-token"),
        pytest.param({ADMIN_HEADER: "wrong"}, id="wrong-token"),
        pytest.param({ADMIN_HEADER: ADMIN_TOKEN[:-1]}, id="a-prefix"),
        pytest.param({ADMIN_HEADER: ADMIN_TOKEN + "x"}, id="longer"),
        pytest.param({ADMIN_HEADER: ""}, id="empty"),
        pytest.param({ADMIN_HEADER: "pässwörd".encode()}, id="non-ascii"),
        pytest.param({"Authorization": f"Bearer {ADMIN_TOKEN}"}, id="as-bearer"),
    ],
)
async def test_anything_but_the_admin_token_is_refused(
    http: httpx.AsyncClient, headers: dict[str, Any]
) -> None:
    r = await http.post("/sandbox/faults", json={"ws_no_pong": True}, headers=headers)
    assert r.status_code == 403
    assert r.json() == {"detail": ADMIN_REFUSED}
    assert await fault_settings(http) == DEFAULT_FAULTS


@with_market(admin_token=ADMIN_TOKEN)
async def test_the_admin_token_changes_faults_and_never_reaches_the_log(
    http: httpx.AsyncClient,
) -> None:
    with capture_logs() as logs:
        r = await http.post(
            "/sandbox/faults", json={"rest_429_rate": 0.5}, headers={ADMIN_HEADER: ADMIN_TOKEN}
        )
        assert r.status_code == 200, r.text
        await http.post("/sandbox/faults", json={"rest_429_rate": 0.1})  # refused
    assert r.json()["settings"]["rest_429_rate"] == 0.5
    assert (await fault_settings(http))["rest_429_rate"] == 0.5
    assert [e["event"] for e in logs if e["event"].startswith("sandbox.")] == [
        "sandbox.faults",
        "sandbox.admin_refused",
    ]
    assert ADMIN_TOKEN not in repr(logs)


@with_market(admin_token="pässwörd")
async def test_a_non_ascii_admin_token_is_compared_as_utf8_bytes(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/sandbox/faults", json={"ws_no_pong": True}, headers={ADMIN_HEADER: "pässwörd".encode()}
    )
    assert r.status_code == 200, r.text


@with_market(admin_token="raw-\udcff")  # how os.environ keeps a byte that is not UTF-8
async def test_an_admin_token_of_raw_bytes_is_compared_as_those_bytes(
    http: httpx.AsyncClient,
) -> None:
    r = await http.post(
        "/sandbox/faults", json={"ws_no_pong": True}, headers={ADMIN_HEADER: b"raw-\xff"}
    )
    assert r.status_code == 200, r.text


@with_market(faults=FaultSettings(rest_latency_ms=1.0))
async def test_a_sandbox_started_with_a_fault_on_takes_changes_without_a_token(
    http: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    assert sandbox.market.settings.faults_switchable
    r = await http.post("/sandbox/faults", json={"rest_latency_ms": 0, "ws_no_pong": True})
    assert r.status_code == 200, r.text
    assert r.json()["settings"]["ws_no_pong"] is True


async def test_the_read_only_routes_stay_open(http: httpx.AsyncClient) -> None:
    for path in ("/sandbox/clock", "/sandbox/orders", "/sandbox/stats", "/sandbox/faults"):
        r = await http.get(path)
        assert r.status_code == 200, (path, r.text)


def test_the_admin_token_comes_from_the_environment_and_stays_out_of_reprs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ADMIN_TOKEN_ENV, ADMIN_TOKEN)
    settings = MarketSettings()
    assert settings.admin_token == ADMIN_TOKEN
    assert ADMIN_TOKEN not in repr(settings)
    assert not settings.faults_switchable
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "")
    assert MarketSettings().admin_token is None  # empty means unset, never "the empty token"


# --- the token endpoint's rate limit --------------------------------------------------------------


async def password_grant(
    http: httpx.AsyncClient, username: str, password: str | None = None
) -> httpx.Response:
    form = password_form(username, USERS.get(username, "x") if password is None else password)
    return await http.post(TOKEN_PATH, content=form, headers=FORM)


def assert_limited(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    assert r.json()["error"] == "too_many_requests"
    retry_after = r.headers["retry-after"]
    assert retry_after.isdigit()
    assert int(retry_after) >= 1
    return int(retry_after)


@with_market(rate_limit=RateLimit(3, 1.0))
async def test_token_requests_are_limited_per_user_with_retry_after(
    http: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    first = (await password_grant(http, "alice")).json()
    for _ in range(2):
        assert (await password_grant(http, "alice")).status_code == 200
    retry_after = assert_limited(await password_grant(http, "alice"))
    # A refresh speaks for the same user, and so does a wrong password (no free guessing).
    assert_limited(await refresh(http, first["refresh_token"]))
    assert_limited(await password_grant(http, "alice", "guess"))
    # Bob has his own bucket; the REST routes have theirs.
    assert (await password_grant(http, "bob")).status_code == 200
    alice = {"Authorization": f"Bearer {first['access_token']}"}
    assert (await http.get("/api/v1/order", headers=alice)).status_code == 200

    sandbox.advance(retry_after)
    assert (await refresh(http, first["refresh_token"])).status_code == 200


@with_market(rate_limit=RateLimit(3, 1.0))
async def test_requests_for_no_known_user_share_one_bucket(http: httpx.AsyncClient) -> None:
    for name in ("mallory", "trudy", "eve"):
        assert (await password_grant(http, name)).status_code == 401
    assert_limited(await password_grant(http, "oscar"))
    bogus = f"client_id={CLIENT_ID}&grant_type=refresh_token&refresh_token=nope".encode()
    assert_limited(await http.post(TOKEN_PATH, content=bogus, headers=FORM))
    assert (await password_grant(http, "alice")).status_code == 200  # known users unaffected


@with_market(rate_limit=None)
async def test_without_a_rate_limit_the_token_endpoint_is_unlimited(
    http: httpx.AsyncClient,
) -> None:
    for _ in range(30):
        assert (await password_grant(http, "alice")).status_code == 200


# --- as a user starts it --------------------------------------------------------------------------


def post_faults(url: str, headers: dict[str, str]) -> int:
    r = httpx.post(f"{url}/sandbox/faults", json={"ws_no_pong": True}, headers=headers, timeout=5)
    return r.status_code


@pytest.mark.slow
def test_flexbot_sandbox_takes_its_admin_token_from_the_environment(tmp_path: Path) -> None:
    env = {ADMIN_TOKEN_ENV: ADMIN_TOKEN}
    with launched_sandbox(logs=tmp_path, ready_s=READY_S, stop_s=1.0, cwd=ROOT, env=env) as sb:
        assert post_faults(sb.url, {}) == 403
        assert post_faults(sb.url, {ADMIN_HEADER: ADMIN_TOKEN}) == 200
    log = (tmp_path / "sandbox.log").read_text() + (tmp_path / "sandbox.stderr.log").read_text()
    assert "sandbox.admin_refused" in log
    assert ADMIN_TOKEN not in log


@pytest.mark.slow
def test_flexbot_sandbox_started_with_a_fault_takes_changes_as_the_chaos_run_does(
    tmp_path: Path,
) -> None:
    args = ("--fault", "rest_latency_ms=1")
    with launched_sandbox(*args, logs=tmp_path, ready_s=READY_S, stop_s=1.0, cwd=ROOT) as sb:
        assert post_faults(sb.url, {}) == 200
