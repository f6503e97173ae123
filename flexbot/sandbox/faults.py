"""Switchable faults, so that every reliability promise of a client can be tested.

Each fault is a field of `FaultSettings`; set at start with `--fault NAME=VALUE` and changed while
running with `POST /sandbox/faults` (a JSON object of the fields to change; allowed when a fault was
on at start, or with the admin token: see `flexbot.sandbox.app`). 0 (or false) turns a fault off.
What was injected is counted and shown in `GET /sandbox/stats`.

- `ws_drop_every` (s): close every WebSocket connection (code 1012) every N wall-clock seconds.
- `ws_no_pong` (bool): stop answering client pings: the connection looks alive but is half-open.
- `ws_malformed_rate` (0..1): after a message, send a malformed frame with this probability.
- `token_ttl` (s): access tokens issued from now on expire after N seconds.
- `token_fail_for` (s): the token endpoint answers 503 for the next N seconds.
- `rest_error_rate` (0..1): share of `/api/v1` calls answered 500, 502 or 503, untouched.
- `rest_429_rate` (0..1): share of `/api/v1` calls answered 429 with `Retry-After: 1`.
- `rest_latency_ms` (ms): added to every `/api/v1` call.
- `ambiguous_rate` (0..1): share of order submissions that are *placed* but whose answer is lost.
- `ambiguous_mode` (`504` | `hang`): how it is lost: a 504, or no answer until the client gives up.

An HTTP server behind ASGI cannot reset a connection, so the lost response is either a 504 (what a
proxy in front of the market answers) or a hang (what the client sees as a timeout): both leave the
client not knowing whether its order exists, which is the case that matters.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from attrs import define

from flexbot import wire
from flexbot.problems import Invalid

AMBIGUOUS_MODES = ("504", "hang")


# Validators raise located problems, so a bad `POST /sandbox/faults` body says which field is wrong.
def _share(instance: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value <= 1:  # NaN fails this too
        raise Invalid.single((attribute.name,), f"must be a share between 0 and 1, got {value}")


def _non_negative(instance: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise Invalid.single((attribute.name,), f"must be a finite number >= 0, got {value}")


def _ambiguous_mode(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in AMBIGUOUS_MODES:
        allowed = " or ".join(AMBIGUOUS_MODES)
        raise Invalid.single((attribute.name,), f"must be {allowed}, got {value!r}")


@define
class FaultSettings:
    ws_drop_every: float = attrs.field(default=0.0, validator=_non_negative)
    ws_no_pong: bool = False
    ws_malformed_rate: float = attrs.field(default=0.0, validator=_share)
    token_ttl: float = attrs.field(default=0.0, validator=_non_negative)
    token_fail_for: float = attrs.field(default=0.0, validator=_non_negative)
    rest_error_rate: float = attrs.field(default=0.0, validator=_share)
    rest_429_rate: float = attrs.field(default=0.0, validator=_share)
    rest_latency_ms: float = attrs.field(default=0.0, validator=_non_negative)
    ambiguous_rate: float = attrs.field(default=0.0, validator=_share)
    ambiguous_mode: str = attrs.field(default="504", validator=_ambiguous_mode)


FAULT_NAMES = tuple(f.name for f in attrs.fields(FaultSettings))


class Faults:
    """The live fault settings of one sandbox, the dice that decide each injection, and counts."""

    def __init__(
        self,
        settings: FaultSettings | None = None,
        *,
        wall: Callable[[], float],
        seed: int | None = None,
    ) -> None:
        self.settings = settings or FaultSettings()
        self._wall = wall
        self._rng = random.Random(seed)
        self.injected: Counter[str] = Counter()
        self._token_fail_until = 0.0
        self._arm_token_failure()

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial update (from `POST /sandbox/faults`); raises `Invalid`, changing nothing,
        if any name or value is wrong."""
        unknown = [name for name in changes if name not in FAULT_NAMES]
        if unknown:
            raise Invalid.single(
                (unknown[0],), f"unknown fault; known: {', '.join(FAULT_NAMES)}", "value_error"
            )
        merged = {**wire.CONVERTER.unstructure(self.settings), **changes}
        self.settings = wire.structure(merged, FaultSettings)
        if "token_fail_for" in changes:
            self._arm_token_failure()

    def _arm_token_failure(self) -> None:
        self._token_fail_until = self._wall() + self.settings.token_fail_for

    def chance(self, rate: float, name: str) -> bool:
        """Roll the dice for one injection and count it when it fires."""
        if rate > 0 and self._rng.random() < rate:
            self.injected[name] += 1
            return True
        return False

    def choice(self, options: tuple[int, ...]) -> int:
        return self._rng.choice(options)

    def token_endpoint_down(self) -> bool:
        if self._wall() < self._token_fail_until:
            self.injected["token_fail"] += 1
            return True
        return False

    def snapshot(self) -> dict[str, Any]:
        return {
            "settings": wire.CONVERTER.unstructure(self.settings),
            "injected": dict(sorted(self.injected.items())),
        }


def parse_fault_option(text: str) -> tuple[str, Any]:
    """`NAME=VALUE` from the command line, typed by the fault's field."""
    name, sep, raw = text.partition("=")
    if not sep or name not in FAULT_NAMES:
        raise ValueError(f"{text!r}: expected NAME=VALUE with NAME one of {', '.join(FAULT_NAMES)}")
    field = attrs.fields_dict(FaultSettings)[name]
    value: Any
    if isinstance(field.default, bool):
        if raw.lower() not in ("true", "false", "1", "0", "on", "off", "yes", "no"):
            raise ValueError(f"{name}: expected true or false, got {raw!r}")
        value = raw.lower() in ("true", "1", "on", "yes")
    elif isinstance(field.default, str):
        value = raw
    else:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{name}: expected a number, got {raw!r}") from None
    return name, value
