"""Start-up: the time from process start to READY, against a local sandbox, with its baselines.

A sandbox runs in a subprocess (`flexbot sandbox`, user alice, no rate limit). Then, `--runs`
times each, measured from just before `Popen` to the end of the process or to the message:

- `interpreter`: `python -c pass` (the bare interpreter, with the virtualenv's site);
- `imports`: `python -c "import flexbot.cli, flexbot.daemon"` (what `flexbot run` imports
  before it reads its config);
  both until the child writes a mark on a pipe (its exit, and the interpreter's teardown, are
  not counted, as READY is not an exit either);
- `READY`: `python -m flexbot.cli run --config …` with `NOTIFY_SOCKET` set to an abstract unix
  datagram socket this script listens on, until the daemon's `READY=1` arrives (it is sent once
  the store is open, the login done, the market clock read, the three streams started, /trade
  connected and its open orders reconciled, and the engine running). The daemon is then stopped
  with SIGTERM at once and waited for (that time is shown too, not part of the figure).

Each READY run has a fresh store and its own config (the sandbox's `seller` strategy from
strategies/, JSON logs, the password from `$FLEXBOT_PASSWORD`), so no run restores another's
orders. Prints the median and max of each, the ratios of the READY median to the baselines, where
the time goes (interpreter, imports, the rest: config, store, connecting, reconciling) and the
target (READY < 1 s). `--importtime` adds the tree of the slow imports (`python -X importtime`).

    .venv/bin/python bench/startup.py [--runs 10] [--importtime]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import yaml
from attrs import frozen

from flexbot.sandbox.launch import child_env, launched_sandbox, stop

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.0
READY_BOUND_S = 30.0  # the longest a start may take before the bench gives up
STOP_BOUND_S = 20.0
IMPORT_MS = 10  # --importtime shows the imports that take longer
USER, PASSWORD = "alice", "alice-pw"
IMPORTS = "import flexbot.cli, flexbot.daemon"  # what `flexbot run` imports before its config


@contextmanager
def sandbox(logs: Path) -> Iterator[str]:
    """`flexbot sandbox` on a port it picks; yields its URL once it listens."""
    args = (f"--user={USER}:{PASSWORD}", "--rate-limit", "off", "--log-format", "json")
    with launched_sandbox(*args, logs=logs, ready_s=READY_BOUND_S, stop_s=2.0, cwd=ROOT) as running:
        yield running.url


def write_config(root: Path, url: str) -> Path:
    (root / "strategies").mkdir(parents=True)
    config = {
        "market": {
            "url": url,
            "username": USER,
            "password": "${FLEXBOT_PASSWORD}",
            "clock": "sandbox",
        },
        "store": {"path": "state/flexbot.db"},
        "strategies": {"config_dir": "strategies", "code_dir": str(ROOT / "strategies")},
        "logging": {"format": "json"},
    }
    seller = {
        "module": "seller",
        "class": "FlexSeller",
        "location": {"location_id": ["site-1"], "country_code": "DE"},
        "params": {"floor_price": 0.25, "ask_price": 0.30},
    }
    (root / "strategies" / "seller.yaml").write_text(yaml.safe_dump(seller))
    (root / "flexbot.yaml").write_text(yaml.safe_dump(config))
    return root / "flexbot.yaml"


def time_to_mark(code: str) -> float:
    """Seconds from just before Popen until `python -c code` writes its mark (its exit, and the
    interpreter's teardown, are not counted: READY is not an exit either)."""
    argv = [sys.executable, "-c", f"{code}\nimport os; os.write(1, b'!')"]
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=ROOT, env=child_env())
    try:
        assert process.stdout is not None
        mark = process.stdout.read(1)
        elapsed = time.perf_counter() - started
        if mark != b"!" or process.wait(timeout=READY_BOUND_S) != 0:
            raise RuntimeError(f"python -c {code!r} failed")
        return elapsed
    finally:
        stop(process, 2.0)


@frozen
class Run:
    ready_s: float  # Popen to READY=1
    logged_in_s: float  # Popen to the daemon's `auth.logged_in` log line (its own timestamp)
    ready_logged_s: float  # Popen to its `daemon.ready` line
    stop_s: float  # SIGTERM to exit


def logged_at(log: Path, started_wall: float) -> dict[str, float]:
    """When (seconds after `started_wall`) each event of the daemon's JSON log was stamped."""
    seen: dict[str, float] = {}
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
            stamp = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError):
            continue
        seen.setdefault(entry.get("event", ""), stamp.timestamp() - started_wall)
    return seen


