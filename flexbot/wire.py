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
from collections import abc
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache, partial
from typing import Any, TypeVar, get_args, get_origin

import attrs
import cattrs
import orjson
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from flexbot import model
from flexbot.problems import Invalid, Loc, Problem

T = TypeVar("T")

# --- primitives ---------------------------------------------------------------------------------

_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:?\d{2})"
)


# Books repeat the same few delivery times in every entry, and prices and powers repeat too:
# memoizing the two pure conversions halves the cost of decoding a book.
@lru_cache(maxsize=8192)
def parse_datetime(text: str) -> datetime:
    """Parse a wire timestamp into an aware UTC datetime; a naive or malformed one is an error."""
    m = _TIMESTAMP.fullmatch(text)
    if m is None:
        raise ValueError(
            f"{text!r} is not an ISO-8601 timestamp with a zone (e.g. 2026-11-23T11:30:00Z)"
        )
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    fraction = fraction or "0"
    micros = int(fraction[:6].ljust(6, "0"))
    # A datetime holds microseconds. Any precision is accepted, rounded *up*: truncating would let
    # 11:00:00.000000001 pass as on the 15-minute grid.
    round_up = timedelta(microseconds=1 if fraction[6:].strip("0") else 0)
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        dt = datetime.fromisoformat(
            f"{year}-{month}-{day}T{hour}:{minute}:{second}.{micros:06d}{zone}"
        )
        return (dt + round_up).astimezone(UTC)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid timestamp: {exc}") from None
    except OverflowError:
        raise ValueError(f"{text!r} is out of range once converted to UTC") from None


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
        return _float_decimal(value)
    return Decimal(value)


@lru_cache(maxsize=8192)
def _float_decimal(value: float) -> Decimal:
    return Decimal(repr(value))


def decimal_to_json(value: Decimal) -> float | int:
    """The nearest float: what JSON carries and what the official client sends (`1400.0`). Exact for
    every Decimal with at most 15 significant digits, which covers prices, powers and energies."""
    return float(value)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, str) and len(value) <= 40:
        return f"the string {value!r}"  # short strings are shown: the typo is the message
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


# --- containers ---------------------------------------------------------------------------------
# cattrs would iterate a string where a list is expected and read `[]` as an all-defaults object;
# on the wire both are corrupt input, so every object must be a JSON object and every list a list.


def _legacy_location(value: Mapping[str, Any]) -> Mapping[str, Any]:
    # The docs make the country optional and the official client sends "": None means "" too.
    if value.get("country_code", "") is None:
        return {**value, "country_code": ""}
    return value


def _legacy_point(value: Mapping[str, Any]) -> Mapping[str, Any]:
    # Legacy shape (spec §9): `{"2019-08-24T14:15:00Z": 1}`, one key, the timestamp itself.
    if "timestamp" not in value and len(value) == 1:
        ((key, val),) = value.items()
        return {"timestamp": key, "value": val}
    return value


_PREPROCESS: Mapping[type, Callable[[Mapping[str, Any]], Mapping[str, Any]]] = {
    model.Location: _legacy_location,
    model.DataPoint: _legacy_point,
}


def _object_hook(
    conv: cattrs.Converter, forbid_extra_keys: bool, cls: type[T]
) -> Callable[[object, type], T]:
    # A field's key is its name, or its metadata's "key" (`class` for a field `class_`).
    renames = {
        a.name: a.metadata["key"]
        for a in attrs.fields(cls)  # type: ignore[arg-type]
        if "key" in a.metadata
    }
    overrides: dict[str, Any] = {name: override(rename=key) for name, key in renames.items()}
    plain_fn = make_dict_structure_fn(cls, conv, **overrides)
    preprocess = _PREPROCESS.get(cls)
    known = [renames.get(a.name, a.name) for a in attrs.fields(cls)]  # type: ignore[arg-type]

    def fields_fn(value: Mapping[str, Any], cls: type[T]) -> T:
        if not renames:
            return plain_fn(value, cls)
        try:
            return plain_fn(value, cls)
        except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
            # Locate problems by the document's key (`class`), not the attribute (`class_`).
            raise Invalid(
                [
                    attrs.evolve(p, loc=(renames.get(str(p.loc[0]), p.loc[0]), *p.loc[1:]))
                    if p.loc
                    else p
                    for p in _problems(exc, ())
                ]
            ) from None

    def structure(value: object, _: type) -> T:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected an object, got {_kind(value)}")
        value = preprocess(value) if preprocess else value
        if forbid_extra_keys:
            expected = ", ".join(known)
            problems = [
                Problem((str(k),), f"unknown key (expected one of: {expected})")
                for k in value
                if k not in known
            ]
            if problems:  # report the fields' own problems in the same breath
                try:
                    fields_fn(value, cls)
                except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
                    problems += _problems(exc, ())
                raise Invalid(problems)
        return fields_fn(value, cls)

    return structure


