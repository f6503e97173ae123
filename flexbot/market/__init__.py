"""flexbot's connection to the GLocalFlex market: tokens, REST, WebSocket streams.

It knows nothing of strategies. Its public face is these names; the modules behind them each have
one job (`auth`, `rest`, `streams`, `feed`, `buffers`, `backoff`, `errors`, `session`).
"""

from flexbot.market.auth import AuthFailed, Credentials, Secret, TokenManager
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
from flexbot.market.feed import FeedSettings, MarketFeed, OrderSource, TradeEvent
from flexbot.market.rest import CancelResult, MarketClient, RetryPolicy
from flexbot.market.session import (
    ConnectionSettings,
    CredentialsMissing,
    MarketSession,
    connect,
    resolve_password,
)
from flexbot.market.streams import Endpoint, StreamConsumer, StreamSettings

__all__ = [
    "AuthFailed",
    "CancelResult",
    "Conflict",
    "ConnectionSettings",
    "Credentials",
    "CredentialsMissing",
    "Endpoint",
    "FeedSettings",
    "MarketClient",
    "MarketError",
    "MarketFeed",
    "MarketSession",
    "NotFound",
    "OrderSource",
    "OutcomeUnknown",
    "RateLimited",
    "Rejected",
    "RetryPolicy",
    "Secret",
    "ServerError",
    "StreamConsumer",
    "StreamSettings",
    "TokenManager",
    "TradeEvent",
    "Unauthorized",
    "connect",
    "resolve_password",
]
