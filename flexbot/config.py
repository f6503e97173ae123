"""`config/flexbot.yaml`: YAML → attrs through cattrs, every problem located by file and path.

Unknown keys are errors (a typo must not silently fall back to a default). Secrets are never
written inline: a secret field holds a reference, `${ENV_VAR}` or `file:PATH` (a relative path is
relative to the config file; `${VAR}` may appear in it, e.g.
`file:${CREDENTIALS_DIRECTORY}/flexbot-password` for a systemd credential). References are resolved
when the config is loaded, so `flexbot check-config` reports a missing variable or file too.

Sections: `market` (where and who), `store` (the SQLite file), `strategies` (where their files
and code live), `engine`, `risk` (global limits), `kill_switch`, `meters` (readings, baselines),
`meter_sources` (sources shared by many meters, their readings naming the meter),
`meter_catalogue` (a CSV file of meters, see `flexbot.meters.catalogue`), `verification` (when
metering is sent), `metrics` (the Prometheus endpoint), `logging`. Paths are relative to the
config file and may use `${VAR}` (e.g. `${STATE_DIRECTORY}/flexbot.db` under systemd).

Each section is an attrs class whose fields check themselves (`flexbot.validators`), so a bad
value is located (`$.engine.max_failures: must be at least 1, got 0`) and every bad field is
reported in one run; `_check` holds only what needs several fields. There is one class a
component, none to keep in step with another: `engine` reads into the engine's own
`EngineSettings` (plus the recorder's keys), `verification` into `VerificationSettings`, each
`meters` entry into `MeterSettings` (its `source` read by its `type`; none: a shared source feeds
it), each catalogue row into one too (`LoadedConfig.meters` holds both), `risk` into `RiskLimits`.
Where the YAML differs from what runs (`market`: a secret reference and a relative CA path;
`metrics`: optional) `load` builds the running form.

Each strategy is one YAML file in `strategies.config_dir` (see `flexbot.engine.loader`); its
problems are reported under its own file name, e.g.
`config/strategies/peak.yaml: $.params.max_price: expected a number, got the string 'abc'`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import yaml
from attrs import frozen

from flexbot import wire
from flexbot.assets import AssetSettings, Room, parse_catalogue
from flexbot.engine.loader import StrategySpec, load_spec
from flexbot.engine.risk import RiskLimits
from flexbot.engine.settings import EngineSettings
from flexbot.market import ConnectionSettings, Secret
from flexbot.meters.builder import Kind
from flexbot.meters.catalogue import read_catalogue
from flexbot.meters.source import (
    MeterSettings,
    MqttSettings,
    SharedSourceSettings,
    SourceSettings,
    parse_shared_source,
    parse_source,
)
from flexbot.problems import Invalid, Loc, Problem
from flexbot.validators import at_least, host_port_or_none, http_url, not_empty, seconds
from flexbot.verification import VerificationSettings

ClockMode = Literal["wall", "sandbox"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]

wire.register_enum(Kind)
# A meter's `source` is read by its `type` (see flexbot.meters.source), its problems located.
wire.STRICT_CONVERTER.register_structure_hook(SourceSettings, lambda raw, _: parse_source(raw))
wire.STRICT_CONVERTER.register_structure_hook(
    SourceSettings | None, lambda raw, _: None if raw is None else parse_source(raw)
)
wire.STRICT_CONVERTER.register_structure_hook(
    SharedSourceSettings, lambda raw, _: parse_shared_source(raw)
)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_CONNECTION = attrs.fields(ConnectionSettings)


@frozen
class MarketConfig:
    """The `market` section. Not `ConnectionSettings` itself: its password is a reference and its
    CA a path relative to the file, which `load` resolves before it builds those."""

    url: str = attrs.field(validator=http_url)  # https://host[:port]: auth, REST and WebSocket
    username: str = attrs.field(validator=not_empty)
    password: str  # a reference: ${ENV_VAR} or file:PATH
    ca_bundle: str | None = None  # an extra CA to trust (PEM), e.g. a sandbox run with --tls
    timeout_s: float = attrs.field(default=_CONNECTION.timeout_s.default, validator=seconds())
    # Stream pings; 3 unanswered declare a (half-open) link dead.
    ping_interval_s: float = attrs.field(
        default=_CONNECTION.ping_interval_s.default, validator=seconds()
    )
    # The largest order book message read (a larger one closes the link, 1009, logged once).
    max_book_message_bytes: int = attrs.field(
        default=_CONNECTION.max_book_message_bytes.default, validator=at_least(1024)
    )
    # wall: market time is UTC now. sandbox: read it (and its speed) from the sandbox's clock.
    clock: ClockMode = "wall"


@frozen
class StoreConfig:
    path: str = "flexbot.db"


@frozen
class StrategiesConfig:
    config_dir: str = "strategies"  # one YAML file a strategy
    code_dir: str = "../strategies"  # where `module: name` finds name.py


@frozen
class EngineConfig(EngineSettings):
    """The `engine` section: the engine's own settings, and beside them (where they have always
    been written) the event recorder's."""

    record: str | None = None  # a JSONL file to record every market event to
    # MiB: the recording is then rotated and compressed.
    record_max_mb: int = attrs.field(default=256, validator=at_least(1))
    # Rotated recordings kept; the oldest beyond are deleted.
    record_keep: int = attrs.field(default=10, validator=at_least(1))