def _is_homogeneous_tuple(tp: Any) -> bool:
    args = get_args(tp)
    return get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis


def _list_hook(conv: cattrs.Converter, tp: Any) -> Callable[[object, type], tuple[Any, ...]]:
    item_type = get_args(tp)[0]

    def structure(value: object, _: type) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list, got {_kind(value)}")
        items, errors = [], []
        for index, item in enumerate(value):
            try:
                items.append(conv.structure(item, item_type))
            except Exception as exc:  # collected and re-raised below, located by index
                exc.add_note(IterableValidationNote(f"@ index {index}", index, item_type))
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"while structuring {tp!r}", errors, tp)
        return tuple(items)

    return structure


def _is_str_mapping(tp: Any) -> bool:
    return get_origin(tp) in (Mapping, dict, abc.Mapping) and get_args(tp)[:1] == (str,)


def _mapping_hook(conv: cattrs.Converter, tp: Any) -> Callable[[object, type], dict[str, Any]]:
    value_type = get_args(tp)[1]

    def structure(value: object, _: type) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected an object, got {_kind(value)}")
        out, errors = {}, []
        for key, item in value.items():
            try:
                out[key] = conv.structure(item, value_type)
            except Exception as exc:  # collected and re-raised below, located by key
                exc.add_note(IterableValidationNote(f"@ key {key!r}", key, value_type))
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"while structuring {tp!r}", errors, tp)
        return out

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


def _make_converter(*, forbid_extra_keys: bool = False) -> cattrs.Converter:
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

    conv.register_structure_hook_factory(attrs.has, partial(_object_hook, conv, forbid_extra_keys))
    conv.register_structure_hook_factory(_is_homogeneous_tuple, partial(_list_hook, conv))
    conv.register_structure_hook_factory(_is_str_mapping, partial(_mapping_hook, conv))
    conv.register_unstructure_hook(
        model.Location,
        make_dict_unstructure_fn(model.Location, conv, coordinates=override(omit_if_default=True)),
    )
    return conv


CONVERTER = _make_converter()
# Configuration is ours, not the market's: an unknown key there is a typo, so it is an error.
STRICT_CONVERTER = _make_converter(forbid_extra_keys=True)


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


def structure(
    data: Any, cls: type[T], *, loc: Loc = (), converter: cattrs.Converter = CONVERTER
) -> T:
    """Turn decoded JSON into `cls`, or raise `Invalid` listing every located problem."""
    if not isinstance(data, dict) and attrs_has(cls):
        raise Invalid.single(loc, f"expected an object, got {_kind(data)}", "type_error")
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise Invalid(list(_problems(exc, loc))) from None


def register_enum(cls: type[enum.StrEnum]) -> None:
    """Read `cls` strictly (a name outside it is a located error listing the allowed ones) in
    both converters: for enums of our own configuration, e.g. a trading state."""
    for conv in (CONVERTER, STRICT_CONVERTER):
        conv.register_structure_hook(cls, _strict_enum(cls))


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
    if kind == model.MessageType.ORDERBOOK_UPDATE:
        fast = fast_book_update(data)
        if fast is not None:
            return fast
    cls = _MESSAGE_TYPES.get(kind)
    if cls is None:
        return model.UnknownMessage(type=kind, raw=data)
    message: model.Message = structure(data, cls)
    return message


