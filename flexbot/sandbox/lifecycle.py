"""The life of a contract after the trade: verification, then settlement (spec §5, §7).

Market time drives every step; each step is scheduled on a heap, so advancing the clock costs only
the steps that are due. The rules, where the spec is silent (all [A]):

- At `delivery_end` a contract goes `created → verification_initiated`.
- The seller submits metering after delivery end, until `delivery_end + metering_deadline_s`.
  Verification runs as soon as both delivery has ended and metering is in:
  baseline B and metering M are each summed over the points that fall inside the delivery window
  (a point's timestamp is the end of its interval, so `start < t <= end`), in kWh;
  delivered = |B − M|, scheduled = contract energy in kWh, percentage = 100 × delivered / scheduled.
  It succeeds when percentage >= `min_delivered_pct`. It fails, with a reason, otherwise, or when
  the baseline or the metering does not cover the window (e.g. the legacy 2019 baseline), or when
  no metering came by the deadline.
- A success starts settlement at once: `settlement_initiated`, then after `settlement_delay_s`
  `settlement_completed_success` with amount_eur = price × min(delivered, scheduled).
- A sell order's `verification` mirrors its contract's (an all-or-nothing sell has one contract).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

import attrs
from attrs import frozen

from flexbot import model
from flexbot.model import ContractStatus, VerificationStatus
from flexbot.rules import MARKET_TIME_UNIT_S
from flexbot.sandbox.events import Event, OrderChanged
from flexbot.sandbox.matching import BookOrder, Matcher

_KWH = Decimal(1000)
_INSTANT = timedelta(microseconds=1)


class MeteringRefused(Exception):
    """Metering the market cannot take now (HTTP 409, or 422 where `invalid` is set)."""

    def __init__(self, message: str, *, invalid: bool = False) -> None:
        super().__init__(message)
        self.invalid = invalid


@frozen
class LifecycleRules:
    metering_deadline_s: int = 3600
    min_delivered_pct: Decimal = Decimal(90)
    settlement_delay_s: int = 300


_UNIT_KWH = {"kWh": Decimal(1), "Wh": _KWH}


class ReadingRejected(Exception):
    """A baseline or metering series that cannot be judged for the window; says why."""


def window_energy_kwh(reading: model.MeterReading, start: datetime, end: datetime) -> Decimal:
    """Energy of the delivery window in kWh: one point for each quarter hour of it.

    A point stamps the end of its interval (spec §7); a series stamped at interval starts is
    read as such too, since the docs are not consistent. Points outside the window are ignored
    (a series may cover more); a missing, repeated or off-grid point inside it rejects the series.
    """
    if reading.resolution != MARKET_TIME_UNIT_S:
        raise ReadingRejected(f"resolution is {reading.resolution} s, not {MARKET_TIME_UNIT_S} s")
    unit = _UNIT_KWH.get(reading.unit_measured)
    if unit is None:
        raise ReadingRejected(f"unknown unit {reading.unit_measured!r} (kWh or Wh)")
    stamps = [p.timestamp for p in reading.data_points]
    if len(set(stamps)) != len(stamps):
        raise ReadingRejected("a timestamp appears twice")
    values = {p.timestamp: p.value for p in reading.data_points}
    step = timedelta(seconds=MARKET_TIME_UNIT_S)
    count = int((end - start) / step)
    ends = [start + step * (i + 1) for i in range(count)]
    starts = [start + step * i for i in range(count)]
    inside = {t for t in values if start <= t <= end}
    for expected in (ends, starts):
        # Beyond the expected stamps, only a neighbour interval's stamp on the edge may appear.
        if set(expected) <= inside and inside - set(expected) <= {start, end}:
            return sum((values[t] for t in expected), Decimal(0)) / unit
    raise ReadingRejected("it does not hold one point for each quarter hour of the window")


class ContractLifecycle:
    def __init__(
        self, matcher: Matcher, new_id: Callable[[], str], rules: LifecycleRules = LifecycleRules()
    ) -> None:
        self.matcher = matcher
        self.rules = rules
        self._new_id = new_id
        self._metering: dict[str, model.MeterReading] = {}  # by sell order id
        self._due: list[tuple[datetime, int, str]] = []  # (when, tie-breaker, contract id)
        self._seq = 0
        self._settle_at: dict[str, datetime] = {}  # contract id -> when its settlement completes

    # --- inputs ---------------------------------------------------------------------------------

    def track(self, contract: model.Contract) -> None:
        """A new contract: its first step is due at delivery end."""
        self._schedule(contract.delivery_end, contract.contract_id)
        # The deadline is inclusive: metering at the deadline itself still counts.
        self._schedule(self._deadline(contract) + _INSTANT, contract.contract_id)

    def _deadline(self, contract: model.Contract) -> datetime:
        return contract.delivery_end + timedelta(seconds=self.rules.metering_deadline_s)

    def record_metering(self, order: BookOrder, reading: model.MeterReading, now: datetime) -> bool:
        """Take the seller's metering. True if new, False for an identical resubmission."""
        previous = self._metering.get(order.order_id)
        if previous is not None:
            if previous == reading:
                return False
            raise MeteringRefused(f"metering for order {order.order_id} was already received")
        if not order.contract_ids:
            raise MeteringRefused(f"order {order.order_id} has no contract to verify")
        contract = self.matcher.contracts[order.contract_ids[0]]
        if now < contract.delivery_end:
            raise MeteringRefused(
                f"metering is accepted after delivery end ({contract.delivery_end.isoformat()})",
                invalid=True,
            )
        if now > self._deadline(contract) or _is_verified(contract):
            raise MeteringRefused(f"the metering deadline for order {order.order_id} has passed")
        self._metering[order.order_id] = reading
        self._schedule(now, contract.contract_id)
        return True

    # --- time -----------------------------------------------------------------------------------

    def next_due(self) -> datetime | None:
        return self._due[0][0] if self._due else None

    def advance(self, now: datetime) -> list[Event]:
        events: list[Event] = []
        while self._due and self._due[0][0] <= now:
            _, _, contract_id = heapq.heappop(self._due)
            self._step(self.matcher.contracts[contract_id], now, events)
        return events

    # --- the state machine ----------------------------------------------------------------------

    def _step(self, contract: model.Contract, now: datetime, events: list[Event]) -> None:
        status = contract.status
        if status is ContractStatus.CREATED and now >= contract.delivery_end:
            contract = self._verification(contract, VerificationStatus.INITIATED, now, events)
            status = contract.status
        if status is ContractStatus.VERIFICATION_INITIATED:
            reading = self._metering.get(contract.sell_order_id)
            if reading is not None:
                self._verify(contract, reading, now, events)
            elif now > self._deadline(contract):
                self._fail(contract, "metering missing at the deadline", None, now, events)
        elif status is ContractStatus.SETTLEMENT_INITIATED:
            settle_at = self._settle_at.get(contract.contract_id)
            if settle_at is None or now < settle_at:
                return  # another step of this contract came due (e.g. the metering deadline)
            settlement = contract.settlement
            assert settlement is not None
            done = attrs.evolve(settlement, status=model.SettlementStatus.COMPLETED_SUCCESS)
            self._update(
                contract, ContractStatus.SETTLEMENT_COMPLETED_SUCCESS, events, settlement=done
            )

    def _verify(
        self,
        contract: model.Contract,
        reading: model.MeterReading,
        now: datetime,
        events: list[Event],
    ) -> None:
        sell = self.matcher.order(contract.sell_order_id)
        start, end = contract.delivery_start, contract.delivery_end
        scheduled = contract.energy / _KWH
        if sell.baseline is None:
            self._fail(contract, "baseline rejected: there is none", None, now, events)
            return
        try:
            baseline = window_energy_kwh(sell.baseline, start, end)
        except ReadingRejected as exc:
            self._fail(contract, f"baseline rejected: {exc}", None, now, events)
            return
        try:
            metering = window_energy_kwh(reading, start, end)
        except ReadingRejected as exc:
            self._fail(contract, f"metering does not cover the window: {exc}", None, now, events)
            return
        delivered = abs(baseline - metering)
        exact_pct = Decimal(100) * delivered / scheduled
        pct = exact_pct.quantize(Decimal("0.01"))  # reported rounded, judged exact
        result = model.VerificationResult(
            created_at=now,
            baseline=model.EnergyAmount(baseline),
            metering=model.EnergyAmount(metering),
            scheduled=scheduled,
            delivered=delivered,
            delivered_percentage=pct,
        )
        if exact_pct < self.rules.min_delivered_pct:
            reason = (
                f"delivered {pct}% of the scheduled energy, below {self.rules.min_delivered_pct}%"
            )
            self._fail(contract, reason, result, now, events)
            return
        contract = self._verification(
            contract, VerificationStatus.COMPLETED_SUCCESS, now, events, result=result
        )
        amount = (contract.price * min(delivered, scheduled)).quantize(Decimal("0.000001"))
        settlement = model.Settlement(
            settlement_id=self._new_id(),
            status=model.SettlementStatus.INITIATED,
            amount_eur=amount,
            created_at=now,
        )
        self._update(contract, ContractStatus.SETTLEMENT_INITIATED, events, settlement=settlement)
        settle_at = now + timedelta(seconds=self.rules.settlement_delay_s)
        self._settle_at[contract.contract_id] = settle_at
        self._schedule(settle_at, contract.contract_id)

    def _fail(
        self,
        contract: model.Contract,
        reason: str,
        result: model.VerificationResult | None,
        now: datetime,
        events: list[Event],
    ) -> None:
        self._verification(
            contract,
            VerificationStatus.COMPLETED_FAILED,
            now,
            events,
            result=result or model.VerificationResult(created_at=now),
            reason=reason,
        )

    def _verification(
        self,
        contract: model.Contract,
        status: VerificationStatus,
        now: datetime,
        events: list[Event],
        *,
        result: model.VerificationResult | None = None,
        reason: str | None = None,
    ) -> model.Contract:
        """Move the verification (of the contract and of its sell order) to `status`."""
        previous = contract.verification_result
        verification = model.Verification(
            verification_id=previous.verification_id if previous else self._new_id(),
            status=status,
            result=result,
            reason=reason,
        )
        contract_status = _CONTRACT_STATUS_OF[status]
        contract = self._update(contract, contract_status, events, verification=verification)
        sell = self.matcher.order(contract.sell_order_id)
        sell.verification = verification
        sell.updated_at = now
        events.append(OrderChanged(sell.owner, self.matcher.snapshot(sell)))
        return contract

    def _update(
        self,
        contract: model.Contract,
        status: ContractStatus,
        events: list[Event],
        *,
        verification: model.Verification | None = None,
        settlement: model.Settlement | None = None,
    ) -> model.Contract:
        contract = attrs.evolve(
            contract,
            status=status,
            verification_result=verification or contract.verification_result,
            settlement=settlement or contract.settlement,
        )
        events.append(self.matcher.update_contract(contract))
        return contract

    def _schedule(self, when: datetime, contract_id: str) -> None:
        self._seq += 1
        heapq.heappush(self._due, (when, self._seq, contract_id))


_CONTRACT_STATUS_OF = {
    VerificationStatus.INITIATED: ContractStatus.VERIFICATION_INITIATED,
    VerificationStatus.COMPLETED_SUCCESS: ContractStatus.VERIFICATION_COMPLETED_SUCCESS,
    VerificationStatus.COMPLETED_FAILED: ContractStatus.VERIFICATION_COMPLETED_FAILED,
}


def _is_verified(contract: model.Contract) -> bool:
    return contract.status not in (ContractStatus.CREATED, ContractStatus.VERIFICATION_INITIATED)
