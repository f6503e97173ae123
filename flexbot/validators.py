"""attrs validators that report a bad field as a located problem.

Each raises `Invalid.single((attribute.name,), message)`: the converter (`flexbot.wire`) puts the
path of the object in front, so a settings class checks its own fields and a config file reads
`$.engine.max_failures: must be at least 1, got 0`. They hold in code too: a settings object
built by hand with a bad value is refused when it is made, not when it is first used.

Numbers are compared, never converted: an integer of any size is finite, NaN fails every bound.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import attrs

from flexbot.backoff import Backoff
from flexbot.problems import Invalid, Problem, http_url_problem, raise_if_any

# As attrs.field(validator=…) calls it: (the instance, the field, the value).
Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _finite(value: Any) -> bool:
    if isinstance(value, Decimal):  # a NaN Decimal raises on comparison: asked, not compared
        return value.is_finite()
    return bool(-math.inf < value < math.inf)


def positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A finite number greater than 0 (a power, a price, a count)."""
    if not (_finite(value) and value > 0):
        raise Invalid.single((attribute.name,), f"must be greater than 0, got {value}")


def non_negative(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A finite number, 0 or more."""
    if not (_finite(value) and value >= 0):
        raise Invalid.single((attribute.name,), f"must be 0 or more, got {value}")


def at_least(minimum: int | float) -> Validator:
    """`value >= minimum`: "must be at least 1" (at 0: "must be 0 or more")."""
    wanted = "0 or more" if minimum == 0 else f"at least {minimum}"

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not value >= minimum:
            raise Invalid.single((attribute.name,), f"must be {wanted}, got {value}")

    return check


def between(minimum: int, maximum: int) -> Validator:
    """`minimum <= value <= maximum`: "must be between 1 and 12"."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not minimum <= value <= maximum:
            raise Invalid.single(
                (attribute.name,), f"must be between {minimum} and {maximum}, got {value}"
            )

    return check


def greater_than(bound: int | float) -> Validator:
    """`value > bound`; infinity passes (e.g. a timeout of `.inf`: none)."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not value > bound:
            raise Invalid.single((attribute.name,), f"must be greater than {bound}, got {value}")

    return check


def seconds(*, zero: bool = False) -> Validator:
    """A finite duration: greater than 0 (or, with `zero`, 0 or more). For what becomes a
    `timedelta` or a socket timeout, where infinity is an error rather than "never"."""
    wanted = ", 0 or more" if zero else " greater than 0"

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not ((value >= 0 if zero else value > 0) and _finite(value)):
            raise Invalid.single(
                (attribute.name,), f"must be a finite number of seconds{wanted}, got {value}"
            )

    return check


def not_empty(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not value:
        raise Invalid.single((attribute.name,), "must not be empty")


def http_url(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An http(s) URL flexbot can request (the message never repeats it: it may hold a password)."""
    problem = http_url_problem(value)
    if problem is not None:
        raise Invalid.single((attribute.name,), problem)


_HOST_PORT = re.compile(r"[^:\s]+:\d{1,5}")


def host_port_or_none(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """`host:port` to listen on, e.g. 127.0.0.1:9108 (None: not at all)."""
    if value is not None and not _HOST_PORT.fullmatch(value):
        raise Invalid.single(
            (attribute.name,), f"expected host:port, e.g. 127.0.0.1:9108, got {value!r}"
        )


def sane_backoff(instance: object, attribute: attrs.Attribute[Any], value: Backoff) -> None:
    """A retry backoff whose delays are finite seconds that grow (or stay)."""
    problems = [
        Problem(
            (attribute.name, name), f"must be a finite number of seconds greater than 0, got {v}"
        )
        for name, v in (("base_s", value.base_s), ("cap_s", value.cap_s))
        if not (v > 0 and _finite(v))
    ]
    if not (value.factor >= 1 and _finite(value.factor)):
        problems.append(
            Problem(
                (attribute.name, "factor"),
                f"must be a finite number, at least 1, got {value.factor}",
            )
        )
    raise_if_any(problems)
