"""Property tests for the GLocalFlex JSON format (`flexbot.wire`): round trips of every model type,
timestamps, exact numbers, tolerance of what does not matter, and located errors for what does."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import attrs
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexbot import model, wire
from flexbot.problems import Invalid, Loc, render_loc
from flexbot.validators import at_least, seconds
from tests import strategies_model as sm

FAST = settings(max_examples=200, deadline=None)
QUICK = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every attrs type of the model with a strategy for it. UnknownMessage is no wire shape of its own
# (it wraps an unknown frame) and is tested through `message_from_data` below.
ROUND_TRIP: dict[type[Any], st.SearchStrategy[Any]] = {
    model.Coordinates: sm.coordinates,
    model.Location: sm.locations,
    model.DataPoint: sm.data_points,
    model.MeterReading: st.one_of(sm.meter_readings, sm.valid_meter_readings()),
    model.OrderRequest: sm.order_requests,
    model.EnergyAmount: sm.energy_amounts,
    model.VerificationResult: sm.verification_results,
    model.Verification: sm.verifications,
    model.Settlement: sm.settlements,
    model.Contract: sm.contracts,
    model.Order: sm.orders,
    model.Ticker: sm.tickers,
    model.ExpiredOrder: sm.expired_orders,
    model.BookEntry: sm.book_entries,
    model.OrderBook: sm.order_books,
    model.TokenResponse: sm.token_responses,
    model.VerificationRequest: sm.verification_requests,
    model.VerificationReceipt: sm.verification_receipts,
    model.ControlData: st.builds(model.ControlData, message=sm.short_text),
    model.Control: sm.controls,
    model.OrderStatusUpdate: sm.order_status_updates,
    model.ContractStatusUpdate: sm.contract_status_updates,
    model.TickerUpdate: sm.ticker_updates,
    model.ExpiredOrderUpdate: sm.expired_order_updates,
    model.OrderBookUpdate: sm.orderbook_updates,
}
NOT_A_WIRE_SHAPE = {model.UnknownMessage}
any_model_object = st.one_of(*ROUND_TRIP.values())


def _invalid(data: Any, cls: type[Any]) -> Invalid:
    with pytest.raises(Invalid) as caught:
        wire.structure(data, cls)
    return caught.value


# --- round trips --------------------------------------------------------------------------------


def test_the_round_trip_table_covers_every_model_type() -> None:
    defined = {
        obj
        for obj in vars(model).values()
        if isinstance(obj, type) and attrs.has(obj) and obj.__module__ == model.__name__
    }
    assert defined - NOT_A_WIRE_SHAPE == set(ROUND_TRIP)


@pytest.mark.parametrize("cls", list(ROUND_TRIP), ids=lambda cls: cls.__name__)
@QUICK
@given(data=st.data())
def test_every_model_type_survives_a_json_round_trip(cls: type[Any], data: st.DataObject) -> None:
    obj = data.draw(ROUND_TRIP[cls])
    decoded = wire.decode(wire.dumps(obj), cls)
    assert decoded == obj
    assert type(decoded) is cls


@FAST
@given(obj=any_model_object)
def test_encoding_a_decoded_object_gives_the_same_bytes(obj: Any) -> None:
    raw = wire.dumps(obj)
    assert wire.dumps(wire.decode(raw, type(obj))) == raw


@FAST
@given(message=sm.known_messages)
def test_every_envelope_survives_parse_message(message: model.Message) -> None:
    raw = wire.dumps(message)
    assert wire.parse_message(raw) == message
    parsed = wire.message_from_data(orjson.loads(raw))
    assert parsed == message
    assert type(parsed) is type(message)


@FAST
@given(message=sm.unknown_messages())
def test_an_unknown_message_type_is_kept_with_its_raw_body(message: model.UnknownMessage) -> None:
    parsed = wire.parse_message(orjson.dumps(message.raw))
    assert isinstance(parsed, model.UnknownMessage)
    assert parsed == message


def test_the_docs_control_message_parses() -> None:
    raw = (
        b'{"type":"control","status":"success","data":{"message":"Connected to the WebSocket API"}}'
    )
    assert wire.parse_message(raw) == model.Control(
        status="success", data=model.ControlData(message="Connected to the WebSocket API")
    )


def test_an_unknown_message_type_gives_unknown_message() -> None:
    raw = b'{"type":"heartbeat","created_at":"2026-11-23T10:00:00Z","data":{"n":1}}'
    parsed = wire.parse_message(raw)
    assert parsed == model.UnknownMessage(type="heartbeat", raw=orjson.loads(raw))


# --- timestamps ---------------------------------------------------------------------------------


@FAST
@given(dt=sm.datetimes)
def test_formatted_datetimes_parse_back_to_the_same_instant(dt: datetime) -> None:
    text = wire.format_datetime(dt)
    assert text.endswith("Z")
    assert ("." in text) == bool(dt.microsecond)
    parsed = wire.parse_datetime(text)
    assert parsed == dt
    assert parsed.tzinfo is UTC


@FAST
@given(dt=sm.offset_datetimes())
def test_datetimes_in_any_offset_are_emitted_in_utc(dt: datetime) -> None:
    text = wire.format_datetime(dt)
    assert text.endswith("Z")
    assert wire.parse_datetime(text) == dt


@FAST
@given(dt=sm.offset_datetimes(), colon=st.booleans())
def test_offsets_on_the_wire_are_converted_to_utc(dt: datetime, colon: bool) -> None:
    text = dt.isoformat()  # e.g. 2026-11-23T12:30:00.123456+02:00
    if not colon:
        text = text[:-3] + text[-2:]  # +0200
    parsed = wire.parse_datetime(text)
    assert parsed == dt
    assert parsed.tzinfo is UTC
    assert parsed.utcoffset() == timedelta(0)


@FAST
@given(dt=sm.whole_second_datetimes, suffix=st.sampled_from(["Z", ".000Z", ".000000Z", "+00:00"]))
def test_z_and_zero_fraction_forms_are_accepted(dt: datetime, suffix: str) -> None:
    assert wire.parse_datetime(dt.strftime("%Y-%m-%dT%H:%M:%S") + suffix) == dt


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-02T12:06:45.842304Z", datetime(2024, 5, 2, 12, 6, 45, 842304, tzinfo=UTC)),
        ("2026-11-23T11:30:00.000Z", datetime(2026, 11, 23, 11, 30, tzinfo=UTC)),
        ("2026-11-23T10:37:49.371Z", datetime(2026, 11, 23, 10, 37, 49, 371000, tzinfo=UTC)),
        ("2026-11-23T12:30:00+02:00", datetime(2026, 11, 23, 10, 30, tzinfo=UTC)),
        ("2026-11-23T00:30:00-01:30", datetime(2026, 11, 23, 2, 0, tzinfo=UTC)),
        ("2026-11-23T00:30:00+01:00", datetime(2026, 11, 22, 23, 30, tzinfo=UTC)),
        # sub-microsecond digits round up, so an off-grid time never looks on the grid
        ("2026-11-23T11:30:00.123456789Z", datetime(2026, 11, 23, 11, 30, 0, 123457, tzinfo=UTC)),
        ("2026-11-23T11:30:00.000000001Z", datetime(2026, 11, 23, 11, 30, 0, 1, tzinfo=UTC)),
        ("2026-11-23T11:30:00.123456000Z", datetime(2026, 11, 23, 11, 30, 0, 123456, tzinfo=UTC)),
    ],
)
def test_wire_timestamps_parse_to_utc(text: str, expected: datetime) -> None:
    parsed = wire.parse_datetime(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T11:30:00",  # naive
        "2026-11-23T11:30:00.000",  # naive with a fraction
        "2026-11-23",  # date only
        "2026-11-23T10:00:00:100Z",  # the docs' typo
        "2026-11-23T11:30Z",  # no seconds
        "2026-11-23 11:30:00Z",  # no T
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-23T24:00:00Z",
        "2026-11-23T11:30:00+25:00",
        "2026-11-23T11:30:00.Z",
        "1795427400",
        "",
        "garbage",
        " 2026-11-23T11:30:00Z",
        "2026-11-23T11:30:00Z\n",
    ],
)
def test_malformed_timestamps_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        wire.parse_datetime(text)


@FAST
@given(text=st.text(max_size=40))
def test_any_text_parses_to_utc_or_raises_value_error(text: str) -> None:
    try:
        parsed = wire.parse_datetime(text)
    except ValueError:
        return
    assert parsed.tzinfo is UTC


def test_a_naive_datetime_is_never_emitted() -> None:
    with pytest.raises(ValueError, match="naive"):
        wire.format_datetime(datetime(2026, 11, 23, 11, 30))


OUT_OF_RANGE_IN_UTC = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]


@pytest.mark.parametrize("text", OUT_OF_RANGE_IN_UTC)
def test_a_timestamp_out_of_range_in_utc_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"(?i)range"):
        wire.parse_datetime(text)


@pytest.mark.parametrize("text", OUT_OF_RANGE_IN_UTC)
def test_structuring_a_timestamp_out_of_range_in_utc_is_invalid(text: str) -> None:
    with pytest.raises(Invalid):
        wire.structure(text, datetime)


@pytest.mark.parametrize("text", OUT_OF_RANGE_IN_UTC)
def test_a_nested_timestamp_out_of_range_in_utc_is_a_located_problem(text: str) -> None:
    data = orjson.loads(wire.dumps(model.DataPoint(datetime.now(UTC), Decimal(1))))
    error = _invalid({**data, "timestamp": text}, model.DataPoint)
    assert [p.loc for p in error.problems] == [("timestamp",)]


# --- numbers ------------------------------------------------------------------------------------


@FAST
@given(value=st.one_of(sm.prices, sm.powers, sm.energies, sm.meter_values, sm.amounts_eur))
def test_wire_exact_decimals_read_back_equal(value: Decimal) -> None:
    on_wire = orjson.loads(orjson.dumps(wire.decimal_to_json(value)))
    assert wire.to_decimal(on_wire) == value
    assert wire.decode(wire.dumps(value), Decimal) == value


@st.composite
def decimals_of_15_digits(draw: st.DrawFn) -> Decimal:
    digits = draw(st.integers(1, 15))
    coefficient = draw(st.integers(0, 10**digits - 1))
    sign = draw(st.sampled_from([1, -1]))
    return Decimal(sign * coefficient).scaleb(draw(st.integers(-20, 20)))


@FAST
@given(value=decimals_of_15_digits())
def test_decimals_of_at_most_15_significant_digits_survive_the_float(value: Decimal) -> None:
    assert wire.to_decimal(orjson.loads(orjson.dumps(wire.decimal_to_json(value)))) == value


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"0.65", Decimal("0.65")),
        (b"1400.0", Decimal("1400")),
        (b"1400", Decimal("1400")),
        (b"0.1", Decimal("0.1")),
        (b"1e-06", Decimal("0.000001")),
        (b"0.30000000000000004", Decimal("0.30000000000000004")),
    ],
)
def test_a_json_number_becomes_the_decimal_it_reads_as(raw: bytes, expected: Decimal) -> None:
    assert wire.decode(raw, Decimal) == expected


@pytest.mark.parametrize("value", [True, False, "1", None, [1], float("nan"), float("inf")])
def test_to_decimal_rejects_what_is_not_a_finite_number(value: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        wire.to_decimal(value)


# --- tolerance ----------------------------------------------------------------------------------


def _with_extra_keys(obj: Any, data: Any, draw: Callable[[st.SearchStrategy[Any]], Any]) -> Any:
    """`data` (the JSON of `obj`) with unknown keys added to every object that is a model type."""
    if attrs.has(type(obj)) and isinstance(data, dict):
        out = {
            name: _with_extra_keys(getattr(obj, name), value, draw) if hasattr(obj, name) else value
            for name, value in data.items()
        }
        fields = attrs.fields_dict(type(obj))
        extra_names = st.text(max_size=10).filter(lambda k: k not in data and k not in fields)
        out.update(draw(st.dictionaries(extra_names, sm.json_values, max_size=2)))
        return out
    if isinstance(obj, tuple) and isinstance(data, list):
        return [_with_extra_keys(o, d, draw) for o, d in zip(obj, data, strict=True)]
    if isinstance(obj, dict) and isinstance(data, dict):  # an opaque-keyed map: keep its keys
        return {key: _with_extra_keys(obj[key], value, draw) for key, value in data.items()}
    return data


@QUICK
@given(obj=any_model_object, data=st.data())
def test_extra_unknown_keys_anywhere_are_ignored(obj: Any, data: st.DataObject) -> None:
    padded = _with_extra_keys(obj, orjson.loads(wire.dumps(obj)), data.draw)
    assert wire.structure(padded, type(obj)) == obj


@QUICK
@given(message=sm.known_messages, data=st.data())
def test_extra_unknown_keys_in_envelopes_are_ignored(
    message: model.Message, data: st.DataObject
) -> None:
    padded = _with_extra_keys(message, orjson.loads(wire.dumps(message)), data.draw)
    assert wire.message_from_data(padded) == message


@settings(max_examples=100, deadline=None)
@given(
    order=sm.orders,
    contract=sm.contracts,
    status=sm.unknown_names(model.OrderStatus),
    contract_status=sm.unknown_names(model.ContractStatus),
    side=sm.unknown_names(model.Side),
)
def test_unknown_status_names_survive_a_round_trip(
    order: model.Order, contract: model.Contract, status: str, contract_status: str, side: str
) -> None:
    contract = attrs.evolve(contract, status=contract_status)
    order = attrs.evolve(order, status=status, side=side, contracts=(contract,))
    decoded = wire.decode(wire.dumps(order), model.Order)
    assert decoded == order
    assert type(decoded.status) is str
    assert decoded.status == status
    assert type(decoded.side) is str
    assert type(decoded.contracts[0].status) is str
    assert decoded.contracts[0].status == contract_status


@pytest.mark.parametrize("status", list(model.OrderStatus))
def test_known_status_names_become_enum_members(status: model.OrderStatus) -> None:
    order = model.Order(
        order_id="o1",
        side=model.Side.BUY,
        power=Decimal(1000),
        price=Decimal("0.5"),
        delivery_start=datetime(2026, 11, 23, 11, 30, tzinfo=UTC),
        delivery_end=datetime(2026, 11, 23, 11, 45, tzinfo=UTC),
        status=status.value,
    )
    decoded = wire.decode(wire.dumps(order), model.Order)
    assert decoded.status is status
    assert decoded.side is model.Side.BUY


def test_an_unknown_side_in_a_request_is_an_error() -> None:
    body = orjson.loads(OFFICIAL_ORDER_BODY)
    error = _invalid({**body, "side": "hold"}, model.OrderRequest)
    assert [p.loc for p in error.problems] == [("side",)]
    assert "buy" in error.problems[0].msg


def test_a_null_location_id_entry_is_kept() -> None:
    location = wire.structure({"location_id": [None], "country_code": "CH"}, model.Location)
    assert location == model.Location(location_id=(None,), country_code="CH")


@pytest.mark.parametrize(
    "body",
    [{"country_code": None}, {"country_code": ""}, {}],
    ids=["null", "empty", "missing"],
)
def test_a_null_empty_or_missing_country_means_no_country(body: dict[str, Any]) -> None:
    location = wire.structure({"location_id": ["loc1"], **body}, model.Location)
    assert location == model.Location(location_id=("loc1",), country_code="")


def test_a_null_baseline_means_no_baseline() -> None:
    request = wire.decode(OFFICIAL_ORDER_BODY, model.OrderRequest)
    assert request.baseline is None


# The stale legacy baseline the official client puts on a sell (spec §9).
LEGACY_BASELINE = {
    "metering_id": "meter-1",
    "created_at": "2019-08-24T14:15:22Z",
    "reading_start": "2019-08-24T14:15:00Z",
    "reading_end": "2019-08-24T14:30:00Z",
    "resolution": 1,
    "unit_measured": "kWh",
    "direction": "up",
    "quality": "measured",
    "energy_product": "flexibility",
    "data_points": [{"2019-08-24T14:15:00Z": 1}],
}


def test_the_legacy_baseline_shape_of_the_official_client_parses() -> None:
    body = {**orjson.loads(OFFICIAL_ORDER_BODY), "side": "sell", "baseline": LEGACY_BASELINE}
    request = wire.structure(body, model.OrderRequest)
    assert request.side is model.Side.SELL
    assert request.baseline == model.MeterReading(
        data_points=(model.DataPoint(datetime(2019, 8, 24, 14, 15, tzinfo=UTC), value=Decimal(1)),),
        metering_id="meter-1",
        created_at=datetime(2019, 8, 24, 14, 15, 22, tzinfo=UTC),
        reading_start=datetime(2019, 8, 24, 14, 15, tzinfo=UTC),
        reading_end=datetime(2019, 8, 24, 14, 30, tzinfo=UTC),
        resolution=1,
        unit_measured="kWh",
    )


@FAST
@given(point=sm.data_points)
def test_a_legacy_data_point_reads_like_the_current_shape(point: model.DataPoint) -> None:
    legacy = {wire.format_datetime(point.timestamp): wire.decimal_to_json(point.value)}
    assert wire.structure(legacy, model.DataPoint) == point


# The exact order body the official client sends (spec §9, a real capture).
OFFICIAL_ORDER_BODY = (
    b'{"side":"buy","power":1400.0,"price":0.65,"delivery_start":"2026-11-23T11:30:00.000Z",\n'
    b' "delivery_end":"2026-11-23T12:30:00.000Z","expiry_time":"2026-11-23T10:37:49.371Z",\n'
    b' "location":{"location_id":[null],"country_code":"CH"},"baseline":null}'
)


def test_the_official_client_order_body_parses_to_the_expected_values() -> None:
    request = wire.decode(OFFICIAL_ORDER_BODY, model.OrderRequest)
    assert request == model.OrderRequest(
        side=model.Side.BUY,
        power=Decimal("1400"),
        price=Decimal("0.65"),
        delivery_start=datetime(2026, 11, 23, 11, 30, tzinfo=UTC),
        delivery_end=datetime(2026, 11, 23, 12, 30, tzinfo=UTC),
        expiry_time=datetime(2026, 11, 23, 10, 37, 49, 371000, tzinfo=UTC),
        location=model.Location(location_id=(None,), country_code="CH"),
        baseline=None,
    )
    assert request.side is model.Side.BUY
    assert str(request.price) == "0.65"
    assert request.duration_s == 3600


# --- located errors -----------------------------------------------------------------------------

SELL_WITH_BASELINE: dict[str, Any] = {
    "side": "sell",
    "power": 1000.0,
    "price": 0.5,
    "delivery_start": "2026-11-23T11:30:00Z",
    "delivery_end": "2026-11-23T12:00:00Z",
    "expiry_time": "2026-11-23T10:30:00Z",
    "location": {
        "location_id": ["loc1", "loc2"],
        "country_code": "DE",
        "coordinates": {"latitude": 50.1, "longitude": 8.7},
    },
    "baseline": {
        "metering_id": "m1",
        "reading_start": "2026-11-23T11:30:00Z",
        "reading_end": "2026-11-23T12:00:00Z",
        "resolution": 900,
        "unit_measured": "kWh",
        "data_points": [
            {"timestamp": "2026-11-23T11:45:00Z", "value": 0.25},
            {"timestamp": "2026-11-23T12:00:00Z", "value": 0.25},
        ],
    },
}


def _set(data: Any, path: Loc, value: Any) -> Any:
    data = copy.deepcopy(data)
    target = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return data


def _delete(data: Any, path: Loc) -> Any:
    data = copy.deepcopy(data)
    target = data
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return data


def test_the_located_error_fixture_is_valid() -> None:
    wire.structure(SELL_WITH_BASELINE, model.OrderRequest)


WRONG_TYPES: list[tuple[Loc, Any, str]] = [
    (("power",), "1400", "type_error"),
    (("price",), True, "type_error"),
    (("price",), None, "type_error"),
    (("delivery_start",), 1795426200, "type_error"),
    (("delivery_end",), "2026-11-23", "value_error"),
    (("expiry_time",), "2026-11-23T10:00:00:100Z", "value_error"),
    (("side",), "hold", "value_error"),
    (("location", "location_id", 1), 7, "type_error"),
    (("location", "country_code"), 49, "type_error"),
    (("location", "coordinates", "latitude"), "north", "type_error"),
    (("baseline", "resolution"), 900.5, "value_error"),
    (("baseline", "resolution"), "900", "type_error"),
    (("baseline", "reading_start"), "yesterday", "value_error"),
    (("baseline", "data_points", 0, "timestamp"), "2026-11-23T11:45:00", "value_error"),
    (("baseline", "data_points", 1, "value"), "0.25", "type_error"),
    (("baseline", "data_points"), 5, "type_error"),
]


@pytest.mark.parametrize(
    ("loc", "value", "kind"), WRONG_TYPES, ids=[render_loc(loc) for loc, _, _ in WRONG_TYPES]
)
def test_a_wrong_type_in_a_nested_place_is_located(loc: Loc, value: Any, kind: str) -> None:
    error = _invalid(_set(SELL_WITH_BASELINE, loc, value), model.OrderRequest)
    assert [(p.loc, p.type) for p in error.problems] == [(loc, kind)]
    assert str(error.problems[0]).startswith(render_loc(loc) + ": ")
    assert str(error).startswith(render_loc(loc) + ": ")


@pytest.mark.parametrize(
    "loc",
    [
        ("side",),
        ("power",),
        ("expiry_time",),
        ("baseline", "data_points"),
        ("baseline", "data_points", 0, "value"),
    ],
    ids=render_loc,
)
def test_a_missing_required_field_is_located(loc: Loc) -> None:
    error = _invalid(_delete(SELL_WITH_BASELINE, loc), model.OrderRequest)
    assert [(p.loc, p.type) for p in error.problems] == [(loc, "missing")]
    assert str(error.problems[0]) == f"{render_loc(loc)}: required field is missing"


def test_several_errors_are_all_reported_at_once() -> None:
    body = SELL_WITH_BASELINE
    for loc, value, _ in WRONG_TYPES[:-1]:
        if loc != ("price",) or value is not None:
            body = _set(body, loc, value)
    body = _delete(body, ("delivery_end",))
    error = _invalid(body, model.OrderRequest)
    expected = {loc for loc, _, _ in WRONG_TYPES[:-1]} | {("delivery_end",)}
    assert {p.loc for p in error.problems} == expected
    assert len(error.problems) == len(expected)
    for problem in error.problems:
        assert str(problem) in str(error)


def _scalar_leaves(data: Any, path: Loc = ()) -> list[Loc]:
    if isinstance(data, dict):
        return [leaf for key, value in data.items() for leaf in _scalar_leaves(value, (*path, key))]
    if isinstance(data, list):
        return [leaf for i, value in enumerate(data) for leaf in _scalar_leaves(value, (*path, i))]
    return [] if data is None else [path]


@QUICK
@given(obj=any_model_object, data=st.data())
def test_every_wrongly_typed_leaf_is_reported_at_its_own_path(
    obj: Any, data: st.DataObject
) -> None:
    body = orjson.loads(wire.dumps(obj))
    leaves = _scalar_leaves(body)
    if not leaves:
        return
    chosen = data.draw(st.sets(st.sampled_from(leaves), min_size=1, max_size=4))
    for loc in chosen:
        # Wrong for every scalar field: strings, numbers, timestamps, enums, ids.
        body = _set(body, loc, data.draw(st.sampled_from([[1], {"x": 1}, [], [None]])))
    error = _invalid(body, type(obj))
    assert {p.loc for p in error.problems} == chosen
    for problem in error.problems:
        assert str(problem).startswith(render_loc(problem.loc) + ": ")


@st.composite
def _mutated(draw: st.DrawFn, strategy: st.SearchStrategy[Any]) -> Any:
    """The JSON of a valid object with a few nodes (leaves or subtrees) replaced by garbage."""
    body = orjson.loads(wire.dumps(draw(strategy)))
    for _ in range(draw(st.integers(1, 3))):
        paths = _all_paths(body)
        loc = draw(st.sampled_from(paths))
        garbage = draw(sm.json_values)
        body = garbage if loc == () else _set(body, loc, garbage)
    return body


def _all_paths(data: Any, path: Loc = ()) -> list[Loc]:
    out = [path]
    if isinstance(data, dict):
        for key, value in data.items():
            out += _all_paths(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += _all_paths(value, (*path, i))
    return out


def _structure_or_invalid(data: Any, cls: type[Any]) -> None:
    try:
        wire.structure(data, cls)
    except Invalid as error:
        problems = error.problems
    else:
        return
    assert problems
    for problem in problems:
        assert all(isinstance(part, str | int) for part in problem.loc)
        assert str(problem).startswith("$")


@FAST
@given(data=sm.json_values)
def test_arbitrary_json_fed_to_an_order_request_gives_only_invalid(data: Any) -> None:
    _structure_or_invalid(data, model.OrderRequest)


@FAST
@given(data=_mutated(sm.order_requests))
def test_a_damaged_order_request_gives_only_invalid(data: Any) -> None:
    _structure_or_invalid(data, model.OrderRequest)


@QUICK
@given(data=st.data())
def test_a_damaged_object_of_any_model_type_gives_only_invalid(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(list(ROUND_TRIP)))
    _structure_or_invalid(data.draw(_mutated(ROUND_TRIP[cls])), cls)


def _parse_or_invalid(raw: bytes) -> None:
    try:
        wire.parse_message(raw)
    except Invalid as error:
        problems = error.problems
    else:
        return
    assert problems


@FAST
@given(data=st.one_of(sm.json_values, _mutated(sm.known_messages)))
def test_arbitrary_json_fed_to_parse_message_gives_only_invalid(data: Any) -> None:
    _parse_or_invalid(orjson.dumps(data))


@FAST
@given(raw=st.binary(max_size=64))
def test_random_bytes_fed_to_parse_message_give_only_invalid(raw: bytes) -> None:
    _parse_or_invalid(raw)


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        (b"", ()),
        (b"{", ()),
        (b"[]", ()),
        (b'"control"', ()),
        (b"{}", ("type",)),
        (b'{"type": 5}', ("type",)),
        (b'{"type":"control"}', ("status",)),
        (b'{"type":"ticker_update","data":{"price":"1"}}', ("data", "closed_at")),
    ],
)
def test_a_bad_frame_is_invalid_at_a_location(raw: bytes, loc: Loc) -> None:
    with pytest.raises(Invalid) as caught:
        wire.parse_message(raw)
    assert caught.value.problems[0].loc == loc


# --- containers of the wrong kind ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "body", "loc"),
    [
        (model.OrderRequest, _set(SELL_WITH_BASELINE, ("location",), "CH"), ("location",)),
        (model.OrderRequest, _set(SELL_WITH_BASELINE, ("location",), []), ("location",)),
        (model.OrderRequest, _set(SELL_WITH_BASELINE, ("location",), 5), ("location",)),
        (model.MeterReading, {"data_points": ["x"]}, ("data_points", 0)),
        pytest.param(model.OrderBookUpdate, {"data": []}, ("data",), id="empty-book"),
        pytest.param(model.Control, {"status": "success", "data": "hello"}, ("data",)),
        pytest.param(
            model.Verification,
            {"verification_id": "v", "status": "pending", "result": []},
            ("result",),
        ),
        pytest.param(
            model.OrderRequest,
            _set(SELL_WITH_BASELINE, ("baseline",), "x"),
            ("baseline",),
        ),
        pytest.param(model.Location, {"coordinates": "x"}, ("coordinates",)),
        pytest.param(model.OrderStatusUpdate, {"data": "x"}, ("data",)),
    ],
)
def test_a_non_object_where_an_object_is_expected_is_one_problem_at_that_field(
    cls: type[Any], body: dict[str, Any], loc: Loc
) -> None:
    error = _invalid(body, cls)
    assert [(p.loc, p.type) for p in error.problems] == [(loc, "type_error")]


MINIMAL_ORDER = {
    "order_id": "o1",
    "side": "buy",
    "power": 1000.0,
    "price": 0.5,
    "delivery_start": "2026-11-23T11:30:00Z",
    "delivery_end": "2026-11-23T11:45:00Z",
    "status": "accepted",
}


@pytest.mark.parametrize(
    ("cls", "body", "loc"),
    [
        (model.MeterReading, {"data_points": 5}, ("data_points",)),
        (model.Location, {"location_id": None}, ("location_id",)),
        (model.Location, {"location_id": 5}, ("location_id",)),
        (model.OrderBook, {"bids": []}, ("bids",)),
        (model.OrderBook, {"asks": "x"}, ("asks",)),
        pytest.param(model.Location, {"location_id": "loc1"}, ("location_id",)),
        pytest.param(model.Location, {"location_id": {"loc1": 1}}, ("location_id",)),
        pytest.param(model.MeterReading, {"data_points": ""}, ("data_points",)),
        pytest.param(model.MeterReading, {"data_points": {}}, ("data_points",)),
        pytest.param(model.OrderBook, {"bids": {"7": ""}}, ("bids", "7")),
        pytest.param(
            model.Order,
            {**MINIMAL_ORDER, "contracts": ""},
            ("contracts",),
        ),
    ],
)
def test_a_non_list_where_a_list_is_expected_is_rejected_at_that_field(
    cls: type[Any], body: dict[str, Any], loc: Loc
) -> None:
    error = _invalid(body, cls)
    assert [p.loc for p in error.problems] == [loc]


# --- the fast path for books ---------------------------------------------------------------------


def _has_coordinates(update: model.OrderBookUpdate) -> bool:
    groups = [*update.data.bids.values(), *update.data.asks.values()]
    return any(e.location.coordinates is not None for group in groups for e in group)


@given(sm.orderbook_updates)
def test_the_fast_book_path_reads_what_the_general_one_reads(update: model.OrderBookUpdate) -> None:
    data = orjson.loads(wire.dumps(update))
    fast = wire.fast_book_update(data)
    if _has_coordinates(update):
        assert fast is None  # rare on the wire: left to the general path
    else:
        assert fast == update
    assert wire.message_from_data(data) == update


def _paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [at]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*at, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*at, index))
    return found


@st.composite
def mutated_books(draw: st.DrawFn) -> Any:
    """A real book update with one node replaced by any JSON value, or one key removed."""
    data = orjson.loads(wire.dumps(draw(sm.orderbook_updates)))
    path = draw(st.sampled_from(_paths(data)[1:]))
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(sm.json_values)
    return data


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_books())
def test_the_fast_book_path_never_disagrees_with_the_general_one(data: Any) -> None:
    """It reads what it can exactly as the general path does, and gives up on the rest (which
    the general path then reads, or refuses with a located problem)."""
    fast = wire.fast_book_update(data)
    try:
        general = wire.structure(data, model.OrderBookUpdate)
    except Invalid:
        assert fast is None
    else:
        assert fast is None or fast == general


# --- fields that check themselves (attrs validators) --------------------------------------------


@attrs.frozen
class _Checked:
    """Fields with located validators beside a timestamp and a renamed `Literal`."""

    count: int = attrs.field(default=1, validator=at_least(1))
    limit: Decimal = attrs.field(default=Decimal(1), validator=at_least(0))
    at: datetime | None = None
    class_: Literal["a", "b"] = attrs.field(default="a", metadata={"key": "class"})
    window_s: float = attrs.field(default=1.0, validator=seconds())


@attrs.frozen
class _NeedsItself:
    """A validator that reads the instance: it cannot run on its own."""

    low: int = 0
    high: int = attrs.field(default=1)

    @high.validator
    def _above_low(self, attribute: attrs.Attribute[int], value: int) -> None:
        if value <= self.low:
            raise Invalid.single(("high",), "must be above low")


@pytest.mark.parametrize("converter", [wire.CONVERTER, wire.STRICT_CONVERTER])
def test_every_field_that_fails_its_validator_is_reported_at_once(converter: Any) -> None:
    """attrs stops at the first failing validator; the converter reports them all."""
    with pytest.raises(Invalid) as caught:
        wire.structure({"count": 0, "limit": -1, "window_s": 0}, _Checked, converter=converter)
    assert [str(p) for p in caught.value.problems] == [
        "$.count: must be at least 1, got 0",
        "$.limit: must be 0 or more, got -1",
        "$.window_s: must be a finite number of seconds greater than 0, got 0.0",
    ]


def test_validators_are_reported_beside_the_fields_that_do_not_structure() -> None:
    data = {"count": 0, "at": "yesterday", "class": "c", "window_s": float("inf")}
    with pytest.raises(Invalid) as caught:
        wire.structure(data, _Checked, loc=("outer",), converter=wire.STRICT_CONVERTER)
    lines = sorted(str(p) for p in caught.value.problems)
    assert lines[0].startswith("$.outer.at: 'yesterday' is not an ISO-8601 timestamp")
    assert lines[1:] == [
        "$.outer.class: must be one of a, b, got 'c'",
        "$.outer.count: must be at least 1, got 0",
        "$.outer.window_s: must be a finite number of seconds greater than 0, got inf",
    ]


def test_a_validator_that_reads_the_instance_is_reported_as_attrs_met_it() -> None:
    with pytest.raises(Invalid) as caught:
        wire.structure({"low": 5, "high": 5}, _NeedsItself)
    assert [str(p) for p in caught.value.problems] == ["$.high: must be above low"]


@given(
    count=st.integers(max_value=0),
    limit=st.decimals(max_value=Decimal("-0.000001"), allow_nan=False, allow_infinity=False),
    window_s=st.one_of(
        st.floats(max_value=0.0), st.sampled_from([float("inf"), float("-inf"), float("nan")])
    ),
    which=st.sets(st.sampled_from(["count", "limit", "window_s"]), min_size=1),
)
def test_any_out_of_range_values_are_each_located_at_their_field(
    count: int, limit: Decimal, window_s: float, which: set[str]
) -> None:
    values = {"count": count, "limit": float(limit), "window_s": window_s}
    with pytest.raises(Invalid) as caught:
        wire.structure({k: values[k] for k in which}, _Checked, converter=wire.STRICT_CONVERTER)
    assert {p.loc for p in caught.value.problems} == {(k,) for k in which}


@given(
    value=st.one_of(st.text(max_size=5), st.integers(), st.booleans(), st.none(), sm.json_values)
)
def test_a_literal_takes_only_its_values_of_their_type(value: Any) -> None:
    if value in ("a", "b") and type(value) is str:
        assert wire.structure({"class": value}, _Checked).class_ == value
        return
    with pytest.raises(Invalid) as caught:
        wire.structure({"class": value}, _Checked)
    [problem] = caught.value.problems
    assert problem.loc == ("class",)
    assert problem.msg.startswith("must be one of a, b, got ")
