"""The GLocalFlex JSON format: one cattrs converter, used by the client and the sandbox alike.

- Timestamps: ISO-8601 with a `T`, seconds, an optional fraction and a zone (`Z` or `±hh:mm`); they
  become timezone-aware UTC datetimes and are emitted with a `Z` (microseconds only when present).
- Numbers: powers, prices and energies become `Decimal`, built from the shortest repr of the float
  the JSON parser made, so `0.65` on the wire is exactly `Decimal("0.65")`, round trip included.
- Enums: their wire strings. Status fields keep names they do not know as plain strings.
- Inbound is tolerant of what does not matter (extra keys, the legacy `{"<ts>": v}` data point, a
  `null` country) and strict about types. Every failure is an `Invalid` with located problems.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import cattrs
import orjson
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    IterableValidationError,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from flexbot import model
from flexbot.problems import Invalid, Loc, Problem

T = TypeVar("T")

# --- primitives ---------------------------------------------------------------------------------

_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:?\d{2})"
)


def parse_datetime(text: str) -> datetime:
    """Parse a wire timestamp into an aware UTC datetime; a naive or malformed one is an error."""
    m = _TIMESTAMP.fullmatch(text)
    if m is None:
        raise ValueError(
            f"{text!r} is not an ISO-8601 timestamp with a zone (e.g. 2026-11-23T11:30:00Z)"
        )
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        dt = datetime.fromisoformat(
            f"{year}-{month}-{day}T{hour}:{minute}:{second}.{micros:06d}{zone}"
        )
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid timestamp: {exc}") from None
    return dt.astimezone(UTC)


def format_datetime(dt: datetime) -> str:
    """UTC with a `Z`; fractional seconds only when there are some."""
    if dt.tzinfo is None:
        raise ValueError("refusing to emit a naive datetime: every market time is UTC")
    dt = dt.astimezone(UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.microsecond:
        text += f".{dt.microsecond:06d}"
    return text + "Z"


def to_decimal(value: object) -> Decimal:
    """A JSON number as an exact Decimal (bools and strings are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise TypeError(f"expected a number, got {_kind(value)}")
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("expected a finite number")
        return Decimal(repr(value))
    return Decimal(value)


def decimal_to_json(value: Decimal) -> float | int:
    """The nearest float: what JSON carries and what the official client sends (`1400.0`). Exact for
    every Decimal with at most 15 significant digits, which covers prices, powers and energies."""
    return float(value)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        str: "a string",
        int: "an integer",
        float: "a number",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _structure_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {_kind(value)}")
    return value


def _structure_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {_kind(value)}")
    return value


def _structure_int(value: object, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected an integer, got {_kind(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    return value


def _structure_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {_kind(value)}")
    return float(value)


def _structure_datetime(value: object, _: type) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO-8601 timestamp string, got {_kind(value)}")
    return parse_datetime(value)


def _strict_enum(cls: type[enum.StrEnum]) -> Callable[[object, type], enum.StrEnum]:
    allowed = ", ".join(m.value for m in cls)

    def structure(value: object, _: type) -> enum.StrEnum:
        try:
            return cls(value)  # type: ignore[arg-type]  # any non-member is refused just below
        except ValueError:
            raise ValueError(f"must be one of {allowed}, got {value!r}") from None

    return structure


def _tolerant_enum(cls: type[enum.StrEnum]) -> Callable[[object, type], str]:
    """For `Enum | str` fields: a known name becomes a member, an unknown one stays a string."""
    members = {m.value: m for m in cls}

    def structure(value: object, _: type) -> str:
        if not isinstance(value, str):
            raise TypeError(f"expected a status name string, got {_kind(value)}")
        return members.get(value, value)

    return structure


# --- the converter ------------------------------------------------------------------------------

_TOLERANT_ENUMS: tuple[type[enum.StrEnum], ...] = (
    model.Side,
    model.OrderStatus,
    model.ContractStatus,
    model.VerificationStatus,
    model.SettlementStatus,
    model.MeasurementType,
)
_STRICT_ENUMS: tuple[type[enum.StrEnum], ...] = (model.Side, model.MeasurementType)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=True)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(Decimal, lambda v, _: to_decimal(v))
    conv.register_unstructure_hook(Decimal, decimal_to_json)
    conv.register_structure_hook(datetime, _structure_datetime)
    conv.register_unstructure_hook(datetime, format_datetime)
    for strict in _STRICT_ENUMS:
        conv.register_structure_hook(strict, _strict_enum(strict))
    for tolerant in _TOLERANT_ENUMS:
        conv.register_structure_hook(tolerant | str, _tolerant_enum(tolerant))
        conv.register_unstructure_hook(tolerant, lambda member: member.value)

    location_fn = make_dict_structure_fn(model.Location, conv)

    def structure_location(value: object, cls: type) -> model.Location:
        # The docs make the country optional and the official client sends "": None means "" too.
        if not isinstance(value, Mapping):
            raise TypeError(f"expected an object, got {_kind(value)}")
        if value.get("country_code", "") is None:
            value = {**value, "country_code": ""}
        return location_fn(value, cls)

    conv.register_structure_hook(model.Location, structure_location)
    conv.register_unstructure_hook(
        model.Location,
        make_dict_unstructure_fn(model.Location, conv, coordinates=override(omit_if_default=True)),
    )

    point_fn = make_dict_structure_fn(model.DataPoint, conv)

    def structure_point(value: object, cls: type) -> model.DataPoint:
        # Legacy shape (spec §9): `{"2019-08-24T14:15:00Z": 1}`, one key, the timestamp itself.
        if not isinstance(value, Mapping):
            raise TypeError(f"expected an object, got {_kind(value)}")
        if "timestamp" not in value and len(value) == 1:
            ((key, val),) = value.items()
            value = {"timestamp": key, "value": val}
        return point_fn(value, cls)

    conv.register_structure_hook(model.DataPoint, structure_point)
    return conv


CONVERTER = _make_converter()


# --- errors -------------------------------------------------------------------------------------


def _problems(exc: BaseException, loc: Loc) -> Iterator[Problem]:
    if isinstance(exc, ClassValidationError | IterableValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            part: str | int = note.name if isinstance(note, AttributeValidationNote) else note.index
            yield from _problems(sub, (*loc, part))
        for sub in without:
            yield from _problems(sub, loc)
    elif isinstance(exc, Invalid):
        yield from (p.under(loc) for p in exc.problems)
    elif isinstance(exc, KeyError):
        yield Problem(loc, "required field is missing", "missing")
    elif isinstance(exc, TypeError):
        yield Problem(loc, str(exc), "type_error")
    else:
        yield Problem(loc, str(exc), "value_error")


def structure(data: Any, cls: type[T], *, loc: Loc = ()) -> T:
    """Turn decoded JSON into `cls`, or raise `Invalid` listing every located problem."""
    if not isinstance(data, dict) and attrs_has(cls):
        raise Invalid.single(loc, f"expected an object, got {_kind(data)}", "type_error")
    try:
        return CONVERTER.structure(data, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise Invalid(list(_problems(exc, loc))) from None


def attrs_has(cls: type) -> bool:
    return hasattr(cls, "__attrs_attrs__")


def unstructure(obj: object) -> Any:
    return CONVERTER.unstructure(obj)


def loads(raw: bytes | bytearray | memoryview | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Invalid.single((), f"not valid JSON: {exc}", "json_invalid") from None


def dumps(obj: object) -> bytes:
    """Serialize a model object (or plain data) to JSON bytes."""
    return orjson.dumps(CONVERTER.unstructure(obj))


def decode(raw: bytes | bytearray | memoryview | str, cls: type[T]) -> T:
    return structure(loads(raw), cls)


# --- WebSocket messages -------------------------------------------------------------------------

_MESSAGE_TYPES: Mapping[str, type[Any]] = {
    model.MessageType.CONTROL: model.Control,
    model.MessageType.ORDER_STATUS_UPDATE: model.OrderStatusUpdate,
    model.MessageType.CONTRACT_STATUS_UPDATE: model.ContractStatusUpdate,
    model.MessageType.TICKER_UPDATE: model.TickerUpdate,
    model.MessageType.EXPIRED_ORDER_UPDATE: model.ExpiredOrderUpdate,
    model.MessageType.ORDERBOOK_UPDATE: model.OrderBookUpdate,
}


def message_from_data(data: Any) -> model.Message:
    """Type a decoded WebSocket message by its `type`; an unknown type is kept as UnknownMessage."""
    if not isinstance(data, dict):
        raise Invalid.single((), f"expected a JSON object, got {_kind(data)}", "type_error")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise Invalid.single(("type",), "required string field is missing", "missing")
    cls = _MESSAGE_TYPES.get(kind)
    if cls is None:
        return model.UnknownMessage(type=kind, raw=data)
    message: model.Message = structure(data, cls)
    return message


def parse_message(raw: bytes | bytearray | memoryview | str) -> model.Message:
    """Decode one WebSocket frame. Raises `Invalid` for a frame that cannot be understood."""
    return message_from_data(loads(raw))
