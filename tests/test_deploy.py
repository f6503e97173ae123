"""deploy/: the systemd unit is one systemd accepts and keeps its hardening, and the example config
passes `flexbot check-config` as the service sees it (its state directory and credential)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flexbot.daemon import SHUTDOWN_TIMEOUT_S
from flexbot.market.session import CREDENTIAL_NAME
from tests.processes import ROOT, child_env

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "flexbot.service"
EXAMPLE = DEPLOY / "flexbot.yaml.example"
INSTALLED = "/opt/flexbot/.venv/bin/flexbot"
# Where the example's strategy paths point once installed, and where they are in this tree.
STRATEGY_DIRS = {
    "/etc/flexbot/strategies": ROOT / "config" / "strategies",
    "/opt/flexbot/strategies": ROOT / "strategies",
}

Unit = dict[str, dict[str, list[str]]]


def read_unit(text: str) -> Unit:
    """Section → key → every value, in order (a key may repeat, and an empty value resets)."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return read_unit(UNIT.read_text(encoding="utf-8"))["Service"]


def flexbot_executable() -> Path:
    """This environment's `flexbot` script (next to the interpreter), else the interpreter."""
    script = Path(sys.executable).parent / "flexbot"
    return script if script.is_file() else Path(sys.executable)


def verify(analyze: str, unit: Path) -> list[str]:
    """`systemd-analyze verify`'s complaints about `unit` (not about the host's other units)."""
    result = subprocess.run(
        [analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="cat"),
    )
    lines = (result.stdout + result.stderr).splitlines()
    ours = [line for line in lines if unit.name in line or str(unit) in line]
    if result.returncode != 0 and not ours:
        pytest.skip(f"systemd-analyze verify cannot run here: {' | '.join(lines)[:300]}")
    return ours


@pytest.mark.slow
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    text = UNIT.read_text(encoding="utf-8")
    assert INSTALLED in text
    # verify checks that ExecStart's binary exists: point it at this tree's flexbot.
    here = tmp_path / "here"
    here.mkdir()
    unit = here / "flexbot.service"
    unit.write_text(text.replace(INSTALLED, str(flexbot_executable())), encoding="utf-8")
    # The check itself works here: a misspelt key in a copy is reported.
    broken = tmp_path / "broken"
    broken.mkdir()
    typo = broken / "flexbot.service"
    typo.write_text(unit.read_text().replace("\nProtectHome=", "\nProtectHom="), encoding="utf-8")
    assert any("ProtectHom" in line for line in verify(analyze, typo))

    assert verify(analyze, unit) == []


EXPECTED = [
    ("Type", "notify"),
    ("NotifyAccess", "main"),
    ("ExecStart", f"{INSTALLED} run --config /etc/flexbot/flexbot.yaml"),
    ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ("Restart", "on-failure"),
    ("RestartSec", "5"),
    ("WatchdogSec", "30"),
    ("User", "flexbot"),
    ("Group", "flexbot"),
    ("StateDirectory", "flexbot"),
    ("ConfigurationDirectory", "flexbot"),
    ("LoadCredential", f"{CREDENTIAL_NAME}:/etc/flexbot/password"),
    ("EnvironmentFile", "-/etc/flexbot/flexbot.env"),
    ("UMask", "0077"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("NoNewPrivileges", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("SystemCallArchitectures", "native"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
]


@pytest.mark.parametrize(("key", "value"), EXPECTED, ids=[key for key, _ in EXPECTED])
def test_the_unit_keeps_its_setting(service: dict[str, list[str]], key: str, value: str) -> None:
    assert service.get(key) == [value]


def test_the_unit_restricts_sockets_and_system_calls(service: dict[str, list[str]]) -> None:
    families = {family for line in service["RestrictAddressFamilies"] for family in line.split()}
    assert families == {"AF_INET", "AF_INET6", "AF_UNIX"}
    filters = service["SystemCallFilter"]
    assert "@system-service" in filters
    denied = {group for line in filters if line.startswith("~") for group in line[1:].split()}
    assert {"@privileged", "@resources"} <= denied
    assert "DynamicUser" not in service  # a fixed user owns the store (see the unit's comment)
    assert "ReadWritePaths" not in service  # the StateDirectory is the only writable place


def test_systemd_waits_longer_than_the_graceful_stop(service: dict[str, list[str]]) -> None:
    (stop,) = service["TimeoutStopSec"]
    assert float(stop) > SHUTDOWN_TIMEOUT_S


def test_the_environment_example_holds_no_secret() -> None:
    for line in (DEPLOY / "flexbot.env.example").read_text(encoding="utf-8").splitlines():
        name = line.lstrip("# ").partition("=")[0]
        if "=" in line and name.isupper():
            assert not any(word in name for word in ("PASSWORD", "TOKEN", "SECRET")), line


def service_like(tmp_path: Path, text: str) -> tuple[Path, dict[str, str]]:
    """The example as systemd would run it, here: the strategy paths pointed at this tree, a state
    directory and a credentials directory holding the password."""
    for installed, here in STRATEGY_DIRS.items():
        assert installed in text
        text = text.replace(installed, str(here))
    state, credentials = tmp_path / "state", tmp_path / "credentials"
    state.mkdir()
    credentials.mkdir()
    (credentials / CREDENTIAL_NAME).write_text("s3cret\n", encoding="utf-8")
    config = tmp_path / "etc" / "flexbot.yaml"
    config.parent.mkdir()
    config.write_text(text, encoding="utf-8")
    env = {"STATE_DIRECTORY": str(state), "CREDENTIALS_DIRECTORY": str(credentials)}
    return config, env


def check_config(config: Path, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = child_env(**extra)
    for name in ("STATE_DIRECTORY", "CREDENTIALS_DIRECTORY"):
        if name not in extra:
            env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "flexbot.cli", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=config.parent,
    )


def uncomment_meters(text: str) -> str:
    """The example's commented `meters:` block, switched on."""
    lines = text.splitlines()
    start = lines.index("# meters:")
    end = lines.index("", start)
    block = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines[start:end]]
    return "\n".join([*lines[:start], *block, *lines[end:]]) + "\n"


@pytest.mark.slow
@pytest.mark.parametrize("meters", [False, True], ids=["as-shipped", "meters-uncommented"])
def test_the_example_config_passes_check_config(tmp_path: Path, meters: bool) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    if meters:
        text = uncomment_meters(text)
    config, env = service_like(tmp_path, text)
    if meters:
        (Path(env["CREDENTIALS_DIRECTORY"]) / "mqtt-password").write_text("m\n", encoding="utf-8")
    result = check_config(config, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "market https://glocalflexmarket.com" in result.stdout
    assert "password resolved" in result.stdout
    assert f"store {Path(env['STATE_DIRECTORY']) / 'flexbot.db'}" in result.stdout


@pytest.mark.slow
def test_outside_systemd_the_example_names_what_is_missing(tmp_path: Path) -> None:
    config, _ = service_like(tmp_path, EXAMPLE.read_text(encoding="utf-8"))
    result = check_config(config, {})
    assert result.returncode == 2
    assert "$.market.password: environment variable CREDENTIALS_DIRECTORY is not set" in (
        result.stderr
    )
    assert "$.store.path: environment variable STATE_DIRECTORY is not set" in result.stderr
