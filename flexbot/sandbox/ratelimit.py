"""Per-user token buckets: `--rate-limit N/S` allows bursts of N and N requests per S seconds."""

from __future__ import annotations

import math
from collections.abc import Callable

from attrs import define, frozen


@frozen
class RateLimit:
    requests: int
    per_s: float

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """`10/1`, `10/s`, `100/10`, `600/60`."""
        count, sep, period = text.partition("/")
        try:
            requests = int(count)
            per_s = 1.0 if period in ("s", "") else float(period)
        except ValueError:
            raise ValueError(f"rate limit {text!r}: expected N/S, e.g. 10/1") from None
        if not sep or requests <= 0 or per_s <= 0:
            raise ValueError(f"rate limit {text!r}: expected N/S with N > 0 and S > 0, e.g. 10/1")
        return cls(requests, per_s)


@define
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, limit: RateLimit, wall: Callable[[], float]) -> None:
        self.limit = limit
        self._wall = wall
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, user: str) -> int | None:
        """Take one request from `user`'s bucket: None when allowed, else the whole seconds to wait
        (what `Retry-After` carries)."""
        now = self._wall()
        rate = self.limit.requests / self.limit.per_s
        bucket = self._buckets.get(user)
        if bucket is None:
            bucket = self._buckets[user] = _Bucket(float(self.limit.requests), now)
        bucket.tokens = min(self.limit.requests, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        return max(1, math.ceil((1 - bucket.tokens) / rate))