@frozen
class MetricsConfig:
    """The `metrics` section. Not `flexbot.metrics.MetricsSettings`: the endpoint is optional here,
    and that module (its web server) is imported only when the endpoint is on."""

    # host:port of the Prometheus endpoint, e.g. 127.0.0.1:9108; None: off.
    listen: str | None = attrs.field(default=None, validator=host_port_or_none)


@frozen
class KillSwitchConfig:
    engaged: bool = False  # engage from the config
    file: str | None = None  # engaged while this file exists


@frozen
class LoggingConfig:
    level: LogLevel = "info"
    format: LogFormat = "auto"  # auto: JSON unless stdout is a terminal


@frozen
class FlexbotConfig:
    market: MarketConfig
    store: StoreConfig = attrs.field(factory=StoreConfig)
    strategies: StrategiesConfig = attrs.field(factory=StrategiesConfig)
    engine: EngineConfig = attrs.field(factory=EngineConfig)
    risk: RiskLimits = attrs.field(factory=RiskLimits)
    kill_switch: KillSwitchConfig = attrs.field(factory=KillSwitchConfig)
    meters: tuple[MeterSettings, ...] = ()
    meter_sources: tuple[SharedSourceSettings, ...] = ()  # each feeds the meters its data names
    meter_catalogue: str | None = None  # a CSV file of meters (flexbot.meters.catalogue)
    assets: AssetSettings | None = None  # the portfolio: None, offers are not tied to assets
    verification: VerificationSettings = attrs.field(factory=VerificationSettings)
    metrics: MetricsConfig = attrs.field(factory=MetricsConfig)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)


@frozen
class LoadedConfig:
    """A valid config with its secrets resolved, ready to use."""

    path: Path
    config: FlexbotConfig
    connection: ConnectionSettings
    store_path: Path
    strategies: tuple[StrategySpec, ...] = ()
    record_path: Path | None = None
    kill_switch_file: Path | None = None
    meters: tuple[MeterSettings, ...] = ()  # `meters:`, then the catalogue's
    meter_secrets: Mapping[str, str | None] = attrs.field(factory=dict)  # by meter id
    meter_sources: tuple[SharedSourceSettings, ...] = ()
    meter_source_secrets: Mapping[int, str | None] = attrs.field(factory=dict)  # by index
    fixed_assets: tuple[tuple[str, Room], ...] = ()  # (site, room) from `assets.catalogue`
    asset_password: str | None = None  # `assets.mqtt.password`, resolved


