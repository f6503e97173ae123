"""Capped exponential backoff with full jitter.

The n-th retry (n = 0, 1, …) waits a uniformly random time in [0, min(cap, base × factor**n)]: the
"full jitter" of the AWS architecture blog, which spreads reconnecting clients apart better than any
fixed schedule. After a connection has been stable for `reset_after_s`, the attempt count restarts.
"""

from __future__ import annotations

import random

from attrs import define, field, frozen


@frozen
class Backoff:
    base_s: float = 0.5
    cap_s: float = 30.0
    factor: float = 2.0

    def ceiling(self, attempt: int) -> float:
        """The largest delay the `attempt`-th retry may wait (attempt counts from 0)."""
        if attempt < 0:
            raise ValueError("attempt counts from 0")
        if self.factor <= 1 or self.base_s <= 0:
            return min(self.base_s, self.cap_s)
        # Stop multiplying once past the cap: base × factor**attempt would overflow a float.
        ceiling = self.base_s
        for _ in range(attempt):
            ceiling *= self.factor
            if ceiling >= self.cap_s:
                return self.cap_s
        return min(ceiling, self.cap_s)

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, self.ceiling(attempt))


@define
class Retrying:
    """The state of one retry loop: how many attempts so far, and the random source."""

    backoff: Backoff = field(factory=Backoff)
    rng: random.Random = field(factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        delay = self.backoff.delay(self.attempt, self.rng)
        self.attempt += 1
        return delay

    def next_delay_at_cap(self) -> float:
        """A wait in [cap / 2, cap], for a retry known to meet the same failure at once (a message
        over the size limit): never a backoff started over, and jittered without going near 0."""
        cap = self.backoff.cap_s
        delay = self.rng.uniform(cap / 2, cap)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
