"""The hot path: order books read by hand.

A book is most of what the market sends, and the general converter (detailed validation, a hook
per level) spends ~8 µs an entry. This reads the plain well-formed shape by hand, with the same
conversions, and gives up (None) on anything else: the general path then decides, and locates
the problem if there is one. A property test holds the two to the same result.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from flexbot import model
from flexbot.wire.scalars import float_decimal, parse_datetime

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
        country = ""  # as the converter reads a legacy location
    elif type(country) is not str:
        raise _NotPlain
    return model.Location(location_id=ids, country_code=country)


def _fast_decimal(value: object) -> Decimal:
    if type(value) is float:
        if value - value != 0:  # NaN and infinities: not plain
            raise _NotPlain
        return float_decimal(value)
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
