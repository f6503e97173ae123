"""Simulated traders, so that the sandbox's book, ticker and contracts see realistic traffic.

`--counterparties N` runs N seeded traders (users `counterparty-1` … `counterparty-N`) in one trio
task. Actions arrive as a Poisson process on the wall clock (mean `interval_s` per trader); each is
one of:

- place an order (~85%): buy or sell, on one of the next eight quarter-hours that start at least
  15 minutes ahead (market time), lasting 15, 30 or 60 minutes, 0.5 to 5 kW, in a random allowed
  country or none, priced around a reference price that drifts as a random walk (bids a little
  below it, asks a little above, so the two sides overlap and trade now and then); sells carry
  their baseline inline;
- cancel one of its live orders (~15%).

After each action the traders also submit metering for their sold contracts whose delivery has
ended: usually what they promised (95–105 %), sometimes half of it, so verification fails too.
They act on the market directly, not over HTTP, so they use no tokens and no rate limit.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal

import trio

from flexbot import logs, model, rules
from flexbot.model import ContractStatus, Side
from flexbot.problems import Invalid
from flexbot.sandbox.lifecycle import MeteringRefused
from flexbot.sandbox.market import SandboxMarket
from flexbot.sandbox.matching import MatchingError

log = logs.get_logger("flexbot.sandbox.counterparties")

QUARTER = timedelta(seconds=rules.MARKET_TIME_UNIT_S)
_COUNTRIES = ("", *sorted(rules.COUNTRIES))
_POWERS_W = tuple(Decimal(p) for p in (500, 1000, 2000, 5000))
_BASELINE_KW = Decimal(8)  # the consumption a trader's site would have without flexibility


class Counterparties:
    def __init__(self, market: SandboxMarket, count: int, *, seed: int | None = None) -> None:
        self.market = market
        self.users = [f"counterparty-{i + 1}" for i in range(count)]
        self._rng = random.Random(seed)
        self.reference_price = Decimal("0.20")  # €/kWh
        self._metered: set[str] = set()

    async def run(self, interval_s: float = 2.0) -> None:
        if not self.users:
            return
        rate = len(self.users) / interval_s
        while True:
            await trio.sleep(self._rng.expovariate(rate))
            self.act(self._rng.choice(self.users))
            self.submit_metering()

    def act(self, user: str) -> None:
        """One trader's move; a move the market refuses is simply not made."""
        try:
            if self._rng.random() < 0.15:
                self._cancel_one(user)
            else:
                self.market.place(user, self._order(user, self.market.clock.now()))
        except (Invalid, MatchingError) as exc:  # e.g. a window that just closed
            log.debug("counterparty.refused", user=user, error=str(exc))

    def _order(self, user: str, now: datetime) -> model.OrderRequest:
        rng = self._rng
        drift = Decimal(str(round(rng.gauss(0, 0.01), 4)))
        self.reference_price = min(
            Decimal("1.00"), max(Decimal("0.05"), self.reference_price * (1 + drift))
        )
        side = rng.choice((Side.BUY, Side.SELL))
        skew = Decimal(str(round(rng.uniform(-0.08, 0.04), 4)))
        if side is Side.SELL:
            skew = -skew
        price = (self.reference_price * (1 + skew)).quantize(Decimal("0.0001"))
        start = rules.ceil_to_grid(now + QUARTER) + QUARTER * rng.randrange(8)
        end = start + QUARTER * rng.choice((1, 2, 4))
        lead = (start - now).total_seconds()
        expiry = now + timedelta(seconds=rng.uniform(0.3, 0.9) * lead)
        power = rng.choice(_POWERS_W)
        location = model.Location(
            location_id=(f"{user}-site",), country_code=rng.choice(_COUNTRIES)
        )
        baseline = _series(start, end, _BASELINE_KW, now) if side is Side.SELL else None
        return model.OrderRequest(
            side=side,
            power=power,
            price=price,
            delivery_start=start,
            delivery_end=end,
            expiry_time=expiry,
            location=location,
            baseline=baseline,
        )

    def _cancel_one(self, user: str) -> None:
        live = [o for o in self.market.matcher.orders(user) if not o.is_final]
        if live:
            self.market.cancel_order(user, self._rng.choice(live).order_id)

    def submit_metering(self) -> None:
        """Meter every sold contract whose delivery has ended, once."""
        now = self.market.clock.now()
        for user in self.users:
            for order in self.market.matcher.orders(user):
                if order.side is not Side.SELL or order.order_id in self._metered:
                    continue
                contract = next(
                    (self.market.matcher.contracts[c] for c in order.contract_ids), None
                )
                if contract is None or contract.status is not ContractStatus.VERIFICATION_INITIATED:
                    continue
                factor = (
                    Decimal("0.5")
                    if self._rng.random() < 0.1
                    else Decimal(str(round(self._rng.uniform(0.95, 1.05), 3)))
                )
                consumption_kw = _BASELINE_KW - contract.power / 1000 * factor
                reading = _series(
                    contract.delivery_start, contract.delivery_end, consumption_kw, now
                )
                request = model.VerificationRequest(
                    order_id=order.order_id,
                    measurement_type=model.MeasurementType.METERING,
                    metering_data=reading,
                )
                self._metered.add(order.order_id)
                try:
                    self.market.record_verification(user, request)
                except (Invalid, MatchingError, MeteringRefused) as exc:
                    log.warning("counterparty.metering_refused", user=user, error=str(exc))


def _series(start: datetime, end: datetime, power_kw: Decimal, now: datetime) -> model.MeterReading:
    """A flat 15-minute series in kWh over [start, end]; each point stamps its interval's end."""
    points = []
    t = start
    while t < end:
        t += QUARTER
        points.append(model.DataPoint(timestamp=t, value=(power_kw / 4).quantize(Decimal("0.001"))))
    return model.MeterReading(
        data_points=tuple(points),
        metering_id=f"sim-{start:%Y%m%dT%H%M}",
        created_at=now,
        reading_start=start,
        reading_end=end,
        resolution=rules.MARKET_TIME_UNIT_S,
        unit_measured="kWh",
    )
