"""`config/flexbot.yaml`: YAML → attrs through cattrs, every problem located by file and path.

Unknown keys are errors (a typo must not silently fall back to a default). Secrets are never
written inline: a secret field holds a reference, `${ENV_VAR}` or `file:PATH` (a relative path is
relative to the config file; `${VAR}` may appear in it, e.g.
`file:${CREDENTIALS_DIRECTORY}/flexbot-password` for a systemd credential). References are resolved
when the config is loaded, so `flexbot check-config` reports a missing variable or file too.

Sections: `market` (where and who), `store` (the SQLite file), `strategies` (where their files
and code live), `engine`, `risk` (global limits), `kill_switch`, `meters` (readings, baselines),
`verification` (when metering is sent), `metrics` (the Prometheus endpoint), `logging`. Paths are
relative to the config file and may use `${VAR}` (e.g. `${STATE_DIRECTORY}/flexbot.db` under
systemd).

Each strategy is one YAML file in `strategies.config_dir` (see `flexbot.engine.loader`); its
problems are reported under its own file name, e.g.
`config/strategies/peak.yaml: $.params.max_price: expected a number, got the string 'abc'`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml
from attrs import frozen

from flexbot import wire
from flexbot.engine.loader import StrategySpec, load_spec
from flexbot.engine.risk import RiskLimits
from flexbot.market import MAX_BOOK_MESSAGE_BYTES, ConnectionSettings, Secret
from flexbot.meters.builder import Kind
from flexbot.meters.source import (
    BaselineSettings,
    MeterSettings,
    MqttSettings,
    parse_source,
)
from flexbot.problems import Invalid, Loc, Problem, http_url_problem

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
CLOCKS = ("wall", "sandbox")
BASELINE_METHODS = ("mean_of_days", "high_x_of_y", "provided")

wire.register_enum(Kind)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@frozen
class MarketConfig:
    url: str  # https://host[:port]: auth, REST and WebSocket share this origin
    username: str
    password: str  # a reference: ${ENV_VAR} or file:PATH
    ca_bundle: str | None = None  # an extra CA to trust (PEM), e.g. a sandbox run with --tls
    timeout_s: float = 10.0
    ping_interval_s: float = 20.0  # stream pings; 3 unanswered declare a (half-open) link dead
    # The largest order book message read (a larger one closes the link, 1009, logged once).
    max_book_message_bytes: int = MAX_BOOK_MESSAGE_BYTES
    # wall: market time is UTC now. sandbox: read it (and its speed) from the sandbox's clock.
    clock: str = "wall"


@frozen
class StoreConfig:
    path: str = "flexbot.db"


@frozen
class StrategiesConfig:
    config_dir: str = "strategies"  # one YAML file a strategy
    code_dir: str = "../strategies"  # where `module: name` finds name.py


@frozen
class EngineConfig:
    dry_run: bool = False  # paper trading for every strategy: nothing is sent
    cancel_on_shutdown: bool = True
    expiry_lead_s: int = 60  # default expiry: this long before the window starts
    record: str | None = None  # a JSONL file to record every market event to
    ticker_buffer: int = 256  # per strategy; the oldest is dropped beyond it
    max_failures: int = 5  # a strategy failing this often within failure_window_s is disabled
    failure_window_s: float = 300.0
    restart_backoff_s: float = 1.0  # the first restart's delay; doubles, up to the cap
    restart_backoff_cap_s: float = 60.0
    callback_timeout_s: float = 60.0  # a callback running longer counts as a failure
    resolve_interval_s: float = 5.0  # how often unknown submissions are looked for


@frozen
class MeterEntry:
    """One meter as written in the config; `source` is read by its `type` (see meters.source)."""

    id: str
    location_id: str  # the market location it measures
    source: Mapping[str, Any]
    kind: Kind = Kind.POWER_W
    baseline: BaselineSettings = BaselineSettings()


@frozen
class VerificationConfig:
    settle_delay_s: float = 60.0  # market s after delivery end before metering is built
    max_wait_s: float = 1800.0  # market s after delivery end: then sent even if incomplete
    max_gap_s: float = 900.0  # a longer gap between readings flags the quarters it touches


@frozen
class MetricsConfig:
    listen: str | None = None  # host:port of the Prometheus endpoint, e.g. 127.0.0.1:9108


@frozen
class KillSwitchConfig:
    engaged: bool = False  # engage from the config
    file: str | None = None  # engaged while this file exists


@frozen
class LoggingConfig:
    level: str = "info"
    format: str = "auto"  # auto: JSON unless stdout is a terminal


@frozen
class FlexbotConfig:
    market: MarketConfig
    store: StoreConfig = attrs.field(factory=StoreConfig)
    strategies: StrategiesConfig = attrs.field(factory=StrategiesConfig)
    engine: EngineConfig = attrs.field(factory=EngineConfig)
    risk: RiskLimits = attrs.field(factory=RiskLimits)
    kill_switch: KillSwitchConfig = attrs.field(factory=KillSwitchConfig)
    meters: tuple[MeterEntry, ...] = ()
    verification: VerificationConfig = attrs.field(factory=VerificationConfig)
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
    meters: tuple[MeterSettings, ...] = ()
    meter_secrets: Mapping[str, str | None] = attrs.field(factory=dict)


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
        raise ConfigError(path, list(exc.problems)) from None
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
    meters, meter_secrets = _meters(config, path.parent, env, problems, resolve=secrets)
    located = [(path, p) for p in problems]
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
        meters=tuple(meters),
        meter_secrets=meter_secrets,
    )


def _meters(
    config: FlexbotConfig,
    base: Path,
    env: Mapping[str, str],
    problems: list[Problem],
    *,
    resolve: bool = True,
) -> tuple[list[MeterSettings], dict[str, str | None]]:
    """Each meter's source read by its type; secrets resolved; problems located."""
    meters: list[MeterSettings] = []
    secrets: dict[str, str | None] = {}
    seen: set[str] = set()
    for index, entry in enumerate(config.meters):
        loc: Loc = ("meters", index)
        if entry.id in seen:
            problems.append(Problem((*loc, "id"), f"another meter is already named {entry.id!r}"))
        seen.add(entry.id)
        baseline = entry.baseline
        if baseline.method not in BASELINE_METHODS:
            allowed = ", ".join(BASELINE_METHODS)
            problems.append(Problem((*loc, "baseline", "method"), f"must be one of {allowed}"))
        if baseline.method == "high_x_of_y" and not 0 < baseline.x <= baseline.y:
            problems.append(Problem((*loc, "baseline", "x"), "must be between 1 and y"))
        if baseline.method == "mean_of_days" and baseline.days < 1:
            problems.append(Problem((*loc, "baseline", "days"), "must be at least 1"))
        try:
            source = parse_source(dict(entry.source))
        except Invalid as exc:
            problems += [p.under((*loc, "source")) for p in exc.problems]
            continue
        if resolve and isinstance(source, MqttSettings) and source.password is not None:
            try:
                secrets[entry.id] = resolve_secret(source.password, base, env).reveal()
            except Invalid as exc:
                problems += [p.under((*loc, "source", "password")) for p in exc.problems]
        meters.append(
            MeterSettings(
                id=entry.id,
                location_id=entry.location_id,
                source=source,
                kind=entry.kind,
                baseline=baseline,
            )
        )
    return meters, secrets


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
    problems: list[Problem] = []

    def bad(loc: Loc, msg: str) -> None:
        problems.append(Problem(loc, msg))

    market = config.market
    url_problem = http_url_problem(market.url)
    if url_problem is not None:
        bad(("market", "url"), url_problem)
    if not market.username:
        bad(("market", "username"), "must not be empty")
    if market.max_book_message_bytes < 1024:
        bad(("market", "max_book_message_bytes"), "must be at least 1024")
    for name in ("timeout_s", "ping_interval_s"):
        if not (getattr(market, name) > 0 and math.isfinite(getattr(market, name))):
            bad(("market", name), "must be a finite number of seconds greater than 0")
    if market.clock not in CLOCKS:
        bad(("market", "clock"), f"must be one of {', '.join(CLOCKS)}")
    engine = config.engine
    for name in ("failure_window_s", "restart_backoff_s", "restart_backoff_cap_s"):
        if not getattr(engine, name) > 0:
            bad(("engine", name), "must be greater than 0")
    for name in ("callback_timeout_s", "resolve_interval_s"):
        if not getattr(engine, name) > 0:
            bad(("engine", name), "must be greater than 0")
    for name in ("ticker_buffer", "max_failures"):
        if getattr(engine, name) < 1:
            bad(("engine", name), "must be at least 1")
    if engine.expiry_lead_s < 0:
        bad(("engine", "expiry_lead_s"), "must be 0 or more")
    listen = config.metrics.listen
    if listen is not None and not re.fullmatch(r"[^:\s]+:\d{1,5}", listen):
        bad(("metrics", "listen"), f"expected host:port, e.g. 127.0.0.1:9108, got {listen!r}")
    if config.logging.level not in LOG_LEVELS:
        bad(("logging", "level"), f"must be one of {', '.join(LOG_LEVELS)}")
    if config.logging.format not in LOG_FORMATS:
        bad(("logging", "format"), f"must be one of {', '.join(LOG_FORMATS)}")
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
