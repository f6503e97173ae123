"""The config loader and `flexbot check-config`: valid files load, bad ones are refused with every
problem located by file and path, secrets resolve by reference only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexbot import config
from flexbot.backoff import Backoff
from flexbot.engine.settings import EngineSettings, Supervision
from flexbot.problems import http_url_problem
from flexbot.verification import VerificationSettings

REPO = Path(__file__).resolve().parents[1]
GOOD: dict[str, Any] = {
    "market": {
        "url": "https://test.glocalflexmarket.com",
        "username": "aggregator",
        "password": "${FLEXBOT_TEST_PW}",
        "timeout_s": 5,
    },
    "logging": {"level": "info", "format": "json"},
}
ENV = {"FLEXBOT_TEST_PW": "s3cret"}


def write(tmp_path: Path, document: Any, name: str = "flexbot.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def problems_of(path: Path, env: dict[str, str] = ENV) -> list[str]:
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, env)
    return caught.value.lines


def test_a_valid_config_loads_with_its_secret_resolved(tmp_path: Path) -> None:
    loaded = config.load(write(tmp_path, GOOD), ENV)
    assert loaded.connection.url == "https://test.glocalflexmarket.com"
    assert loaded.connection.username == "aggregator"
    assert loaded.connection.password.reveal() == "s3cret"
    assert loaded.connection.timeout_s == 5
    assert "s3cret" not in repr(loaded)


def test_a_password_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n", encoding="utf-8")
    document = {**GOOD, "market": {**GOOD["market"], "password": "file:pw"}}
    assert config.load(write(tmp_path, document), {}).connection.password.reveal() == "from-file"


def test_a_systemd_credential_path_expands_its_variable(tmp_path: Path) -> None:
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "flexbot-password").write_text("cred", encoding="utf-8")
    reference = "file:${CREDENTIALS_DIRECTORY}/flexbot-password"
    document = {**GOOD, "market": {**GOOD["market"], "password": reference}}
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}
    assert config.load(write(tmp_path, document), env).connection.password.reveal() == "cred"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"password": "hunter2"}, "$.market.password: write secrets by reference"),
        ({"password": "${NOPE}"}, "$.market.password: environment variable NOPE is not set"),
        ({"password": "file:missing"}, "$.market.password: cannot read"),
        ({"url": "ftp://x"}, "$.market.url: expected http://host[:port]"),
        ({"url": "http://[::1"}, "$.market.url: not a usable URL"),
        ({"url": "https://xn--ls8h.la"}, "$.market.url: not a usable URL"),
        ({"url": "http://h:99999"}, "$.market.url: port 99999 is out of range"),
        ({"url": "https:///nohost"}, "$.market.url: expected http://host[:port]"),
        ({"username": ""}, "$.market.username: must not be empty"),
        ({"timeout_s": "abc"}, "$.market.timeout_s: expected a number, got the string 'abc'"),
        ({"timeout_s": 0}, "$.market.timeout_s: must be a finite number of seconds greater than 0"),
        (
            {"ping_interval_s": float("inf")},
            "$.market.ping_interval_s: must be a finite number of seconds greater than 0",
        ),
        ({"typo": 1}, "$.market.typo: unknown key"),
        ({"ca_bundle": "nowhere.pem"}, "$.market.ca_bundle: no such file"),
    ],
)
def test_a_bad_market_section_is_located(
    tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    path = write(tmp_path, {**GOOD, "market": {**GOOD["market"], **change}})
    lines = problems_of(path)
    assert any(line.startswith(f"{path}: {expected}") for line in lines), lines
    assert not any("hunter2" in line for line in lines)


@pytest.mark.parametrize(
    "url", ["http://[::1", "htp:/x", "http://h:99999/x", "http:///path", "http://a b/", ""]
)
def test_a_meter_url_the_poller_could_not_request_is_located(tmp_path: Path, url: str) -> None:
    """Seen: `check-config` said valid, and `flexbot run` then died with a traceback."""
    meter = {"id": "m", "location_id": "site-1", "source": {"type": "http", "url": url}}
    path = write(tmp_path, {**GOOD, "meters": [meter]})
    lines = problems_of(path)
    assert any(line.startswith(f"{path}: $.meters[0].source.url: ") for line in lines), lines


@given(
    host=st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){0,2}", fullmatch=True),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    scheme=st.sampled_from(["http", "https"]),
    path=st.from_regex(r"(/[A-Za-z0-9._~-]{0,12}){0,3}", fullmatch=True),
)
def test_any_usable_http_url_passes(host: str, port: int | None, scheme: str, path: str) -> None:
    netloc = host if port is None else f"{host}:{port}"
    assert http_url_problem(f"{scheme}://{netloc}{path}") is None


@pytest.mark.parametrize("url", ["https://op:hunter2/x@market.example", "https://op:hunter2#@h"])
def test_a_url_the_parser_refuses_is_never_quoted(tmp_path: Path, url: str) -> None:
    """A password with an unencoded / or # reads as a port: the parser's message quotes it."""
    path = write(tmp_path, {**GOOD, "market": {**GOOD["market"], "url": url}})
    lines = problems_of(path)
    assert any("$.market.url: " in line for line in lines), lines
    assert not any("hunter2" in line for line in lines), lines


