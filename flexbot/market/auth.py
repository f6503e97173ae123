"""OAuth2 tokens for the market: one current token, shared by REST and WebSocket.

- `login()`: the password grant, at start.
- `run()`: the refresher task. It renews at `refresh_fraction` of the token's lifetime, minus up to
  `jitter` of it (so many daemons do not refresh in step), with the refresh grant; if that grant is
  refused it falls back to the password grant; if the token endpoint is down it retries with
  capped backoff, never in a tight loop.
- `token()`: the current access token; if it has expired (a refresher that was starved or an
  outage), it renews first, so callers never see an expired token when a fresh one can be had.
- `renew_after_401(stale)`: a REST call that got 401 with `stale` forces one renewal; concurrent
  callers share it (single flight) instead of each hitting the token endpoint.

Wrong credentials are not retried: `AuthFailed` ends the task, so the daemon stops with a clear
message instead of hammering the market. Tokens, passwords and refresh tokens never reach a log or
an exception message; `Secret` keeps them out of reprs too.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import httpx
import trio
from attrs import define, frozen

from flexbot import logs, wire
from flexbot.backoff import Backoff, Retrying
from flexbot.model import TokenResponse
from flexbot.problems import Invalid

log = logs.get_logger("flexbot.market.auth")

CLIENT_ID = "glocalflexmarket_public_api"
TOKEN_PATH = "/auth/oauth/v2/token"
TOKEN_BACKOFF = Backoff(base_s=1.0, cap_s=60.0)  # an outage of the token endpoint: back off gently


class Secret:
    """A string that never shows itself in a repr, a str() or a log line.

    Made, it is registered with the logging pipeline (`logs.remember_secret`), which hides it
    wherever it appears in a line: in an exception's message, a traceback, a URL. `short_lived`:
    a token, replaced on every refresh (the pipeline holds only the latest few of those).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str, *, short_lived: bool = False) -> None:
        self._value = value
        logs.remember_secret(value, short_lived=short_lived)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@frozen
class Credentials:
    username: str
    password: Secret


class AuthFailed(Exception):
    """The market refused our credentials, or the token endpoint is not one (a wrong URL):
    retrying cannot help, an operator must act."""


class TokenEndpointError(Exception):
    """The token endpoint could not be reached or failed (transient: retried with backoff)."""


@define
class _Grant:
    access: Secret
    refresh: Secret
    expires_at: float  # trio clock
    lifetime_s: float


class TokenManager:
    def __init__(
        self,
        http: httpx.AsyncClient,
        credentials: Credentials,
        *,
        refresh_fraction: float = 0.8,
        jitter: float = 0.1,
        backoff: Backoff = TOKEN_BACKOFF,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < refresh_fraction <= 1 or not 0 <= jitter < refresh_fraction:
            raise ValueError("need 0 < refresh_fraction <= 1 and 0 <= jitter < refresh_fraction")
        self._http = http
        self._credentials = credentials
        self.refresh_fraction = refresh_fraction
        self.jitter = jitter
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._grant: _Grant | None = None
        self._lock = trio.Lock()
        self.grants = 0  # token endpoint calls that succeeded, for tests and metrics

    # --- what callers use -----------------------------------------------------------------------

    @property
    def expires_at(self) -> float | None:
        """When the current access token expires (trio clock); None before the first login."""
        return None if self._grant is None else self._grant.expires_at

    async def token(self) -> str:
        grant = self._grant
        if grant is None or trio.current_time() >= grant.expires_at:
            grant = await self._renew(stale=grant)
        return grant.access.reveal()

    async def renew_after_401(self, stale: str) -> str:
        grant = self._grant
        if grant is not None and grant.access.reveal() != stale:
            return grant.access.reveal()  # someone renewed already
        return (await self._renew(stale=grant)).access.reveal()

    async def login(self) -> None:
        await self._renew(stale=None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The refresher: keeps a token fresh until cancelled. Logs in first if needed."""
        if self._grant is None:
            await self.login()
        task_status.started()
        while True:
            grant = self._grant
            assert grant is not None
            lead = grant.lifetime_s * (self.refresh_fraction - self._rng.uniform(0.0, self.jitter))
            renew_at = grant.expires_at - grant.lifetime_s + lead
            await trio.sleep_until(renew_at)
            if self._grant is grant:  # nobody renewed it meanwhile
                await self._renew(stale=grant)

    # --- the grants -----------------------------------------------------------------------------

    async def _renew(self, stale: _Grant | None) -> _Grant:
        """Renew once for everyone holding `stale`; retries transient failures with backoff."""
        async with self._lock:
            if self._grant is not None and self._grant is not stale:
                return self._grant
            retrying = Retrying(self._backoff, self._rng)
            while True:
                try:
                    grant = await self._obtain(self._grant)
                except TokenEndpointError as exc:
                    delay = retrying.next_delay()
                    log.warning("auth.token_failed", reason=str(exc), retry_in_s=round(delay, 2))
                    await trio.sleep(delay)
                    continue
                self._grant = grant
                self.grants += 1
                return grant

    async def _obtain(self, current: _Grant | None) -> _Grant:
        if current is not None:
            try:
                return await self._grant_request(
                    {"grant_type": "refresh_token", "refresh_token": current.refresh.reveal()},
                    keep_refresh=current.refresh,
                )
            except AuthFailed as exc:
                log.info("auth.refresh_refused", reason=str(exc), fallback="password")
        grant = await self._grant_request(
            {
                "grant_type": "password",
                "username": self._credentials.username,
                "password": self._credentials.password.reveal(),
            }
        )
        log.info("auth.logged_in", username=self._credentials.username)
        return grant

    async def _grant_request(
        self, form: Mapping[str, str], *, keep_refresh: Secret | None = None
    ) -> _Grant:
        """One token request. Transient failures (network, 5xx, 429) raise TokenEndpointError;
        an answer that retrying cannot change (400/401 refusals, any other 4xx, a 2xx that is no
        token response: a wrong URL) raises AuthFailed."""
        started = trio.current_time()
        try:
            response = await self._http.post(TOKEN_PATH, data={"client_id": CLIENT_ID, **form})
        except httpx.HTTPError as exc:
            raise TokenEndpointError(f"{type(exc).__name__} on the token endpoint") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise TokenEndpointError(f"token endpoint answered {response.status_code}")
        if response.status_code in (400, 401):
            raise AuthFailed(_oauth_error(response))
        if not response.is_success:
            raise AuthFailed(
                f"the token endpoint answered {response.status_code}: check the market URL"
            )
        try:
            issued = wire.decode(response.content, TokenResponse)
        except Invalid:
            raise AuthFailed(
                "the token endpoint's answer is not an OAuth2 token response: check the market URL"
            ) from None
        lifetime = max(1.0, float(issued.expires_in))
        # OAuth2 lets a refresh answer leave the refresh token out: the old one then stays.
        refresh = (
            Secret(issued.refresh_token, short_lived=True) if issued.refresh_token else keep_refresh
        )
        return _Grant(
            access=Secret(issued.access_token, short_lived=True),
            refresh=refresh or Secret(""),
            expires_at=started + lifetime,
            lifetime_s=lifetime,
        )


def _oauth_error(response: httpx.Response) -> str:
    """`invalid_grant: Invalid user credentials` from an OAuth2 error body, never the request."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        error = str(body.get("error", f"HTTP {response.status_code}"))
        description = body.get("error_description")
        return f"{error}: {description}" if description else error
    return f"HTTP {response.status_code}"
