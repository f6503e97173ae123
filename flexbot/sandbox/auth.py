"""OAuth2 for the sandbox: the password and refresh-token grants of a Keycloak-like server.

Tokens are opaque random strings. Each refresh returns a new refresh token; the old one stays valid
until it expires (spec §8), unless `strict_refresh` makes a used one invalid at once, to catch
clients that keep a stale token. Lifetimes run on the wall clock, not on the scaled market clock.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping

from attrs import frozen

from flexbot.model import TokenResponse

CLIENT_ID = "glocalflexmarket_public_api"
_PRUNE_EVERY = 256  # issues between sweeps of expired tokens, so memory stays bounded


class OAuthError(Exception):
    """An OAuth2 error response: `{"error": ..., "error_description": ...}` with an HTTP status."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description


class NotAuthenticated(Exception):
    """A request without a valid, unexpired access token (HTTP 401)."""


@frozen
class _Grant:
    user: str
    expires_at: float  # wall seconds


class TokenIssuer:
    def __init__(
        self,
        users: Mapping[str, str],
        *,
        wall: Callable[[], float],
        access_ttl_s: int = 300,
        refresh_ttl_s: int = 1800,
        strict_refresh: bool = False,
    ) -> None:
        self._users = dict(users)
        self._wall = wall
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        self.strict_refresh = strict_refresh
        self._access: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}
        self._issued = 0

    def token(self, form: Mapping[str, str], *, access_ttl_s: float | None = None) -> TokenResponse:
        """Answer a `POST /auth/oauth/v2/token` form, or raise `OAuthError`.

        `access_ttl_s` overrides the access token lifetime (the `token_ttl` fault)."""
        ttl = access_ttl_s or self.access_ttl_s
        if form.get("client_id") != CLIENT_ID:
            raise OAuthError(401, "invalid_client", f"client_id must be {CLIENT_ID}")
        grant_type = form.get("grant_type")
        if grant_type == "password":
            username, password = form.get("username", ""), form.get("password", "")
            known = self._users.get(username)
            # compare_digest takes str only when ASCII: compare the UTF-8 bytes.
            if known is None or not secrets.compare_digest(
                known.encode("utf-8"), password.encode("utf-8")
            ):
                raise OAuthError(401, "invalid_grant", "Invalid user credentials")
            return self._issue(username, ttl)
        if grant_type == "refresh_token":
            presented = form.get("refresh_token", "")
            grant = self._refresh.get(presented)
            if grant is None or grant.expires_at <= self._wall():
                raise OAuthError(400, "invalid_grant", "Invalid refresh token")
            if self.strict_refresh:
                del self._refresh[presented]
            return self._issue(grant.user, ttl)
        if not grant_type:
            raise OAuthError(400, "invalid_request", "Missing form parameter: grant_type")
        raise OAuthError(400, "unsupported_grant_type", f"Unsupported grant_type {grant_type!r}")

    def requester(self, form: Mapping[str, str]) -> str | None:
        """The known user a token request speaks for (the password grant's username, or the owner
        of a live refresh token), without checking the password; None for anyone else. The rate
        limit keys on it, so unknown names share one bucket and cannot grow the table."""
        if form.get("grant_type") == "password":
            username = form.get("username", "")
            return username if username in self._users else None
        if form.get("grant_type") == "refresh_token":
            grant = self._refresh.get(form.get("refresh_token", ""))
            return grant.user if grant is not None and grant.expires_at > self._wall() else None
        return None

    def authenticate(self, authorization: str | None) -> str:
        """The user behind an `Authorization: Bearer <token>` header, or `NotAuthenticated`."""
        if not authorization:
            raise NotAuthenticated("Not authenticated")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise NotAuthenticated("Malformed Authorization header: expected 'Bearer <token>'")
        grant = self._access.get(token)
        if grant is None:
            raise NotAuthenticated("Invalid token")
        if grant.expires_at <= self._wall():
            raise NotAuthenticated("Token expired")
        return grant.user

    def _issue(self, user: str, access_ttl_s: float) -> TokenResponse:
        now = self._wall()
        self._issued += 1
        if self._issued % _PRUNE_EVERY == 0:
            self._prune(now)
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self._access[access] = _Grant(user, now + access_ttl_s)
        self._refresh[refresh] = _Grant(user, now + self.refresh_ttl_s)
        return TokenResponse(
            access_token=access,
            refresh_token=refresh,
            expires_in=max(1, round(access_ttl_s)),
            refresh_expires_in=self.refresh_ttl_s,
            token_type="Bearer",
        )

    def _prune(self, now: float) -> None:
        for table in (self._access, self._refresh):
            for token in [t for t, g in table.items() if g.expires_at <= now]:
                del table[token]
