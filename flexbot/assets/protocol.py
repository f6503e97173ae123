"""The asset protocol's messages towards flexbot (MQTT, version 1; the README's "Assets" section
is the vendor's page): an asset's `state`, and an EMS's `availability`.

Topics are `<prefix>/<site>/<asset>/<message>`; the prefix (default `flexbot/v1`) may hold
slashes, the site and the asset are one level each. Bodies are JSON objects. A field flexbot does
not know is ignored (a newer device may say more); a known field of the wrong type or out of its
range makes the whole message unreadable (`Invalid`, every problem located: `$.power_w: expected
a number, got the string 'x'`), never half-read. Powers are W (positive: the site imports),
energies Wh, times ISO 8601 with a zone.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import orjson
from attrs import frozen

from flexbot import wire
from flexbot.problems import Invalid, Problem


class AssetKind(enum.StrEnum):
    BATTERY = "battery"  # stores energy: a reduction is limited by its power range and energy
    LOAD = "load"  # a consumption that can be lowered (heat pump, charger, process)
    GENERATOR = "generator"  # output that can be raised (CHP) or, going the other way, curtailed


@frozen
class AssetState:
    """An asset's state and limits at `ts` (the `state` message)."""

    ts: datetime
    kind: AssetKind
    power_w: float  # now; the asset's own course, which a reduction is counted from
    min_power_w: float  # the lowest it can go (a battery's full discharge, a load's minimum)
    max_power_w: float
    available: bool = True  # false: under maintenance, or its owner has opted out
    energy_wh: float | None = None  # batteries: stored now …
    min_energy_wh: float | None = None  # … the least it may hold …
    max_energy_wh: float | None = None  # … and the most
    efficiency: float = 1.0  # the share of stored energy that reaches the grid
    target_energy_wh: float | None = None  # what must remain by `target_at` (an EV's departure)
    target_at: datetime | None = None
    max_reduction_s: float | None = None  # loads: how long a reduction can be held
    recovery_s: float | None = None  # loads: how long before another reduction


@frozen
class WindowOffer:
    """An EMS's word for one future window: what it can deliver, in each direction."""

    start: datetime
    end: datetime
    reduce_w: float
    increase_w: float = 0.0


@frozen
class Availability:
    """The `availability` message: overrides flexbot's model for the windows it covers."""

    ts: datetime
    windows: tuple[WindowOffer, ...]


@frozen
class Topic:
    site: str
    asset: str
    message: str  # state, availability, cmd, ack


def parse_topic(topic: str, prefix: str) -> Topic | None:
    """`<prefix>/<site>/<asset>/<message>` → its parts; None for any other topic."""
    head = prefix.rstrip("/") + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head) :].split("/")
    if len(parts) != 3 or not all(parts):
        return None
    return Topic(*parts)


def topic_of(prefix: str, site: str, asset: str, message: str) -> str:
    return f"{prefix.rstrip('/')}/{site}/{asset}/{message}"


def _object(payload: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise Invalid.single((), f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Invalid.single((), f"expected a JSON object, got {wire.describe(body)}")
    return body


class _Reader:
    """Reads the fields of one JSON object, collecting every problem."""

    def __init__(self, body: Mapping[str, Any], loc: tuple[str | int, ...] = ()) -> None:
        self.body = body
        self.loc = loc
        self.problems: list[Problem] = []

    def _get(self, name: str, required: bool, convert: Callable[[Any], Any]) -> Any:
        if name not in self.body or self.body[name] is None:
            if required:
                self.problems.append(Problem((*self.loc, name), "required", "missing"))
            return None
        try:
            return convert(self.body[name])
        except (TypeError, ValueError) as exc:
            self.problems.append(Problem((*self.loc, name), str(exc)))
            return None

    def number(self, name: str, *, required: bool = False, at_least: float | None = None) -> Any:
        value = self._get(name, required, lambda v: float(wire.to_decimal(v)))
        if value is not None and at_least is not None and value < at_least:
            self.problems.append(Problem((*self.loc, name), f"must be at least {at_least}"))
            return None
        return value

    def time(self, name: str, *, required: bool = False) -> Any:
        return self._get(name, required, lambda v: wire.parse_datetime(_text(v)))

    def flag(self, name: str) -> Any:
        return self._get(name, False, _bool)

    def kind(self) -> AssetKind | None:
        allowed = ", ".join(k.value for k in AssetKind)
        value: AssetKind | None = self._get(
            "kind", True, lambda v: AssetKind(v) if v in set(AssetKind) else _refuse(v, allowed)
        )
        return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {wire.describe(value)}")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {wire.describe(value)}")
    return value


def _refuse(value: object, allowed: str) -> AssetKind:
    raise ValueError(f"must be one of {allowed}, got {wire.describe(value)}")


def parse_state(payload: bytes) -> AssetState:
    """A `state` message; `Invalid` (every problem located) if it cannot be read."""
    read = _Reader(_object(payload))
    ts, kind = read.time("ts", required=True), read.kind()
    power = read.number("power_w", required=True)
    low, high = read.number("min_power_w"), read.number("max_power_w")
    energy = read.number("energy_wh", required=kind is AssetKind.BATTERY)
    min_energy = read.number("min_energy_wh", at_least=0.0)
    max_energy = read.number("max_energy_wh", at_least=0.0)
    efficiency = read.number("efficiency")
    if efficiency is not None and not 0 < efficiency <= 1:
        read.problems.append(Problem(("efficiency",), "must be above 0 and at most 1"))
    available = read.flag("available")
    target, target_at = read.number("target_energy_wh"), read.time("target_at")
    hold = read.number("max_reduction_s", at_least=0.0)
    recovery = read.number("recovery_s", at_least=0.0)
    if power is not None:
        # Limits left out: the asset offers no room that way (never a guess in its favour).
        low = power if low is None else low
        high = power if high is None else high
        if low > high:
            read.problems.append(Problem(("min_power_w",), "must not be above max_power_w"))
    if read.problems:
        raise Invalid(read.problems)
    return AssetState(
        ts=ts,
        kind=kind,  # type: ignore[arg-type]  # present: no problem was found
        power_w=power,
        min_power_w=low,
        max_power_w=high,
        available=True if available is None else available,
        energy_wh=energy,
        min_energy_wh=min_energy,
        max_energy_wh=max_energy,
        efficiency=1.0 if efficiency is None else efficiency,
        target_energy_wh=target,
        target_at=target_at,
        max_reduction_s=hold,
        recovery_s=recovery,
    )


def parse_availability(payload: bytes) -> Availability:
    """An `availability` message; `Invalid` (every problem located) if it cannot be read."""
    body = _object(payload)
    read = _Reader(body)
    ts = read.time("ts", required=True)
    entries = body.get("windows")
    if not isinstance(entries, list):
        read.problems.append(Problem(("windows",), "expected a list of windows"))
        entries = []
    windows = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            read.problems.append(Problem(("windows", index), "expected an object"))
            continue
        one = _Reader(entry, ("windows", index))
        start, end = one.time("start", required=True), one.time("end", required=True)
        reduce_w = one.number("reduce_w", required=True, at_least=0.0)
        increase_w = one.number("increase_w", at_least=0.0)
        if start is not None and end is not None and end <= start:
            one.problems.append(Problem(("windows", index, "end"), "must be after start"))
        read.problems += one.problems
        if not one.problems:
            windows.append(WindowOffer(start, end, reduce_w, increase_w or 0.0))
    if read.problems:
        raise Invalid(read.problems)
    return Availability(ts=ts, windows=tuple(windows))
