"""A simulated fleet: batteries and loads at several sites that announce their state the way real
ones would, through the asset protocol (`flexbot/v1/<site>/<asset>/state`, retained, JSON).

It is the device side, written apart from flexbot's asset package (the sandbox stands on the core
only), so the demo shows flexbot discovering assets from what they publish, not from what it was
told. Each asset wanders a little around its own course (a seeded walk); a battery's charge
follows its own power. `publish(topic, payload, retain)` is the transport: an MQTT client, or the
in-process bus of the demo.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

import attrs
import orjson
import trio

from flexbot import wire
from flexbot.clock import MarketClock


class Publish(Protocol):
    def __call__(self, topic: str, payload: bytes, *, retain: bool = False) -> object: ...


@attrs.define
class SimulatedAsset:
    site: str
    name: str
    kind: str  # battery | load
    power_w: float  # its own course now
    min_power_w: float
    max_power_w: float
    energy_wh: float | None = None
    min_energy_wh: float | None = None
    max_energy_wh: float | None = None
    efficiency: float = 0.92
    max_reduction_s: float | None = None

    def state(self, at: str) -> dict[str, object]:
        body: dict[str, object] = {
            "ts": at,
            "kind": self.kind,
            "power_w": round(self.power_w, 1),
            "min_power_w": self.min_power_w,
            "max_power_w": self.max_power_w,
            "available": True,
        }
        if self.kind == "battery":
            body |= {
                "energy_wh": round(self.energy_wh or 0.0, 1),
                "min_energy_wh": self.min_energy_wh,
                "max_energy_wh": self.max_energy_wh,
                "efficiency": self.efficiency,
            }
        if self.max_reduction_s is not None:
            body["max_reduction_s"] = self.max_reduction_s
        return body


def demo_fleet() -> list[SimulatedAsset]:
    """Two sites: a home battery and a heat pump at one, a larger battery and an EV charger at
    the other."""
    return [
        SimulatedAsset("site-1", "battery", "battery", 0.0, -5000, 5000, 7000, 1000, 10000),
        SimulatedAsset("site-1", "heat-pump", "load", 2400.0, 400, 3000, max_reduction_s=1800),
        SimulatedAsset("site-2", "battery", "battery", 500.0, -3000, 3000, 4500, 600, 6000),
        SimulatedAsset("site-2", "ev-charger", "load", 3700.0, 1400, 3700, max_reduction_s=3600),
    ]


class SimulatedFleet:
    def __init__(
        self,
        assets: Sequence[SimulatedAsset],
        clock: MarketClock,
        publish: Publish,
        *,
        prefix: str = "flexbot/v1",
        interval_s: float = 30.0,  # market seconds between two states of an asset
        seed: int = 1,
    ) -> None:
        self.assets = list(assets)
        self.clock = clock
        self.publish = publish
        self.prefix = prefix.rstrip("/")
        self.interval_s = interval_s
        self._rng = random.Random(seed)
        self.published = 0

    def announce(self) -> None:
        """Every asset's state now (retained: a subscriber that comes later hears it at once)."""
        at = wire.format_datetime(self.clock.now())
        for asset in self.assets:
            topic = f"{self.prefix}/{asset.site}/{asset.name}/state"
            self.publish(topic, orjson.dumps(asset.state(at)), retain=True)
            self.published += 1

    def step(self, seconds: float) -> None:
        """Each asset wanders around its course; a battery's charge follows its power."""
        for asset in self.assets:
            span = asset.max_power_w - asset.min_power_w
            wander = self._rng.uniform(-0.03, 0.03) * span
            asset.power_w = min(asset.max_power_w, max(asset.min_power_w, asset.power_w + wander))
            if asset.kind == "battery" and asset.energy_wh is not None:
                low, high = asset.min_energy_wh or 0.0, asset.max_energy_wh or asset.energy_wh
                asset.energy_wh += asset.power_w * seconds / 3600
                if not low <= asset.energy_wh <= high:  # full or empty: it stops
                    asset.energy_wh = min(high, max(low, asset.energy_wh))
                    asset.power_w = 0.0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.announce()
        task_status.started()
        while True:
            await trio.sleep(self.interval_s / self.clock.scale)
            self.step(self.interval_s)
            self.announce()