def time_ready(config: Path, name: str) -> Run:
    """Seconds from just before Popen to READY=1 (and to two log lines), from SIGTERM to exit."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(READY_BOUND_S)
        log = config.parent / "run.log"
        argv = [sys.executable, "-m", "flexbot.cli", "run", "--config", str(config)]
        env = child_env(FLEXBOT_PASSWORD=PASSWORD, NOTIFY_SOCKET=f"@{name}")
        with log.open("wb") as out:
            started_wall, started = time.time(), time.perf_counter()
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        try:
            while True:
                try:
                    message = sock.recv(4096).decode()
                except TimeoutError:
                    raise RuntimeError(f"no READY after {READY_BOUND_S} s; see {log}") from None
                if "READY=1" in message.splitlines():
                    ready = time.perf_counter() - started
                    break
            process.send_signal(signal.SIGTERM)
            stopping = time.perf_counter()
            status = process.wait(timeout=STOP_BOUND_S)
            stopped = time.perf_counter() - stopping
            if status != 0:
                raise RuntimeError(f"flexbot run exited with {status}; see {log}")
            events = logged_at(log, started_wall)
            return Run(ready, events["auth.logged_in"], events["daemon.ready"], stopped)
        finally:
            stop(process, 2.0)


def summary(label: str, samples: list[float]) -> str:
    median, worst = statistics.median(samples), max(samples)
    return f"  {label:<12} median {median * 1000:7.1f} ms   max {worst * 1000:7.1f} ms"


def slow_imports(threshold_ms: float) -> list[tuple[float, float, str]]:
    """Every import taking at least `threshold_ms` (cumulative) under `python -X importtime`, in
    import order, as (self ms, cumulative ms, name indented as nested)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", IMPORTS],
        check=True,
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, cumulative, name = line.split(":", 1)[1].split("|")
        if int(cumulative) >= threshold_ms * 1000:
            rows.append((int(own) / 1000, int(cumulative) / 1000, name.rstrip()))
    return rows


def repeat(runs: int, fn: Callable[[int], float]) -> list[float]:
    return [fn(i) for i in range(runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--importtime", action="store_true", help=f"show the imports over {IMPORT_MS} ms"
    )
    args = parser.parse_args()
    time_to_mark(IMPORTS)  # the .pyc files are written, if they were not
    interpreter = repeat(args.runs, lambda _: time_to_mark("pass"))
    imports = repeat(args.runs, lambda _: time_to_mark(IMPORTS))
    with tempfile.TemporaryDirectory(prefix="flexbot-startup-") as tmp, sandbox(Path(tmp)) as url:
        tag = f"flexbot-bench-{os.getpid()}"
        results = [
            time_ready(write_config(Path(tmp) / f"run-{i}", url), f"{tag}-{i}")
            for i in range(args.runs)
        ]
    ready = [r.ready_s for r in results]
    print(f"start-up against a local sandbox, {args.runs} runs each")
    print(summary("interpreter", interpreter))
    print(summary("imports", imports))
    print(summary("READY", ready))
    print(summary("(stop)", [r.stop_s for r in results]) + "   SIGTERM to exit, not counted")
    m_interp, m_imports, m_ready = (statistics.median(s) for s in (interpreter, imports, ready))
    print(
        f"  ratio READY/interpreter {m_ready / m_interp:.1f}x, READY/imports "
        f"{m_ready / m_imports:.2f}x"
    )
    print(
        f"  where it goes (medians): interpreter {m_interp * 1000:.0f} ms, imports "
        f"{(m_imports - m_interp) * 1000:.0f} ms, config + store + connect + reconcile "
        f"{(m_ready - m_imports) * 1000:.0f} ms"
    )
    logged_in = statistics.median(r.logged_in_s for r in results)
    ready_logged = statistics.median(r.ready_logged_s for r in results)
    print(
        f"  the daemon's own log (medians from Popen): auth.logged_in at {logged_in * 1000:.0f} ms"
        f" (imports, config, store, login), daemon.ready at {ready_logged * 1000:.0f} ms (clock,"
        f" streams, /trade reconciled, engine: {(ready_logged - logged_in) * 1000:.0f} ms)"
    )
    verdict = "met" if m_ready < TARGET_S else "NOT met"
    print(f"  READY median {m_ready:.3f} s (target < {TARGET_S:.0f} s: {verdict})")
    if args.importtime:
        print(f"  imports of {IMPORTS!r} over {IMPORT_MS} ms (python -X importtime; self, total):")
        for own, cumulative, name in slow_imports(IMPORT_MS):
            print(f"    {own:6.1f} {cumulative:6.1f} ms {name}")


if __name__ == "__main__":
    main()
