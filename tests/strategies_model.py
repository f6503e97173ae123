"""Hypothesis strategies for the market types of `flexbot.model`, shared by the property tests.

Every strategy here produces values the wire format can carry exactly: aware UTC datetimes between
2000 and 2100, and Decimals with few enough digits that the float written on the wire reads back
equal (prices to 6 places, powers and energies to 3). Status fields mix the known enum members with
unknown names, because the market may add statuses and the client must keep them.

Import it as `from tests import strategies_model as sm`.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, TypeVar

from hypothesis import strategies as st

from flexbot import model
from flexbot.rules import COUNTRIES

T = TypeVar("T")

# --- times --------------------------------------------------------------------------------------

MIN_DATETIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_DATETIME = datetime(2100, 1, 1, tzinfo=UTC)
QUARTER_HOUR = timedelta(minutes=15)


def utc_datetimes(
    *,
    microseconds: bool = True,
    min_value: datetime = MIN_DATETIME,
    max_value: datetime = MAX_DATETIME,
) -> st.SearchStrategy[datetime]:
    """Aware UTC datetimes in [min_value, max_value]; whole seconds unless `microseconds`."""
    naive = st.datetimes(
        min_value=min_value.astimezone(UTC).replace(tzinfo=None),
        max_value=max_value.astimezone(UTC).replace(tzinfo=None),
    )
    if not microseconds:
        naive = naive.map(lambda dt: dt.replace(microsecond=0))
    return naive.map(lambda dt: dt.replace(tzinfo=UTC, fold=0))


#: Any wire time: whole seconds or with a fraction.
datetimes = st.one_of(utc_datetimes(microseconds=False), utc_datetimes())
whole_second_datetimes = utc_datetimes(microseconds=False)


def grid_datetimes(
    min_value: datetime = MIN_DATETIME, max_value: datetime = MAX_DATETIME
) -> st.SearchStrategy[datetime]:
    """Quarter-hour boundaries (…:00, :15, :30, :45, zero seconds) in [min_value, max_value]."""
    first = -((MIN_DATETIME - min_value) // QUARTER_HOUR)  # ceil
    last = (max_value - MIN_DATETIME) // QUARTER_HOUR
    return st.integers(first, last).map(lambda n: MIN_DATETIME + n * QUARTER_HOUR)


#: Fixed UTC offsets with minute resolution, as the wire's `±hh:mm` can express them.
utc_offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@st.composite
def offset_datetimes(draw: st.DrawFn, *, microseconds: bool = True) -> datetime:
    """An instant in 2000..2100 shown in an arbitrary fixed offset."""
    return draw(utc_datetimes(microseconds=microseconds)).astimezone(draw(utc_offsets))


# --- numbers ------------------------------------------------------------------------------------


@st.composite
def wire_decimals(
    draw: st.DrawFn, *, places: int, below: int, min_value: int = 0, allow_min: bool = True
) -> Decimal:
    """A Decimal with at most `places` decimal places in [min_value, below) (or (min_value, below)
    without `allow_min`), with varied exponents (`1.5`, `1.500`, `15E-1`, `1.4E+3`)."""
    p = draw(st.integers(0, places))
    scale = 10**p
    low = min_value * scale + (0 if allow_min else 1)
    n = draw(st.integers(low, below * scale - 1))
    value = Decimal(n).scaleb(-p)
    return value.normalize() if draw(st.booleans()) else value


prices = wire_decimals(places=6, below=10_000)  # €/kWh, 0 <= p < 10000
powers = wire_decimals(places=3, below=10**9, allow_min=False)  # W, 0 < p < 1e9
energies = wire_decimals(places=3, below=10**12)  # Wh, 0 <= e < 1e12
meter_values = wire_decimals(places=6, below=10**6)  # kWh per interval
percentages = wire_decimals(places=3, below=10**4)
amounts_eur = wire_decimals(places=6, below=10**8)


# --- names and ids ------------------------------------------------------------------------------

#: Opaque ids: UUIDs as the market sends them, or short arbitrary text.
ids = st.one_of(st.uuids().map(str), st.text(min_size=1, max_size=12))
short_text = st.text(max_size=16)


def statuses(cls: type[enum.StrEnum]) -> st.SearchStrategy[Any]:
    """Known members of a status enum, or names the enum does not know (kept as plain strings)."""
    return st.one_of(st.sampled_from(list(cls)), unknown_names(cls))


def unknown_names(cls: type[enum.StrEnum]) -> st.SearchStrategy[str]:
    known = {m.value for m in cls}
    reported = st.sampled_from(["pending", "selected_for_baseline_activation", "rejected", ""])
    return st.one_of(reported, st.text(max_size=24)).filter(lambda s: s not in known)


sides = st.sampled_from(list(model.Side))
order_statuses = statuses(model.OrderStatus)
contract_statuses = statuses(model.ContractStatus)
verification_statuses = statuses(model.VerificationStatus)
settlement_statuses = statuses(model.SettlementStatus)
measurement_types = st.sampled_from(list(model.MeasurementType))


def tuples_of(
    elements: st.SearchStrategy[T], max_size: int = 3
) -> st.SearchStrategy[tuple[T, ...]]:
    return st.lists(elements, max_size=max_size).map(tuple)


def optional(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    return st.one_of(st.none(), strategy)


# --- locations and meter data -------------------------------------------------------------------

countries = st.sampled_from(sorted(COUNTRIES))
country_codes = st.sampled_from([*sorted(COUNTRIES), ""])  # "" = no country given
location_ids = tuples_of(optional(ids))  # incl. the official client's `[null]` and `[]`

coordinates = st.builds(
    model.Coordinates,
    latitude=st.floats(-90, 90, allow_nan=False),
    longitude=st.floats(-180, 180, allow_nan=False),
)

locations = st.builds(
    model.Location,
    location_id=location_ids,
    country_code=country_codes,
    coordinates=optional(coordinates),
)

data_points = st.builds(model.DataPoint, timestamp=datetimes, value=meter_values)

meter_readings = st.builds(
    model.MeterReading,
    data_points=tuples_of(data_points, max_size=4),
    metering_id=short_text,
    created_at=optional(datetimes),
    reading_start=optional(datetimes),
    reading_end=optional(datetimes),
    resolution=st.one_of(st.just(900), st.integers(0, 86_400)),
    unit_measured=st.sampled_from(["kWh", "Wh", "", "MWh"]),
)


@st.composite
def valid_meter_readings(
    draw: st.DrawFn,
    *,
    min_start: datetime = MIN_DATETIME,
    max_start: datetime = MAX_DATETIME - timedelta(days=1),
) -> model.MeterReading:
    """A reading verification accepts: resolution 900, a named unit, one point at the end of each
    15-minute interval of the window (ascending, inside the window)."""
    start = draw(grid_datetimes(min_start, max_start))
    intervals = draw(st.integers(1, 8))
    points = tuple(
        model.DataPoint(timestamp=start + (i + 1) * QUARTER_HOUR, value=draw(meter_values))
        for i in range(intervals)
    )
    return model.MeterReading(
        data_points=points,
        metering_id=draw(ids),
        created_at=draw(optional(datetimes)),
        reading_start=start,
        reading_end=start + intervals * QUARTER_HOUR,
        resolution=900,
        unit_measured=draw(st.sampled_from(["kWh", "Wh"])),
    )


# --- orders and contracts -----------------------------------------------------------------------

order_requests = st.builds(
    model.OrderRequest,
    side=sides,
    power=powers,
    price=prices,
    delivery_start=datetimes,
    delivery_end=datetimes,
    expiry_time=datetimes,
    location=locations,
    baseline=optional(meter_readings),
)

energy_amounts = st.builds(model.EnergyAmount, energy=meter_values)

verification_results = st.builds(
    model.VerificationResult,
    created_at=optional(datetimes),
    baseline=optional(energy_amounts),
    metering=optional(energy_amounts),
    scheduled=optional(meter_values),
    delivered=optional(meter_values),
    delivered_percentage=optional(percentages),
)

verifications = st.builds(
    model.Verification,
    verification_id=ids,
    status=verification_statuses,
    result=optional(verification_results),
)

settlements = st.builds(
    model.Settlement,
    settlement_id=ids,
    status=settlement_statuses,
    amount_eur=optional(amounts_eur),
    created_at=optional(datetimes),
)

contracts = st.builds(
    model.Contract,
    contract_id=ids,
    buy_order_id=ids,
    sell_order_id=ids,
    power=powers,
    energy=energies,
    price=prices,
    delivery_start=grid_datetimes(),
    delivery_end=grid_datetimes(),
    status=contract_statuses,
    created_at=optional(datetimes),
    verification_result=optional(verifications),
    settlement=optional(settlements),
)

orders = st.builds(
    model.Order,
    order_id=ids,
    side=statuses(model.Side),
    power=powers,
    price=prices,
    delivery_start=grid_datetimes(),
    delivery_end=grid_datetimes(),
    status=order_statuses,
    energy=optional(energies),
    expiry_time=optional(datetimes),
    location=locations,
    created_at=optional(datetimes),
    updated_at=optional(datetimes),
    baseline=optional(meter_readings),
    verification=optional(verifications),
    contracts=tuples_of(contracts, max_size=2),
)

# --- market data --------------------------------------------------------------------------------

tickers = st.builds(
    model.Ticker,
    closed_at=datetimes,
    price=prices,
    delivery_start=grid_datetimes(),
    delivery_end=grid_datetimes(),
    power=powers,
    energy=optional(energies),
    location=locations,
)

expired_orders = st.builds(
    model.ExpiredOrder,
    expired_at=datetimes,
    price=prices,
    delivery_start=grid_datetimes(),
    delivery_end=grid_datetimes(),
    power=powers,
    energy=optional(energies),
    location=locations,
)

book_entries = st.builds(
    model.BookEntry,
    side=statuses(model.Side),
    power=powers,
    price=prices,
    delivery_start=grid_datetimes(),
    delivery_end=grid_datetimes(),
    location=locations,
    energy=optional(energies),
)

#: Opaque group keys (spec §4): decimal strings as in the docs, or any text.
book_keys = st.one_of(st.integers(0, 999).map(str), st.text(max_size=8))
book_sides = st.dictionaries(book_keys, tuples_of(book_entries), max_size=3)
order_books = st.builds(model.OrderBook, bids=book_sides, asks=book_sides)

# --- auth and verification ----------------------------------------------------------------------

tokens = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1
)
token_responses = st.builds(
    model.TokenResponse,
    access_token=tokens,
    refresh_token=tokens,
    expires_in=st.integers(0, 10**6),
    refresh_expires_in=optional(st.integers(0, 10**7)),
    token_type=st.sampled_from(["Bearer", "bearer"]),
)

verification_requests = st.builds(
    model.VerificationRequest,
    order_id=ids,
    measurement_type=st.one_of(measurement_types, unknown_names(model.MeasurementType)),
    metering_data=meter_readings,
)

verification_receipts = st.builds(
    model.VerificationReceipt,
    order_id=ids,
    measurement_type=st.one_of(measurement_types, unknown_names(model.MeasurementType)),
    status=st.one_of(st.just("received"), short_text),
)

# --- WebSocket envelopes ------------------------------------------------------------------------

controls = st.builds(
    model.Control,
    status=st.sampled_from(["success", "error", "unknown"]),
    data=st.builds(model.ControlData, message=short_text),
)
order_status_updates = st.builds(
    model.OrderStatusUpdate, data=orders, name=short_text, created_at=optional(datetimes)
)
contract_status_updates = st.builds(
    model.ContractStatusUpdate, data=contracts, name=short_text, created_at=optional(datetimes)
)
ticker_updates = st.builds(model.TickerUpdate, data=tickers, created_at=optional(datetimes))
expired_order_updates = st.builds(
    model.ExpiredOrderUpdate, data=expired_orders, created_at=optional(datetimes)
)
orderbook_updates = st.builds(
    model.OrderBookUpdate, data=order_books, created_at=optional(datetimes)
)

#: Every known envelope type.
known_messages = st.one_of(
    controls,
    order_status_updates,
    contract_status_updates,
    ticker_updates,
    expired_order_updates,
    orderbook_updates,
)

KNOWN_MESSAGE_TYPES = frozenset(m.value for m in model.MessageType)

#: JSON values (no floats that JSON cannot carry), for `raw` bodies and for garbage.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)


@st.composite
def unknown_messages(draw: st.DrawFn) -> model.UnknownMessage:
    """A well-formed frame of a `type` the client does not know, as `message_from_data` keeps it."""
    kind = draw(st.text(max_size=24).filter(lambda s: s not in KNOWN_MESSAGE_TYPES))
    raw = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4))
    return model.UnknownMessage(type=kind, raw={**raw, "type": kind})


messages = st.one_of(known_messages, unknown_messages())