def test_a_store_path_that_is_no_file_is_located(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    path = write(tmp_path, {**GOOD, "store": {"path": "state"}})
    lines = problems_of(path)
    assert any(line.startswith(f"{path}: $.store.path: not a file: ") for line in lines), lines


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    document = {"market": {**GOOD["market"], "extra": 1, "timeout_s": "x"}, "riks": {}}
    lines = problems_of(write(tmp_path, document))
    assert len(lines) == 3
    assert {line.split(": ")[1] for line in lines} == {
        "$.riks",
        "$.market.extra",
        "$.market.timeout_s",
    }


def test_every_bad_field_of_a_section_is_reported_at_once(tmp_path: Path) -> None:
    """Each field checks itself (an attrs validator), and a bad one hides no other."""
    document = {
        **GOOD,
        "market": {**GOOD["market"], "timeout_s": 0, "clock": "sundial", "username": ""},
        "engine": {"max_failures": 0, "ticker_buffer": 0, "failure_window_s": 0},
    }
    path = write(tmp_path, document)
    assert sorted(problems_of(path)) == sorted(
        f"{path}: {line}"
        for line in [
            "$.market.username: must not be empty",
            "$.market.timeout_s: must be a finite number of seconds greater than 0, got 0.0",
            "$.market.clock: must be one of wall, sandbox, got 'sundial'",
            "$.engine.ticker_buffer: must be at least 1, got 0",
            "$.engine.max_failures: must be at least 1, got 0",
            "$.engine.failure_window_s: must be greater than 0, got 0.0",
        ]
    )


def _numeric_checked_fields() -> list[tuple[str, str]]:
    """Every (section, key) of a number that a validator bounds: all of them refuse negatives."""
    sections = {
        "market": config.MarketConfig,
        "engine": config.EngineConfig,
        "verification": VerificationSettings,
    }
    found = []
    for section, cls in sections.items():
        attrs.resolve_types(cls)
        for field in attrs.fields(cls):
            if field.validator is not None and field.type in (int, float):
                found.append((section, field.name))
    return found


NUMERIC_FIELDS = _numeric_checked_fields()
out_of_range = st.one_of(
    st.integers(max_value=-1),
    st.floats(max_value=-1e-9),
    st.sampled_from([float("nan"), float("-inf")]),
)


def test_the_numeric_fields_are_found() -> None:
    assert ("engine", "max_failures") in NUMERIC_FIELDS
    assert ("engine", "record_keep") in NUMERIC_FIELDS
    assert ("market", "timeout_s") in NUMERIC_FIELDS
    assert ("verification", "settle_delay_s") in NUMERIC_FIELDS


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(field=st.sampled_from(NUMERIC_FIELDS), value=out_of_range)
def test_any_out_of_range_number_is_a_problem_located_at_its_field(
    tmp_path: Path, field: tuple[str, str], value: float
) -> None:
    section, key = field
    document = {**GOOD, section: {**GOOD.get(section, {}), key: value}}
    path = write(tmp_path, document)
    lines = problems_of(path)
    assert lines, "refused"
    assert all(line.startswith(f"{path}: $.{section}.{key}: ") for line in lines), lines


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    field=st.sampled_from([("market", "clock"), ("logging", "level"), ("logging", "format")]),
    value=st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none()),
)
def test_a_word_outside_its_choices_is_a_problem_listing_them(
    tmp_path: Path, field: tuple[str, str], value: Any
) -> None:
    section, key = field
    choices = {"clock": ["wall", "sandbox"], "level": ["debug", "info", "warning", "error"]}
    allowed = choices.get(key, ["auto", "json", "console"])
    document = {**GOOD, section: {**GOOD.get(section, {}), key: value}}
    path = write(tmp_path, document)
    if value in allowed:
        assert getattr(getattr(config.load(path, ENV).config, section), key) == value
        return
    [line] = problems_of(path)
    assert line.startswith(f"{path}: $.{section}.{key}: must be one of {', '.join(allowed)}, got ")


