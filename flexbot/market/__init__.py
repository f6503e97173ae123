"""flexbot's connection to the GLocalFlex market: tokens, REST, WebSocket streams.

It knows nothing of strategies. Its public face is these names; the modules behind them each have
one job (`auth`, `rest`, `streams`, `feed`, `errors`, `session`); its buffers are
`flexbot.buffers`, shared with the engine.
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
    ssl_context,
)
from flexbot.market.streams import (
    MAX_BOOK_MESSAGE_BYTES,
    Endpoint,
    StreamConsumer,
    StreamSettings,
)

__all__ = [
    "MAX_BOOK_MESSAGE_BYTES",
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
    "ssl_context",
]
