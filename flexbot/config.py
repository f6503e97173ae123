"""`config/flexbot.yaml`: YAML → attrs through cattrs, every problem located by file and path.

Unknown keys are errors (a typo must not silently fall back to a default). Secrets are never
written inline: a secret field holds a reference, `${ENV_VAR}` or `file:PATH` (a relative path is
relative to the config file; `${VAR}` may appear in it, e.g.
`file:${CREDENTIALS_DIRECTORY}/flexbot-password` for a systemd credential). References are resolved
when the config is loaded, so `flexbot check-config` reports a missing variable or file too.

Sections so far: `market` (where and who), `logging`. The daemon's later sections (risk, store,
strategies, meters, metrics) join this schema as they are built.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml
from attrs import frozen

from flexbot import wire
from flexbot.market.auth import Secret
from flexbot.market.session import ConnectionSettings
from flexbot.problems import Invalid, Loc, Problem

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@frozen
class MarketConfig:
    url: str  # https://host[:port]: auth, REST and WebSocket share this origin
    username: str
    password: str  # a reference: ${ENV_VAR} or file:PATH
    ca_bundle: str | None = None  # an extra CA to trust (PEM), e.g. a sandbox run with --tls
    timeout_s: float = 10.0


@frozen
class LoggingConfig:
    level: str = "info"
    format: str = "auto"  # auto: JSON unless stdout is a terminal


@frozen
class FlexbotConfig:
    market: MarketConfig
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)


@frozen
class LoadedConfig:
    """A valid config with its secrets resolved, ready to use."""

    path: Path
    config: FlexbotConfig
    connection: ConnectionSettings


class ConfigError(Exception):
    """Every problem of a config file, each as `FILE: $.path: message`."""

    def __init__(self, path: Path, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))

    @property
    def lines(self) -> list[str]:
        return [f"{self.path}: {p}" for p in self.problems]


def load(path: Path, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read, validate and resolve `path`; raises `ConfigError` listing every problem found."""
    env = os.environ if environ is None else environ
    document = _read_yaml(path)
    try:
        config = wire.structure(document, FlexbotConfig, converter=wire.STRICT_CONVERTER)
    except Invalid as exc:
        raise ConfigError(path, list(exc.problems)) from None
    problems = _check(config)
    password: Secret | None = None
    try:
        password = resolve_secret(config.market.password, path.parent, env)
    except Invalid as exc:
        problems += [p.under(("market", "password")) for p in exc.problems]
    ca_bundle = _relative(config.market.ca_bundle, path.parent)
    if ca_bundle is not None and not ca_bundle.is_file():
        problems.append(Problem(("market", "ca_bundle"), f"no such file: {ca_bundle}"))
    if problems:
        raise ConfigError(path, problems)
    assert password is not None
    connection = ConnectionSettings(
        url=config.market.url.rstrip("/"),
        username=config.market.username,
        password=password,
        ca_bundle=ca_bundle,
        timeout_s=config.market.timeout_s,
    )
    return LoadedConfig(path=path, config=config, connection=connection)


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
    raise Invalid.single(
        (), "write secrets by reference, ${ENV_VAR} or file:PATH, never inline in the config"
    )


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [Problem((), f"cannot read the file: {exc.strerror}")]) from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(path, [Problem((), f"{where}not valid YAML: {exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, [Problem((), f"not valid YAML: {exc}")]) from None


def _check(config: FlexbotConfig) -> list[Problem]:
    problems: list[Problem] = []

    def bad(loc: Loc, msg: str) -> None:
        problems.append(Problem(loc, msg))

    market = config.market
    if not market.url.startswith(("https://", "http://")):
        bad(("market", "url"), f"expected https://host[:port], got {market.url!r}")
    if not market.username:
        bad(("market", "username"), "must not be empty")
    if not market.timeout_s > 0:
        bad(("market", "timeout_s"), "must be greater than 0")
    if config.logging.level not in LOG_LEVELS:
        bad(("logging", "level"), f"must be one of {', '.join(LOG_LEVELS)}")
    if config.logging.format not in LOG_FORMATS:
        bad(("logging", "format"), f"must be one of {', '.join(LOG_FORMATS)}")
    return problems


def _relative(path: str | None, base: Path) -> Path | None:
    if path is None:
        return None
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else base / candidate
