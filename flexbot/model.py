"""The GLocalFlex market as attrs types, shared by the client and the sandbox.

Units follow the wire format, which fixes the field names: `power` in W, `price` in €/kWh, `energy`
in Wh, meter data values in the reading's `unit_measured` (kWh in practice), `resolution` in s.
Money and power are `Decimal` so that a price read from the wire compares equal to the one we sent.

Status fields are typed `OrderStatus | str` (and likewise for contracts): known names become enum
members, unknown ones stay plain strings, because the market may add statuses and the client must
not choke on them (spec §5). `StrEnum` members compare equal to their wire strings.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs
from attrs import frozen


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class OrderStatus(enum.StrEnum):
    AWAITING_BASELINE_DATA = "awaiting_baseline_data"
    ACCEPTED = "accepted"
    MATCHING_ACTIVE = "matching_active"
    PARTIAL_FILLED = "partial_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_ORDER_STATUSES


_FINAL_ORDER_STATUSES = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.EXPIRED})


def is_final_order_status(status: OrderStatus | str) -> bool:
    """Final statuses end an order's life; an unknown name is not final (keep tracking it)."""
    return status in _FINAL_ORDER_STATUSES


class ContractStatus(enum.StrEnum):
    CREATED = "created"
    VERIFICATION_INITIATED = "verification_initiated"
    VERIFICATION_COMPLETED_SUCCESS = "verification_completed_success"
    VERIFICATION_COMPLETED_FAILED = "verification_completed_failed"
    SETTLEMENT_INITIATED = "settlement_initiated"
    SETTLEMENT_COMPLETED_SUCCESS = "settlement_completed_success"
    SETTLEMENT_COMPLETED_FAILED = "settlement_completed_failed"


_FINAL_CONTRACT_STATUSES = frozenset(
    {
        ContractStatus.VERIFICATION_COMPLETED_FAILED,  # nothing follows a failed verification [A]
        ContractStatus.SETTLEMENT_COMPLETED_SUCCESS,
        ContractStatus.SETTLEMENT_COMPLETED_FAILED,
    }
)


def is_final_contract_status(status: ContractStatus | str) -> bool:
    """No further news of a contract in a final status; an unknown name is not final."""
    return status in _FINAL_CONTRACT_STATUSES


class VerificationStatus(enum.StrEnum):
    PENDING = "pending"
    INITIATED = "initiated"
    COMPLETED_SUCCESS = "completed_success"
    COMPLETED_FAILED = "completed_failed"


class SettlementStatus(enum.StrEnum):
    INITIATED = "initiated"
    COMPLETED_SUCCESS = "completed_success"
    COMPLETED_FAILED = "completed_failed"


class MeasurementType(enum.StrEnum):
    BASELINE = "baseline"
    METERING = "metering"


# --- locations and meter data -------------------------------------------------------------------


@frozen
class Coordinates:
    latitude: float
    longitude: float


@frozen
class Location:
    # The official client sends `[null]`; a None id is kept so that such an order round-trips.
    location_id: tuple[str | None, ...] = ()
    # "" means no country given (any country matches).
    country_code: str = ""
    coordinates: Coordinates | None = None


@frozen
class DataPoint:
    # The end of the interval the value covers (spec §7).
    timestamp: datetime
    # Energy of one interval, in the reading's unit_measured.
    value: Decimal


@frozen
class MeterReading:
    """The `metering_data` object: a baseline (forecast) or metering (measured) series."""

    data_points: tuple[DataPoint, ...]
    metering_id: str = ""
    created_at: datetime | None = None
    reading_start: datetime | None = None
    reading_end: datetime | None = None
    resolution: int = 900  # seconds per data point
    unit_measured: str = "kWh"


# --- orders and contracts -----------------------------------------------------------------------


@frozen
class OrderRequest:
    """The body of `POST /api/v1/order`."""

    side: Side
    power: Decimal  # W
    price: Decimal  # €/kWh
    delivery_start: datetime
    delivery_end: datetime
    expiry_time: datetime
    location: Location = Location()
    baseline: MeterReading | None = None

    @property
    def duration_s(self) -> int:
        return int((self.delivery_end - self.delivery_start).total_seconds())


@frozen
class EnergyAmount:
    energy: Decimal  # kWh


@frozen
class VerificationResult:
    created_at: datetime | None = None
    baseline: EnergyAmount | None = None
    metering: EnergyAmount | None = None
    scheduled: Decimal | None = None  # kWh
    delivered: Decimal | None = None  # kWh
    delivered_percentage: Decimal | None = None


@frozen
class Verification:
    verification_id: str
    status: VerificationStatus | str
    result: VerificationResult | None = None
    reason: str | None = None  # why it failed [A]: the sandbox says; the real market may not


@frozen
class Settlement:
    settlement_id: str
    status: SettlementStatus | str
    amount_eur: Decimal | None = None
    created_at: datetime | None = None


@frozen
class Contract:
    contract_id: str
    buy_order_id: str
    sell_order_id: str
    power: Decimal  # W
    energy: Decimal  # Wh
    price: Decimal  # €/kWh
    delivery_start: datetime
    delivery_end: datetime
    status: ContractStatus | str
    created_at: datetime | None = None
    verification_result: Verification | None = None
    settlement: Settlement | None = None


