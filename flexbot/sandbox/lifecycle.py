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
from flexbot.sandbox.matching import BookOrder, Event, Matcher, OrderChanged

_KWH = Decimal(1000)


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


def window_energy_kwh(
    reading: model.MeterReading, start: datetime, end: datetime
) -> Decimal | None:
    """Energy inside (start, end] in kWh, or None when the reading does not cover the window."""
    if reading.resolution != MARKET_TIME_UNIT_S:
        return None
    inside = [p.value for p in reading.data_points if start < p.timestamp <= end]
    expected = int((end - start).total_seconds()) // MARKET_TIME_UNIT_S
    if len(inside) != expected:
        return None
    total = sum(inside, Decimal(0))
    return total / _KWH if reading.unit_measured == "Wh" else total


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

    # --- inputs ---------------------------------------------------------------------------------

    def track(self, contract: model.Contract) -> None:
        """A new contract: its first step is due at delivery end."""
        self._schedule(contract.delivery_end, contract.contract_id)
        deadline = contract.delivery_end + timedelta(seconds=self.rules.metering_deadline_s)
        self._schedule(deadline, contract.contract_id)

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
        deadline = contract.delivery_end + timedelta(seconds=self.rules.metering_deadline_s)
        if now > deadline or _is_verified(contract):
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
            deadline = contract.delivery_end + timedelta(seconds=self.rules.metering_deadline_s)
            if reading is not None:
                self._verify(contract, reading, now, events)
            elif now >= deadline:
                self._fail(contract, "metering missing at the deadline", None, now, events)
        elif status is ContractStatus.SETTLEMENT_INITIATED:
            settlement = contract.settlement
            assert settlement is not None
            done = attrs.evolve(
                settlement, status=model.SettlementStatus.COMPLETED_SUCCESS, created_at=now
            )
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
        baseline = window_energy_kwh(sell.baseline, start, end) if sell.baseline else None
        metering = window_energy_kwh(reading, start, end)
        if baseline is None:
            self._fail(
                contract, "baseline rejected: it does not cover the window", None, now, events
            )
            return
        if metering is None:
            self._fail(contract, "metering does not cover the delivery window", None, now, events)
            return
        delivered = abs(baseline - metering)
        pct = (Decimal(100) * delivered / scheduled).quantize(Decimal("0.01"))
        result = model.VerificationResult(
            created_at=now,
            baseline=model.EnergyAmount(baseline),
            metering=model.EnergyAmount(metering),
            scheduled=scheduled,
            delivered=delivered,
            delivered_percentage=pct,
        )
        if pct < self.rules.min_delivered_pct:
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
        self._schedule(now + timedelta(seconds=self.rules.settlement_delay_s), contract.contract_id)

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