def parse_message(raw: bytes | bytearray | memoryview | str) -> model.Message:
    """Decode one WebSocket frame. Raises `Invalid` for a frame that cannot be understood."""
    return message_from_data(loads(raw))


# --- the hot path: order books ------------------------------------------------------------------
# A book is most of what the market sends, and the general converter (detailed validation, a hook
# per level) spends ~8 µs an entry. This reads the plain well-formed shape by hand, with the same
# conversions, and gives up (None) on anything else: the general path then decides, and locates
# the problem if there is one. A property test holds the two to the same result.

_SIDES: Mapping[str, model.Side] = {m.value: m for m in model.Side}
_BOOK_KEYS = ("bids", "asks")


class _NotPlain(Exception):
    """The input is not the plain shape the fast path reads."""


def fast_book_update(data: Mapping[str, Any]) -> model.OrderBookUpdate | None:
    """`data` (a decoded `orderbook_update`) as the general converter would structure it, or None
    when it is not plainly well-formed."""
    try:
        created = data.get("created_at")
        kind = data["type"]
        if type(kind) is not str:
            return None
        return model.OrderBookUpdate(
            data=_fast_book(data["data"]),
            created_at=None if created is None else _fast_datetime(created),
            type=kind,
        )
    except (_NotPlain, KeyError, ValueError, TypeError):
        return None


def _fast_book(body: object) -> model.OrderBook:
    if type(body) is not dict:
        raise _NotPlain
    sides = [_fast_groups(body[key]) if key in body else {} for key in _BOOK_KEYS]
    return model.OrderBook(bids=sides[0], asks=sides[1])


def _fast_groups(groups: object) -> dict[str, tuple[model.BookEntry, ...]]:
    if type(groups) is not dict:
        raise _NotPlain
    out = {}
    for key, entries in groups.items():
        if type(entries) is not list:
            raise _NotPlain
        out[key] = tuple([_fast_entry(entry) for entry in entries])
    return out


def _fast_entry(entry: object) -> model.BookEntry:
    if type(entry) is not dict:
        raise _NotPlain
    side = entry["side"]
    if type(side) is not str:
        raise _NotPlain
    energy = entry.get("energy")
    place = entry.get("location", _ABSENT)
    if place is _ABSENT:
        location = _NO_LOCATION
    elif type(place) is dict and place.get("coordinates") is None:
        ids = place.get("location_id", ())
        # A list of ids is not hashable: its tuple is the cache key (unhashable items raise).
        location = _fast_location(
            tuple(ids) if type(ids) is list else ids, place.get("country_code", "")
        )
    else:
        raise _NotPlain  # null, or coordinates: the general path decides
    return model.BookEntry(
        side=_SIDES.get(side, side),
        power=_fast_decimal(entry["power"]),
        price=_fast_decimal(entry["price"]),
        delivery_start=_fast_datetime(entry["delivery_start"]),
        delivery_end=_fast_datetime(entry["delivery_end"]),
        location=location,
        energy=None if energy is None else _fast_decimal(energy),
    )


_ABSENT = object()
_NO_LOCATION = model.Location()


# Books name the same few locations over and over: one Location each (they are immutable).
@lru_cache(maxsize=4096)
def _fast_location(ids: object, country: object) -> model.Location:
    if type(ids) is not tuple or not all(i is None or type(i) is str for i in ids):
        raise _NotPlain
    if country is None:
        country = ""  # as `_legacy_location`
    elif type(country) is not str:
        raise _NotPlain
    return model.Location(location_id=ids, country_code=country)


def _fast_decimal(value: object) -> Decimal:
    if type(value) is float:
        if value - value != 0:  # NaN and infinities: not plain
            raise _NotPlain
        return _float_decimal(value)
    if type(value) is int:
        return _int_decimal(value)
    raise _NotPlain


@lru_cache(maxsize=4096)
def _int_decimal(value: int) -> Decimal:
    return Decimal(value)


def _fast_datetime(value: object) -> datetime:
    if type(value) is not str:
        raise _NotPlain
    return parse_datetime(value)
