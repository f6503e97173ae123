"""Money and energy of contracts, never summed watts: a contract's energy is its power over its
window (kWh; the market's own `energy` figure in Wh when it gives one), its money is price ×
energy (€). Sells earn, buys cost. Each contract stands somewhere: `settled` (paid), `failed`
(its verification or settlement failed: unpaid, a sell's revenue lost), or `pending` (sold or
bought, not yet settled). `Ledger` sums them by strategy, side, standing and delivery day, for
`flexbot status`, the demo's summary, the metrics and replay.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable
from datetime import date
from decimal import Decimal

from attrs import define, field

from flexbot import model

HOUR_S = Decimal(3600)
KWH = Decimal(1000)


class Standing(enum.StrEnum):
    SETTLED = "settled"
    PENDING = "pending"
    FAILED = "failed"  # its verification or its settlement failed: unpaid


def standing(contract: model.Contract) -> Standing:
    status = str(contract.status)
    if status == model.ContractStatus.SETTLEMENT_COMPLETED_SUCCESS:
        return Standing.SETTLED
    if status in (
        model.ContractStatus.VERIFICATION_COMPLETED_FAILED,
        model.ContractStatus.SETTLEMENT_COMPLETED_FAILED,
    ):
        return Standing.FAILED
    return Standing.PENDING


def energy_kwh(contract: model.Contract) -> Decimal:
    """The contract's energy: the market's figure (Wh) when it gives one, else power × hours."""
    if contract.energy:
        return contract.energy / KWH
    seconds = Decimal(int((contract.delivery_end - contract.delivery_start).total_seconds()))
    return contract.power * seconds / HOUR_S / KWH


def amount_eur(contract: model.Contract) -> Decimal:
    return contract.price * energy_kwh(contract)


@define
class Tally:
    contracts: int = 0
    energy_kwh: Decimal = Decimal(0)
    eur: Decimal = Decimal(0)

    def add(self, contract: model.Contract) -> None:
        self.contracts += 1
        self.energy_kwh += energy_kwh(contract)
        self.eur += amount_eur(contract)


Key = tuple[str, str, Standing]  # (strategy, side, standing)


@define
class Ledger:
    cells: defaultdict[Key, Tally] = field(factory=lambda: defaultdict(Tally))
    days: defaultdict[tuple[date, str], Tally] = field(factory=lambda: defaultdict(Tally))

    @classmethod
    def of(cls, fills: Iterable[tuple[str, str, model.Contract]]) -> Ledger:
        """(strategy, side, contract) of each fill, each contract once."""
        ledger = cls()
        seen: set[str] = set()
        for strategy, side, contract in fills:
            if contract.contract_id in seen:
                continue
            seen.add(contract.contract_id)
            ledger.add(strategy, side, contract)
        return ledger

    def add(self, strategy: str, side: str, contract: model.Contract) -> None:
        self.cells[(strategy, side, standing(contract))].add(contract)
        self.days[(contract.delivery_start.date(), side)].add(contract)

    def total(self, side: str, which: Standing | None = None) -> Tally:
        out = Tally()
        for (_, of_side, of_standing), tally in self.cells.items():
            if of_side == side and (which is None or of_standing is which):
                out.contracts += tally.contracts
                out.energy_kwh += tally.energy_kwh
                out.eur += tally.eur
        return out

    def net_eur(self) -> Decimal:
        """Revenue of sells less the cost of buys, failed contracts left out on both (unpaid)."""
        sold = self.total("sell").eur - self.total("sell", Standing.FAILED).eur
        return sold - (self.total("buy").eur - self.total("buy", Standing.FAILED).eur)

    def lines(self) -> list[str]:
        """A table by strategy and side, then one line a delivery day."""
        if not self.cells:
            return ["  no contracts"]
        head = f"  {'strategy':<14} {'side':<4} " + " ".join(
            f"{which.value:>22}" for which in Standing
        )
        out = [head]
        for strategy, side in sorted({(s, d) for s, d, _ in self.cells}):
            row = f"  {strategy:<14} {side:<4} "
            cells = []
            for which in Standing:
                tally = self.cells.get((strategy, side, which))
                cells.append(f"{_figure(tally):>22}")
            out.append(row + " ".join(cells))
        for (day, side), tally in sorted(self.days.items()):
            out.append(f"  {day.isoformat()}  {side:<4} {_figure(tally)}")
        out.append(f"  net: €{self.net_eur():.2f} (sells less buys; failed contracts unpaid)")
        return out


def _figure(tally: Tally | None) -> str:
    if tally is None or not tally.contracts:
        return "-"
    return f"{tally.energy_kwh:.3f} kWh €{tally.eur:.2f}"
