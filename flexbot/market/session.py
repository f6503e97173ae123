"""Connecting to the market: settings, credentials, and the shared HTTP client.

`connect(settings)` opens one `httpx.AsyncClient` (connection reuse, TLS verification on, an
optional CA bundle, a timeout on every call), logs in, and yields a `MarketSession` whose token
manager, REST client and feed all share that one token.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from attrs import frozen

from flexbot.market.auth import Credentials, Secret, TokenManager
from flexbot.market.feed import FeedSettings, MarketFeed, OrderSource
from flexbot.market.rest import MarketClient
from flexbot.market.streams import MAX_BOOK_MESSAGE_BYTES, Endpoint, StreamSettings

PASSWORD_ENV = "FLEXBOT_PASSWORD"
CREDENTIAL_NAME = "flexbot-password"  # systemd: LoadCredential=flexbot-password:/path


class CredentialsMissing(Exception):
    """No password could be found: the message says where it was looked for."""


@frozen
class ConnectionSettings:
    url: str  # https://host[:port], the one origin of auth, REST and WebSocket
    username: str
    password: Secret
    ca_bundle: Path | None = None
    timeout_s: float = 10.0
    ping_interval_s: float = 20.0  # the streams' liveness pings
    # The largest /orderbook message read; a larger one closes the link (1009), see streams.
    max_book_message_bytes: int = MAX_BOOK_MESSAGE_BYTES

    @property
    def ws_url(self) -> str:
        scheme, sep, rest = self.url.partition("://")
        if not sep:
            return self.url
        return ("wss" if scheme == "https" else "ws") + "://" + rest.rstrip("/")


def resolve_password(
    password_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> Secret:
    """The password from, in order: a file, `$FLEXBOT_PASSWORD`, a systemd credential."""
    env = os.environ if environ is None else environ
    if password_file is not None:
        try:
            return Secret(password_file.read_text(encoding="utf-8").rstrip("\r\n"))
        except UnicodeDecodeError:
            raise CredentialsMissing(
                f"the password file {password_file} is not UTF-8 text"
            ) from None
        except OSError as exc:
            raise CredentialsMissing(
                f"cannot read the password file {password_file}: {exc.strerror}"
            ) from None
    if env.get(PASSWORD_ENV):
        return Secret(env[PASSWORD_ENV])
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = Path(directory) / CREDENTIAL_NAME
        if path.is_file():
            try:
                return Secret(path.read_text(encoding="utf-8").rstrip("\r\n"))
            except (OSError, UnicodeDecodeError):
                raise CredentialsMissing(
                    f"the systemd credential {CREDENTIAL_NAME!r} cannot be read as UTF-8 text"
                ) from None
    raise CredentialsMissing(
        f"no market password: give a password file, set ${PASSWORD_ENV}, or load the systemd "
        f"credential {CREDENTIAL_NAME!r}"
    )


def ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """Verification always on; a private CA (e.g. the sandbox's) is added, not substituted."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


@frozen
class MarketSession:
    settings: ConnectionSettings
    http: httpx.AsyncClient
    tokens: TokenManager
    client: MarketClient
    ssl: ssl.SSLContext | None

    def feed(
        self,
        *,
        orders: OrderSource | None = None,
        endpoints: tuple[Endpoint, ...] = tuple(Endpoint),
        streams: StreamSettings | None = None,
        recorder: Callable[[Endpoint, str | bytes], None] | None = None,
    ) -> MarketFeed:
        streams = streams or StreamSettings(
            ws_url=self.settings.ws_url,
            ping_interval_s=self.settings.ping_interval_s,
            max_book_message_bytes=self.settings.max_book_message_bytes,
        )
        settings = FeedSettings(streams=streams)
        return MarketFeed(
            settings,
            self.client,
            self.tokens,
            orders=orders,
            ssl_context=self.ssl,
            endpoints=endpoints,
            recorder=recorder,
        )


@asynccontextmanager
async def connect(
    settings: ConnectionSettings, *, login: bool = True
) -> AsyncIterator[MarketSession]:
    """Open the session; with `login=False` the caller logs in (e.g. to bound how long it may
    take: the token manager itself retries an unreachable market for ever)."""
    context = ssl_context(settings.ca_bundle) if settings.url.startswith("https") else None
    async with httpx.AsyncClient(
        base_url=settings.url,
        verify=context if context is not None else True,
        timeout=httpx.Timeout(settings.timeout_s),
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
    ) as http:
        tokens = TokenManager(http, Credentials(settings.username, settings.password))
        if login:
            await tokens.login()
        yield MarketSession(settings, http, tokens, MarketClient(http, tokens), context)
