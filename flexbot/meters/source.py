"""What every meter source produces, and the settings of each kind of source.

A source runs as one task and hands batches of `Reading`s to an `emit` callback (which stores
them); it handles its own transient failures (a missing file, a refused connection) with a logged
retry, never by ending.

A source is either a meter's own (`meters[].source`: every reading is that meter's) or shared
(`meter_sources:`: one source, many meters, each reading naming its meter). Which meter a reading
belongs to is the source's `Route`: thousands of meters need neither thousands of YAML entries nor
thousands of tasks.
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


@frozen
class Route:
    """Which meter a reading of a source belongs to, and how the source names itself in logs.

    - `Route.own(meter_id)`: a meter's own source. Its readings are that meter's; a reading that
      names another meter (a `meter_id` column, field or topic level) is not its own and is
      skipped silently (a file shared by several meters, each with its own source).
    - `Route.of_source(name)`: a source of many meters (`meter_sources[i]`). Each reading belongs
      to the meter its data names; one that names none cannot be placed and is a bad reading
      (`meter_for` raises `ValueError`, which the source logs as a bad row, entry or message).
      Whether that meter is configured is the hub's to check (`MeterHub`), not the source's.
    """

    name: str  # the meter id (own), or the source's name for logs (shared: `meter_sources[0]`)
    shared: bool = False

    @classmethod
    def own(cls, meter_id: str) -> Route:
        return cls(meter_id)

    @classmethod
    def of_source(cls, name: str) -> Route:
        return cls(name, shared=True)

    def meter_for(self, named: str | None) -> str | None:
        """The meter of a reading whose data names `named` (None: names none); None: not this
        source's to give (skip it quietly); `ValueError`: a shared source's reading without one."""
        if not self.shared:
            return self.name if named is None or named == self.name else None
        if not named:
            raise ValueError("no meter_id: a reading of a shared source must name its meter")
        return named

    @property
    def fields(self) -> dict[str, str]:
        """What a source's log lines say about it: `meter=` (own) or `source=` (shared)."""
        return {"source": self.name} if self.shared else {"meter": self.name}


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
    `timestamp` (ISO 8601 with a zone) and `value`, and `meter_id` (optional for a meter's own
    source, whose rows of other meters are skipped; required for a shared one)."""

    path: str
    poll_s: float = attrs.field(default=5.0, validator=seconds())


@frozen
class HttpSettings:
    """A JSON endpoint answering a list of `{timestamp, value[, meter_id]}` (or `{"readings":
    [...]}`), polled every `interval_s`; a shared endpoint answers for many meters, each entry
    naming its `meter_id`."""

    url: str = attrs.field(validator=http_url)
    interval_s: float = attrs.field(default=30.0, validator=seconds())
    timeout_s: float = attrs.field(default=5.0, validator=seconds())


def _topic_level(instance: MqttSettings, attribute: attrs.Attribute[Any], value: Any) -> None:
    """`meter_level` indexes a level of every topic the filter matches (a `#` matches any depth,
    so then no bound can be checked)."""
    if value is None or "#" in instance.topic:
        return
    levels = instance.topic.count("/") + 1
    if not -levels <= value < levels:
        raise Invalid.single(
            (attribute.name,),
            f"the topic {instance.topic!r} has {levels} levels: must be between {-levels} and "
            f"{levels - 1}, got {value}",
        )


@frozen
class MqttSettings:
    """A topic filter on an MQTT broker whose messages are `{"timestamp": …, "value": …[,
    "meter_id": …]}`, a list of those, or a bare number (stamped on arrival).

    Which meter a message is for, most trusted first: the topic level `meter_level` when set
    (`topic.split("/")[meter_level]`, negative from the end: -2 for the spec's
    `flexbot/v1/<site>/<meter>/meter`; a broker's ACLs can hold a device to its own topic, not to
    what its payload claims), and then an entry's `meter_id` must agree or the message is bad;
    else, for a shared source (`meter_sources:`), each entry's own `meter_id`. A meter's own
    source without `meter_level` takes every message on its topic."""

    topic: str
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None  # a reference: ${ENV_VAR} or file:PATH
    keepalive_s: int = 30
    meter_level: int | None = attrs.field(default=None, validator=_topic_level)


SOURCE_KINDS: dict[str, type[Any]] = {
    "synthetic": SyntheticSettings,
    "csv": CsvSettings,
    "http": HttpSettings,
    "mqtt": MqttSettings,
}

SourceSettings = SyntheticSettings | CsvSettings | HttpSettings | MqttSettings
# What `meter_sources:` may hold: sources whose data names its meters (synthetic: per meter).
SharedSourceSettings = CsvSettings | HttpSettings | MqttSettings
SHARED_KINDS = ("csv", "http", "mqtt")
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
    source: SourceSettings | None = None  # None: fed by a shared source (`meter_sources:`)
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


def parse_shared_source(raw: Any) -> SharedSourceSettings:
    """A `meter_sources:` entry: like `parse_source`, but only of a kind whose data names its
    meters."""
    kind = raw.get("type") if isinstance(raw, dict) else None
    if isinstance(raw, dict) and kind not in SHARED_KINDS:
        why = " (a synthetic load is per meter)" if kind == "synthetic" else ""
        allowed = ", ".join(SHARED_KINDS)
        raise Invalid.single(("type",), f"must be one of {allowed}{why}, got {kind!r}")
    settings = parse_source(raw)
    assert not isinstance(settings, SyntheticSettings)
    return settings
