"""The synthetic meter: a seeded, deterministic site load for the demo and paper trading.

Power at market time t: `base + amplitude × sin(2π × hour_of_day / 24) + noise`, the noise drawn
from a generator seeded by (seed, t), so the same seed gives the same readings whatever the order
or the speed of the run. With `respond`, the load is lowered by the flexibility sold for the
window containing t (the assets deliver what was sold), which is what verification then finds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

import trio

from flexbot.clock import MarketClock
from flexbot.meters.source import Emit, Reading, SyntheticSettings

MAX_SLEEP_S = 0.5


def synthetic_power(settings: SyntheticSettings, at: datetime, delivering_w: Decimal) -> Decimal:
    hours = at.hour + at.minute / 60 + at.second / 3600
    wave = float(settings.amplitude_w) * math.sin(2 * math.pi * hours / 24)
    noise_rng = random.Random(f"{settings.seed}:{int(at.timestamp())}")
    noise = noise_rng.uniform(-float(settings.noise_w), float(settings.noise_w))
    power = Decimal(str(round(float(settings.base_w) + wave + noise, 1)))
    if settings.respond:
        power -= delivering_w
    return max(power, Decimal(0))


class SyntheticMeter:
    def __init__(
        self,
        meter_id: str,
        settings: SyntheticSettings,
        clock: MarketClock,
        *,
        delivering_w: Callable[[datetime], Decimal] = lambda _: Decimal(0),
        start: datetime | None = None,
    ) -> None:
        self.meter_id = meter_id
        self.settings = settings
        self._clock = clock
        self._delivering_w = delivering_w
        if start is None and settings.history_days > 0:
            start = clock.now() - timedelta(days=settings.history_days)
        self._next = start  # the next sample's market time; None: from now

    def samples_until(self, now: datetime) -> list[Reading]:
        """Every sample due up to `now` (on the interval grid from the first)."""
        step = timedelta(seconds=self.settings.interval_s)
        if self._next is None:
            self._next = now
        out = []
        while self._next <= now:
            at = self._next
            out.append(
                Reading(
                    self.meter_id, at, synthetic_power(self.settings, at, self._delivering_w(at))
                )
            )
            self._next = at + step
        return out

    async def run(self, emit: Emit) -> None:
        while True:
            samples = self.samples_until(self._clock.now())
            if samples:
                await emit(samples)
            assert self._next is not None
            await trio.sleep(min(self._clock.wall_seconds_until(self._next), MAX_SLEEP_S) or 0.01)
