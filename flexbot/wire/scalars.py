"""The wire's scalar forms: timestamps and numbers, both ways, and how a bad value is named.

Shared by the converter (`convert`) and the hand-read order book (`fastbook`), which must agree on
every value to the bit.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache

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
        raise TypeError(f"expected a number, got {describe(value)}")
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("expected a finite number")
        return float_decimal(value)
    return Decimal(value)


@lru_cache(maxsize=8192)
def float_decimal(value: float) -> Decimal:
    """A finite float as the Decimal of its shortest repr: `0.65` is `Decimal("0.65")`."""
    return Decimal(repr(value))


def decimal_to_json(value: Decimal) -> float | int:
    """The nearest float: what JSON carries and what the official client sends (`1400.0`). Exact for
    every Decimal with at most 15 significant digits, which covers prices, powers and energies."""
    return float(value)


def describe(value: object) -> str:
    """A decoded JSON value as an error message names it: `null`, `a list`, `the string 'abc'`."""
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