@frozen
class Order:
    """An order as the market reports it (REST body and `/trade` event data)."""

    order_id: str
    side: Side | str
    power: Decimal  # W
    price: Decimal  # €/kWh
    delivery_start: datetime
    delivery_end: datetime
    status: OrderStatus | str
    energy: Decimal | None = None  # Wh
    expiry_time: datetime | None = None
    location: Location = Location()
    created_at: datetime | None = None
    updated_at: datetime | None = None
    baseline: MeterReading | None = None
    verification: Verification | None = None
    contracts: tuple[Contract, ...] = ()

    @property
    def filled_power(self) -> Decimal:
        return sum((c.power for c in self.contracts), Decimal(0))

    @property
    def is_final(self) -> bool:
        return is_final_order_status(self.status)


# --- market data --------------------------------------------------------------------------------


@frozen
class Ticker:
    """`ticker_update.data`: one trade."""

    closed_at: datetime
    price: Decimal
    delivery_start: datetime
    delivery_end: datetime
    power: Decimal
    energy: Decimal | None = None
    location: Location = Location()


@frozen
class ExpiredOrder:
    """`expired_order_update.data`: an order that left the book at its expiry time."""

    expired_at: datetime
    price: Decimal
    delivery_start: datetime
    delivery_end: datetime
    power: Decimal
    energy: Decimal | None = None
    location: Location = Location()


@frozen
class BookEntry:
    side: Side | str
    power: Decimal
    price: Decimal
    delivery_start: datetime
    delivery_end: datetime
    location: Location = Location()
    energy: Decimal | None = None


def _bid_key(entry: BookEntry) -> Decimal:
    return -entry.price


def _ask_key(entry: BookEntry) -> Decimal:
    return entry.price


@frozen
class OrderBook:
    """The full book. The map keys are opaque group ids (spec §4): never parse them."""

    bids: Mapping[str, tuple[BookEntry, ...]] = attrs.field(factory=dict)
    asks: Mapping[str, tuple[BookEntry, ...]] = attrs.field(factory=dict)

    def flat_bids(self) -> list[BookEntry]:
        """Every bid, best (highest) price first; the sort is stable, so time order survives."""
        return list(self._sorted_bids)

    def flat_asks(self) -> list[BookEntry]:
        """Every ask, best (lowest) price first."""
        return list(self._sorted_asks)

    # Sorted once per book: the feed, the paper broker and each strategy all ask for them.
    @functools.cached_property
    def _sorted_bids(self) -> tuple[BookEntry, ...]:
        return tuple(sorted((e for group in self.bids.values() for e in group), key=_bid_key))

    @functools.cached_property
    def _sorted_asks(self) -> tuple[BookEntry, ...]:
        return tuple(sorted((e for group in self.asks.values() for e in group), key=_ask_key))


# --- auth ---------------------------------------------------------------------------------------


@frozen(repr=False)
class TokenResponse:
    access_token: str
    expires_in: int  # seconds
    refresh_token: str = ""  # OAuth2 allows a refresh answer without one
    refresh_expires_in: int | None = None  # seconds
    token_type: str = "Bearer"

    def __repr__(self) -> str:  # never show a token, not even in a debugger or a traceback
        return f"TokenResponse(expires_in={self.expires_in}, token_type={self.token_type!r})"


# --- verification -------------------------------------------------------------------------------


@frozen
class VerificationRequest:
    """The body of `POST /api/v1/verification/{metering,baseline}`."""

    order_id: str
    measurement_type: MeasurementType | str
    metering_data: MeterReading


@frozen
class VerificationReceipt:
    order_id: str
    measurement_type: MeasurementType | str
    status: str = "received"


# --- WebSocket envelopes ------------------------------------------------------------------------


class MessageType(enum.StrEnum):
    CONTROL = "control"
    ORDER_STATUS_UPDATE = "order_status_update"
    CONTRACT_STATUS_UPDATE = "contract_status_update"
    TICKER_UPDATE = "ticker_update"
    EXPIRED_ORDER_UPDATE = "expired_order_update"
    ORDERBOOK_UPDATE = "orderbook_update"


@frozen
class ControlData:
    message: str = ""


@frozen
class Control:
    status: str
    data: ControlData = ControlData()
    type: str = MessageType.CONTROL


@frozen
class OrderStatusUpdate:
    data: Order
    name: str = ""  # the new status (spec §4)
    created_at: datetime | None = None
    type: str = MessageType.ORDER_STATUS_UPDATE


@frozen
class ContractStatusUpdate:
    data: Contract
    name: str = ""
    created_at: datetime | None = None
    type: str = MessageType.CONTRACT_STATUS_UPDATE


@frozen
class TickerUpdate:
    data: Ticker
    created_at: datetime | None = None
    type: str = MessageType.TICKER_UPDATE


@frozen
class ExpiredOrderUpdate:
    data: ExpiredOrder
    created_at: datetime | None = None
    type: str = MessageType.EXPIRED_ORDER_UPDATE


@frozen
class OrderBookUpdate:
    data: OrderBook
    created_at: datetime | None = None
    type: str = MessageType.ORDERBOOK_UPDATE


@frozen
class UnknownMessage:
    """A well-formed message of a type we do not know: kept, not dropped, so callers can log it."""

    type: str
    raw: Mapping[str, Any]


Message = (
    Control
    | OrderStatusUpdate
    | ContractStatusUpdate
    | TickerUpdate
    | ExpiredOrderUpdate
    | OrderBookUpdate
    | UnknownMessage
)
