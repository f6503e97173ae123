"""The market client's errors: one tree, caught by meaning, not by HTTP status.

    MarketError
    ├── Rejected          422: the market refused the request; `.problems` holds its located detail
    ├── NotFound          404: unknown order, or another user's
    ├── Conflict          409: the order cannot change any more (final), or a measurement conflicts
    ├── Unauthorized      401 after one token refresh and one retry
    ├── RateLimited       429 after the allowed retries; `.retry_after_s`
    ├── ServerError       5xx (or a transport failure) after the retries an idempotent call gets
    └── OutcomeUnknown    a non-idempotent call (an order submission) whose effect is unknown:
                          it may or may not have happened. Never resend blindly: reconcile first.

Messages keep the market's own words; none carries a token, a password or a header.
"""

from __future__ import annotations

from collections.abc import Sequence

from flexbot.problems import Problem


class MarketError(Exception):
    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        # True when an earlier attempt of the same call may have taken effect (its answer was
        # lost and the call was retried): a 409 then may be our own first attempt's doing.
        self.retried = False


class Rejected(MarketError):
    def __init__(self, message: str, problems: Sequence[Problem] = (), *, status: int = 422):
        super().__init__(message, status=status)
        self.problems = tuple(problems)


class NotFound(MarketError):
    pass


class Conflict(MarketError):
    pass


class Unauthorized(MarketError):
    pass


class RateLimited(MarketError):
    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message, status=429)
        self.retry_after_s = retry_after_s


class ServerError(MarketError):
    pass


class OutcomeUnknown(MarketError):
    """The request may have taken effect. For an order: reconcile to find out, never resend."""
