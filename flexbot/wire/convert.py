"""The strict cattrs converters, and the located problems their failures become.

`CONVERTER` reads the market's JSON; `STRICT_CONVERTER` reads our own configuration, where an
unknown key is a typo and so an error. Both are strict about types (a string is not a list, `[]`
is not an object, `true` is not a number) and report every failure as an `Invalid` whose problems
are located by path: `$.engine.max_failures: must be at least 1, got 0`.

A field's attrs validator takes part: one that raises `Invalid.single((attribute.name,), message)`
is located at its field, and every field of a class that fails its validator is reported at once
(attrs itself stops at the first).
"""

from __future__ import annotations

import enum
from collections import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from flexbot import model
from flexbot.problems import Invalid, Loc, Problem
from flexbot.wire.scalars import (
    decimal_to_json,
    describe,
    format_datetime,
    parse_datetime,
    to_decimal,
)

T = TypeVar("T")

# --- primitives ---------------------------------------------------------------------------------


def _structure_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {describe(value)}")
    return value


def _structure_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {describe(value)}")
    return value


def _structure_int(value: object, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected an integer, got {describe(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    return value


def _structure_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {describe(value)}")
    return float(value)


def _structure_datetime(value: object, _: type) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO-8601 timestamp string, got {describe(value)}")
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
            raise TypeError(f"expected a status name string, got {describe(value)}")
        return members.get(value, value)

    return structure


def _is_literal(tp: Any) -> bool:
    return get_origin(tp) is Literal


def _literal_hook(tp: Any) -> Callable[[object, type], object]:
    """`Literal["wall", "sandbox"]`: one of those values, and of its type (`1` is not `True`)."""
    allowed = get_args(tp)
    names = ", ".join(str(a) for a in allowed)

    def structure(value: object, _: type) -> object:
        if any(type(value) is type(a) and value == a for a in allowed):
            return value
        raise ValueError(f"must be one of {names}, got {value!r}")

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
    fields: Sequence[attrs.Attribute[Any]] = attrs.fields(cls)  # type: ignore[arg-type]
    # A field's key is its name, or its metadata's "key" (`class` for a field `class_`).
    renames = {a.name: a.metadata["key"] for a in fields if "key" in a.metadata}
    overrides: dict[str, Any] = {name: override(rename=key) for name, key in renames.items()}
    plain_fn = make_dict_structure_fn(cls, conv, **overrides)
    preprocess = _PREPROCESS.get(cls)
    known = [renames.get(a.name, a.name) for a in fields]
    validated = [a for a in fields if a.validator is not None]

    def every_validator_problem(exc: Exception, value: Mapping[str, Any]) -> list[Problem] | None:
        """Every problem of the object, its fields' validators' included. attrs runs validators
        only once every field has structured, one at a time, and stops at the first that fails;
        here each field that structured is validated on its own, so that a user learns of every
        bad field in one go. None when there is nothing to add to `exc` (or a validator needs
        the instance, which does not exist): then `exc` stands as it is."""
        if not validated or not isinstance(exc, ClassValidationError):
            return None
        with_notes, without = exc.group_exceptions()
        if without and (with_notes or len(without) != 1 or not isinstance(without[0], Invalid)):
            return None  # the constructor failed, and not in a located validator
        failed = {note.name for _, note in with_notes if isinstance(note, AttributeValidationNote)}
        try:
            hints = get_type_hints(cls)
        except Exception:  # an unresolvable annotation: the problems found will do
            return None
        found: list[Problem] = []
        for a in validated:
            key = renames.get(a.name, a.name)
            if a.name in failed or key not in value:
                continue  # reported already, or a default: the class's own choice
            try:
                # It structured once already, before the constructor (or another field) failed.
                assert a.validator is not None
                a.validator(None, a, conv.structure(value[key], hints[a.name]))
            except Invalid as bad:
                found += bad.problems
            except Exception:  # e.g. a validator that reads the instance
                return None
        if not found:
            return None
        return [*_problems(exc, ()), *found] if with_notes else found

    def fields_fn(value: Mapping[str, Any], cls: type[T]) -> T:
        try:
            return plain_fn(value, cls)
        except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
            problems = every_validator_problem(exc, value)
            if problems is None and not renames:
                raise
            # Locate problems by the document's key (`class`), not the attribute (`class_`).
            raise Invalid(
                [
                    attrs.evolve(p, loc=(renames.get(str(p.loc[0]), p.loc[0]), *p.loc[1:]))
                    if p.loc
                    else p
                    for p in (_problems(exc, ()) if problems is None else problems)
                ]
            ) from None

    def structure(value: object, _: type) -> T:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected an object, got {describe(value)}")
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
            raise TypeError(f"expected a list, got {describe(value)}")
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
            raise TypeError(f"expected an object, got {describe(value)}")
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


# --- the converters -----------------------------------------------------------------------------

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
    conv.register_structure_hook_factory(_is_literal, _literal_hook)
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
        raise Invalid.single(loc, f"expected an object, got {describe(data)}", "type_error")
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