class ConfigError(Exception):
    """Every problem of the config and its strategy files, each as `FILE: $.path: message`."""

    def __init__(self, path: Path, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        self.located: list[tuple[Path, Problem]] = [(path, p) for p in problems]
        super().__init__("\n".join(self.lines))

    @classmethod
    def of(cls, located: list[tuple[Path, Problem]]) -> ConfigError:
        error = cls(located[0][0], [p for _, p in located])
        error.located = located
        return error

    @property
    def lines(self) -> list[str]:
        return [f"{path}: {p}" for path, p in self.located]


def load(
    path: Path, environ: Mapping[str, str] | None = None, *, secrets: bool = True
) -> LoadedConfig:
    """Read, validate and resolve `path`; raises `ConfigError` listing every problem found.

    `secrets=False` leaves the secrets unresolved (empty): for the commands that only touch the
    store (`status`, `kill-switch`), which must work where the market password cannot be read."""
    env = os.environ if environ is None else environ
    document = _read_yaml(path)
    try:
        config = wire.structure(document, FlexbotConfig, converter=wire.STRICT_CONVERTER)
    except Invalid as exc:
        # The strategy files' problems are told too, not only once flexbot.yaml is clean.
        located = [(path, p) for p in exc.problems]
        raise ConfigError.of(located + _strategy_problems_of(document, path, env)) from None
    problems = _check(config)
    password: Secret | None = None if secrets else Secret("")
    try:
        if secrets:
            password = resolve_secret(config.market.password, path.parent, env)
    except Invalid as exc:
        problems += [p.under(("market", "password")) for p in exc.problems]
    ca_bundle: Path | None = None
    try:
        ca_bundle = _relative(config.market.ca_bundle, path.parent)
    except Invalid as exc:
        problems += [p.under(("market", "ca_bundle")) for p in exc.problems]
    if ca_bundle is not None and not _is(ca_bundle.is_file):
        problems.append(Problem(("market", "ca_bundle"), f"no such file: {ca_bundle}"))
    paths: dict[str, Path | None] = {}
    for name, loc, value in (
        ("store", ("store", "path"), config.store.path),
        ("record", ("engine", "record"), config.engine.record),
        ("kill_switch", ("kill_switch", "file"), config.kill_switch.file),
        ("config_dir", ("strategies", "config_dir"), config.strategies.config_dir),
        ("code_dir", ("strategies", "code_dir"), config.strategies.code_dir),
    ):
        try:
            paths[name] = _relative(_expand(value, env), path.parent)
        except Invalid as exc:
            problems += [p.under(loc) for p in exc.problems]
    store = paths.get("store")
    if store is not None and _is(store.exists) and not _is(store.is_file):
        # `flexbot run` would wait for ever for a store it can never open.
        problems.append(Problem(("store", "path"), f"not a file: {store}"))
    meter_secrets = _meter_secrets(config, path.parent, env, problems) if secrets else {}
    source_secrets = _source_secrets(config, path.parent, env, problems) if secrets else {}
    asset_password: str | None = None
    broker = config.assets.mqtt if config.assets is not None else None
    if secrets and broker is not None and broker.password is not None:
        try:
            asset_password = resolve_secret(broker.password, path.parent, env).reveal()
        except Invalid as exc:
            problems += [p.under(("assets", "mqtt", "password")) for p in exc.problems]
    located = [(path, p) for p in problems]
    catalogue = _meter_catalogue(config, path, env, located)
    fixed_assets: list[tuple[str, Room]] = []
    if config.assets is not None and config.assets.catalogue is not None:
        fixed_assets = _asset_catalogue(config.assets.catalogue, path, env, located)
    strategies: list[StrategySpec] = []
    config_dir, code_dir = paths.get("config_dir"), paths.get("code_dir")
    if config_dir is not None and code_dir is not None:
        if _is(config_dir.is_dir):
            found, strategy_problems = load_strategies(config_dir, code_dir)
            strategies, located = found, located + strategy_problems
        elif config.strategies.config_dir != StrategiesConfig().config_dir:
            # Only a directory named on purpose must exist; the default may be absent (none).
            problem = Problem(("strategies", "config_dir"), f"no such directory: {config_dir}")
            located.append((path, problem))
    if located:
        raise ConfigError.of(located)
    assert password is not None
    store_path = paths["store"]
    assert store_path is not None
    connection = ConnectionSettings(
        url=config.market.url.rstrip("/"),
        username=config.market.username,
        password=password,
        ca_bundle=ca_bundle,
        timeout_s=config.market.timeout_s,
        ping_interval_s=config.market.ping_interval_s,
        max_book_message_bytes=config.market.max_book_message_bytes,
    )
    return LoadedConfig(
        path=path,
        config=config,
        connection=connection,
        store_path=store_path,
        strategies=tuple(strategies),
        record_path=paths["record"],
        kill_switch_file=paths["kill_switch"],
        meters=config.meters + tuple(catalogue),
        meter_secrets=meter_secrets,
        meter_sources=config.meter_sources,
        meter_source_secrets=source_secrets,
        fixed_assets=tuple(fixed_assets),
        asset_password=asset_password,
    )


def _asset_catalogue(
    name: str, config_path: Path, env: Mapping[str, str], located: list[tuple[Path, Problem]]
) -> list[tuple[str, Room]]:
    """The fixed assets of `assets.catalogue`; its problems located in its own file."""
    loc: Loc = ("assets", "catalogue")
    try:
        file = _relative(_expand(name, env), config_path.parent)
    except Invalid as exc:
        located += [(config_path, p.under(loc)) for p in exc.problems]
        return []
    assert file is not None
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        located.append((config_path, Problem(loc, f"cannot read {file}: {why}")))
        return []
    try:
        return parse_catalogue(text)
    except Invalid as exc:
        located += [(file, p) for p in exc.problems]
        return []


def _meter_catalogue(
    config: FlexbotConfig,
    config_path: Path,
    env: Mapping[str, str],
    located: list[tuple[Path, Problem]],
) -> list[MeterSettings]:
    """The meters of `meter_catalogue`, its problems located in its own file: each row's, an id
    that `meters:` has too, and a catalogue no shared source could feed."""
    if config.meter_catalogue is None:
        return []
    loc: Loc = ("meter_catalogue",)
    try:
        file = _relative(_expand(config.meter_catalogue, env), config_path.parent)
        assert file is not None
        taken = {m.id: f"$.meters[{i}] of {config_path.name}" for i, m in enumerate(config.meters)}
        meters, problems = read_catalogue(file, taken)
    except Invalid as exc:
        located += [(config_path, p.under(loc)) for p in exc.problems]
        return []
    located += [(file, p) for p in problems]
    if meters and not config.meter_sources:
        located.append(
            (
                config_path,
                Problem(loc, "its meters have no source: add the `meter_sources` that feed them"),
            )
        )
    return meters


def _strategy_problems_of(
    document: Any, path: Path, env: Mapping[str, str]
) -> list[tuple[Path, Problem]]:
    """The strategy files' problems, read with the `strategies` paths of a `flexbot.yaml` that
    has problems of its own (defaults where those paths are not readable)."""
    raw = document.get("strategies") if isinstance(document, dict) else None
    raw = raw if isinstance(raw, dict) else {}
    default = StrategiesConfig()
    dirs = []
    for key, fallback in (("config_dir", default.config_dir), ("code_dir", default.code_dir)):
        value = raw.get(key, fallback)
        try:
            dirs.append(
                _relative(_expand(value if isinstance(value, str) else fallback, env), path.parent)
            )
        except Invalid:
            return []
    config_dir, code_dir = dirs
    if config_dir is None or code_dir is None or not _is(config_dir.is_dir):
        return []
    return load_strategies(config_dir, code_dir)[1]


def refused_everywhere(
    risk: RiskLimits, strategies: list[StrategySpec]
) -> list[tuple[Path, Problem]]:
    """An enabled strategy whose file's location the global or its own limits forbid: every order
    it places there would be refused (`check-config` warns: a strategy may name another location
    in each order)."""
    problems = []
    for spec in strategies:
        if not spec.enabled:
            continue
        country, sites = spec.location.country_code, spec.location.location_id
        for scope, limits in (("global risk", risk), ("its own risk", spec.risk)):
            allowed = limits.countries
            if allowed is not None and country not in allowed:
                why = f"{scope} allows the countries {list(allowed)} only: every order refused"
                problems.append((spec.path, Problem(("location", "country_code"), why)))
            if limits.locations is not None:
                outside = [site for site in sites if site not in limits.locations]
                if outside or not sites:
                    names = outside or ["(none)"]
                    why = (
                        f"{scope} allows the locations {list(limits.locations)} only, not "
                        f"{', '.join(map(str, names))}: every order refused"
                    )
                    problems.append((spec.path, Problem(("location", "location_id"), why)))
    return problems


def _meter_secrets(
    config: FlexbotConfig,
    base: Path,
    env: Mapping[str, str],
    problems: list[Problem],
) -> dict[str, str | None]:
    """Each MQTT meter's password reference resolved, by meter id; problems located."""
    secrets: dict[str, str | None] = {}
    for index, meter in enumerate(config.meters):
        source = meter.source
        if isinstance(source, MqttSettings) and source.password is not None:
            try:
                secrets[meter.id] = resolve_secret(source.password, base, env).reveal()
            except Invalid as exc:
                problems += [p.under(("meters", index, "source", "password")) for p in exc.problems]
    return secrets


def _source_secrets(
    config: FlexbotConfig,
    base: Path,
    env: Mapping[str, str],
    problems: list[Problem],
) -> dict[int, str | None]:
    """Each shared MQTT source's password reference resolved, by its index in `meter_sources`."""
    secrets: dict[int, str | None] = {}
    for index, source in enumerate(config.meter_sources):
        if isinstance(source, MqttSettings) and source.password is not None:
            try:
                secrets[index] = resolve_secret(source.password, base, env).reveal()
            except Invalid as exc:
                problems += [p.under(("meter_sources", index, "password")) for p in exc.problems]
    return secrets


def load_strategies(
    config_dir: Path, code_dir: Path
) -> tuple[list[StrategySpec], list[tuple[Path, Problem]]]:
    """Every `*.yaml` in `config_dir`, by name; problems located by file."""
    specs: list[StrategySpec] = []
    problems: list[tuple[Path, Problem]] = []
    for file in sorted([*config_dir.glob("*.yaml"), *config_dir.glob("*.yml")]):
        try:
            document = _read_yaml(file)
            specs.append(load_spec(file, document, code_dir))
        except ConfigError as exc:
            problems += exc.located
        except Invalid as exc:
            problems += [(file, p) for p in exc.problems]
    return specs, problems


def read_strategy(file: Path, code_dir: Path) -> StrategySpec:
    """One strategy file (for `flexbot replay`); `ConfigError` lists its problems."""
    document = _read_yaml(file)
    try:
        return load_spec(file, document, code_dir)
    except Invalid as exc:
        raise ConfigError(file, list(exc.problems)) from None


def _expand(value: str | None, environ: Mapping[str, str]) -> str | None:
    if value is None:
        return None
    missing = [name for name in _VAR.findall(value) if name not in environ]
    if missing:
        raise Invalid.single((), f"environment variable {missing[0]} is not set")
    return _VAR.sub(lambda m: environ[m[1]], value)


def resolve_secret(reference: str, base: Path, environ: Mapping[str, str]) -> Secret:
    """`${VAR}` or `file:PATH` → the secret; anything else is refused as an inline secret."""
    whole = _VAR.fullmatch(reference)
    if whole:
        value = environ.get(whole[1])
        if not value:
            raise Invalid.single((), f"environment variable {whole[1]} is not set")
        return Secret(value)
    if reference.startswith("file:"):
        missing = [name for name in _VAR.findall(reference) if name not in environ]
        if missing:
            raise Invalid.single((), f"environment variable {missing[0]} is not set")
        file = _relative(_VAR.sub(lambda m: environ[m[1]], reference[5:]), base)
        assert file is not None
        try:
            return Secret(file.read_text(encoding="utf-8").rstrip("\r\n"))
        except UnicodeDecodeError:
            raise Invalid.single((), f"{file} is not UTF-8 text") from None
        except OSError as exc:
            raise Invalid.single((), f"cannot read {file}: {exc.strerror}") from None
        except ValueError as exc:  # e.g. a NUL byte in the path
            raise Invalid.single((), f"not a usable file name: {exc}") from None
    raise Invalid.single(
        (), "write secrets by reference, ${ENV_VAR} or file:PATH, never inline in the config"
    )


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [Problem((), f"cannot read the file: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        where = f"byte {exc.start}"
        raise ConfigError(path, [Problem((), f"not UTF-8 text ({where})")]) from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(path, [Problem((), f"{where}not valid YAML: {exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, [Problem((), f"not valid YAML: {exc}")]) from None
    except RecursionError:
        raise ConfigError(path, [Problem((), "nested too deeply to read")]) from None
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise ConfigError(path, [Problem((), f"cannot be read: {str(exc)[:200]}")]) from None


def _check(config: FlexbotConfig) -> list[Problem]:
    """What no one field can tell (each checks itself: see the classes' validators)."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, meter in enumerate(config.meters):
        loc: Loc = ("meters", index)
        if meter.id in seen:
            problems.append(Problem((*loc, "id"), f"another meter is already named {meter.id!r}"))
        seen.add(meter.id)
        baseline = meter.baseline
        if baseline.method == "high_x_of_y" and baseline.x > baseline.y:
            problems.append(Problem((*loc, "baseline", "x"), "must be between 1 and y"))
        if meter.source is None and not config.meter_sources:
            problems.append(
                Problem(
                    (*loc, "source"),
                    "required: no `meter_sources` could feed this meter",
                    "missing",
                )
            )
    return problems


def _relative(path: str | None, base: Path) -> Path | None:
    """`path` relative to the config's folder (`~` expanded); `Invalid` if it cannot be."""
    if path is None:
        return None
    if "\0" in path:
        raise Invalid.single((), "a file name cannot hold a NUL byte")
    try:
        candidate = Path(path).expanduser()
    except RuntimeError as exc:  # ~user of no such user
        raise Invalid.single((), f"cannot expand {path!r}: {exc}") from None
    return candidate if candidate.is_absolute() else base / candidate


def _is(check: Callable[[], bool]) -> bool:
    """A filesystem test that says False for a name the system cannot even look up."""
    try:
        return check()
    except (OSError, ValueError):
        return False