def test_the_engine_section_is_the_engines_settings(tmp_path: Path) -> None:
    """One class, no twin to keep in step: the section reads into the engine's settings."""
    engine = {
        "max_failures": 7,
        "failure_window_s": 11,
        "restart_backoff_s": 2,
        "restart_backoff_cap_s": 9,
        "callback_timeout_s": 3,
        "record": "events.jsonl",
        "record_keep": 3,
    }
    settings = config.load(write(tmp_path, {**GOOD, "engine": engine}), ENV).config.engine
    assert isinstance(settings, EngineSettings)
    assert settings.supervision == Supervision(
        max_failures=7,
        failure_window_s=11,
        backoff=Backoff(base_s=2, cap_s=9),
        callback_timeout_s=3,
    )
    assert (settings.record, settings.record_keep) == ("events.jsonl", 3)


@pytest.mark.parametrize(
    ("meter", "expected"),
    [
        ({"baseline": {"method": "median"}}, "$.meters[0].baseline.method: must be one of "),
        ({"baseline": {"days": 0}}, "$.meters[0].baseline.days: must be at least 1, got 0"),
        (
            {"baseline": {"method": "high_x_of_y", "x": 6, "y": 5}},
            "$.meters[0].baseline.x: must be between 1 and y",
        ),
        ({"source": {"type": "gps"}}, "$.meters[0].source.type: must be one of synthetic,"),
        ({"source": []}, "$.meters[0].source: expected a mapping with a `type`"),
        ({"source": {"type": "csv"}}, "$.meters[0].source.path: required field is missing"),
        ({"kind": "volts"}, "$.meters[0].kind: must be one of power_w, energy_kwh, got 'volts'"),
    ],
)
def test_a_bad_meter_is_located(tmp_path: Path, meter: dict[str, Any], expected: str) -> None:
    entry = {"id": "m", "location_id": "site-1", "source": {"type": "synthetic"}, **meter}
    path = write(tmp_path, {**GOOD, "meters": [entry]})
    lines = problems_of(path)
    assert any(line.startswith(f"{path}: {expected}") for line in lines), lines


def test_two_meters_of_one_name_are_located_at_the_second(tmp_path: Path) -> None:
    entry = {"id": "m", "location_id": "site-1", "source": {"type": "synthetic"}}
    path = write(tmp_path, {**GOOD, "meters": [entry, entry]})
    assert problems_of(path) == [f"{path}: $.meters[1].id: another meter is already named 'm'"]


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("market:\n  url: [1\n", encoding="utf-8")
    [line] = problems_of(path)
    assert line.startswith(f"{path}: $: line 3, column 1: not valid YAML")


