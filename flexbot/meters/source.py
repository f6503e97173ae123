"""What every meter source produces, and the settings of each kind of source.

A source runs as one task and hands batches of `Reading`s to an `emit` callback (which stores
them); it handles its own transient failures (a missing file, a refused connection) with a logged
retry, never by ending.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol

import attrs
from attrs import frozen

from flexbot.meters.builder import Kind
from flexbot.problems import Invalid
from flexbot.validators import at_least, http_url, seconds


@frozen(order=True)
class Reading:
    meter_id: str
    at: datetime
    value: Decimal  # W for power meters, kWh for energy registers


Emit = Callable[[Sequence[Reading]], Awaitable[None]]


class MeterSource(Protocol):
    async def run(self, emit: Emit) -> None:
        """Produce readings for ever (until cancelled)."""


def store_time(when: datetime) -> str:
    """A fixed-width UTC form that sorts as time (the store's key)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@frozen
class SyntheticSettings:
    """A seeded site load: a daily wave plus noise, less the flexibility sold for the moment
    (the assets deliver what was sold), so verification has something true to judge."""

    seed: int = 1
    base_w: Decimal = Decimal(10000)
    amplitude_w: Decimal = Decimal(2000)
    noise_w: Decimal = Decimal(200)
    interval_s: float = attrs.field(default=60.0, validator=seconds())  # market seconds
    respond: bool = True  # reduce the load by the power sold for the current window
    history_days: int = 0  # at start, also produce this many days of past readings (baselines)


@frozen
class CsvSettings:
    """A CSV file, or a directory of them, that another system appends to: a header row with
    `timestamp` (ISO 8601 with a zone) and `value`, and optionally `meter_id` (rows of other
    meters are skipped)."""

    path: str
    poll_s: float = attrs.field(default=5.0, validator=seconds())


@frozen
class HttpSettings:
    """A JSON endpoint answering a list of `{timestamp, value[, meter_id]}` (or `{"readings":
    [...]}`), polled every `interval_s`."""

    url: str = attrs.field(validator=http_url)
    interval_s: float = attrs.field(default=30.0, validator=seconds())
    timeout_s: float = attrs.field(default=5.0, validator=seconds())


@frozen
class MqttSettings:
    """A topic on an MQTT broker whose messages are `{"timestamp": …, "value": …}` (or a bare
    number, stamped on arrival)."""

    topic: str
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None  # a reference: ${ENV_VAR} or file:PATH
    keepalive_s: int = 30


SOURCE_KINDS: dict[str, type[Any]] = {
    "synthetic": SyntheticSettings,
    "csv": CsvSettings,
    "http": HttpSettings,
    "mqtt": MqttSettings,
}

SourceSettings = SyntheticSettings | CsvSettings | HttpSettings | MqttSettings
BaselineMethod = Literal["mean_of_days", "high_x_of_y", "provided"]


@frozen
class BaselineSettings:
    """How a sell order's baseline is made when its strategy gave none (see `baseline`)."""

    method: BaselineMethod = "mean_of_days"
    days: int = attrs.field(default=10, validator=at_least(1))  # mean_of_days: days looked back on
    x: int = attrs.field(default=4, validator=at_least(1))  # high_x_of_y: the X highest …
    y: int = attrs.field(default=5, validator=at_least(1))  # … of the last Y comparable days
    meter: str | None = None  # provided: the meter id of the forecast


@frozen
class MeterSettings:
    id: str
    location_id: str  # the market location it measures
    source: SourceSettings
    kind: Kind = Kind.POWER_W
    baseline: BaselineSettings = BaselineSettings()


def parse_source(raw: Any) -> SourceSettings:
    """`{type: csv, path: …}` → the settings of that kind, located errors."""
    from flexbot import wire

    if not isinstance(raw, dict):
        raise Invalid.single((), "expected a mapping with a `type`")
    kind = raw.get("type")
    cls = SOURCE_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        allowed = ", ".join(SOURCE_KINDS)
        raise Invalid.single(("type",), f"must be one of {allowed}, got {kind!r}")
    rest = {k: v for k, v in raw.items() if k != "type"}
    settings: SourceSettings = wire.structure(rest, cls, converter=wire.STRICT_CONVERTER)
    return settings