def test_a_missing_file_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    [line] = problems_of(tmp_path / "absent.yaml")
    assert "cannot read the file" in line


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.lists(
        st.sampled_from(["market", "logging", "url", "level", "x"]), min_size=1, max_size=3
    ),
    value=json_values,
)
def test_generated_bad_documents_are_refused_with_located_messages_only(
    tmp_path: Path, path: list[str], value: Any
) -> None:
    """Replace any part of a good document by anything: the loader either accepts it or raises
    ConfigError whose every line names the file and a `$` path; it never raises anything else."""
    document: Any = yaml.safe_load(yaml.safe_dump(GOOD))
    node = document
    for key in path[:-1]:
        if not isinstance(node, dict):
            break
        node = node.setdefault(key, {})
    if isinstance(node, dict):
        node[path[-1]] = value
    else:
        document = value
    file = write(tmp_path, document)
    lines: list[str] = []
    try:
        config.load(file, ENV)
    except config.ConfigError as exc:
        lines = exc.lines or ["(no lines)"]
    assert all(line.startswith(f"{file}: $") for line in lines)


def check_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flexbot.cli", "check-config", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        timeout=30,
        check=False,
    )


def test_check_config_accepts_the_shipped_example() -> None:
    done = check_config("--config", "config/flexbot.yaml", env={"FLEXBOT_PASSWORD": "demo"})
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout


def test_check_config_lists_located_problems_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, {"market": {**GOOD["market"], "password": "inline", "x": 1}})
    done = check_config("--config", str(path))
    assert done.returncode == 2
    assert f"{path}: $.market.x: unknown key" in done.stderr
    assert "Traceback" not in done.stderr


def a_buyer(tmp_path: Path, **location: Any) -> None:
    (tmp_path / "strategies").mkdir(exist_ok=True)
    buyer = {
        "module": "buyer",
        "class": "FlexBuyer",
        "location": {"location_id": ["site-1"], "country_code": "DE", **location},
        "params": {"limit_price": 0.2},
    }
    write(tmp_path / "strategies", buyer, "buyer.yaml")


def test_a_strategy_files_problems_are_told_with_flexbot_yamls_own(tmp_path: Path) -> None:
    a_buyer(tmp_path)
    strategy = yaml.safe_load((tmp_path / "strategies" / "buyer.yaml").read_text())
    strategy["params"]["limit_price"] = "cheap"
    write(tmp_path / "strategies", strategy, "buyer.yaml")
    document = {
        **GOOD,
        "engine": {"max_failures": 0},
        "strategies": {"code_dir": str(REPO / "strategies")},
    }
    found = problems_of(write(tmp_path, document))
    assert [line.replace(str(tmp_path), "") for line in found] == [
        "/flexbot.yaml: $.engine.max_failures: must be at least 1, got 0",
        "/strategies/buyer.yaml: $.params.limit_price: expected a number, got the string 'cheap'",
    ]


def test_a_strategy_the_risk_limits_forbid_everywhere_is_warned_of(tmp_path: Path) -> None:
    """Not refused at load (a strategy may name another location in each order): check-config
    warns."""
    a_buyer(tmp_path, country_code="FR", location_id=["site-9"])
    document = {
        **GOOD,
        "strategies": {"code_dir": str(REPO / "strategies")},
        "risk": {"countries": ["DE"], "locations": ["site-1", "site-2"]},
    }
    path = write(tmp_path, document)
    loaded = config.load(path, ENV)
    found = config.refused_everywhere(loaded.config.risk, list(loaded.strategies))
    assert [f"{p.name}: {problem}" for p, problem in found] == [
        "buyer.yaml: $.location.country_code: global risk allows the countries"
        " ['DE'] only: every order refused",
        "buyer.yaml: $.location.location_id: global risk allows the locations"
        " ['site-1', 'site-2'] only, not site-9: every order refused",
    ]
    shown = check_config("--config", str(path), env=ENV)
    assert shown.returncode == 0, shown.stderr
    assert "warning: " in shown.stdout
    assert "every order refused" in shown.stdout
