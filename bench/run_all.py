"""Every benchmark, one after the other, each in its own process: `make bench`.

Each prints its own figures and its ratio against a baseline measured in the same run. This only
runs them in turn (so that none shares the machine with another), shows the machine once, ends
with a summary of every figure that has a target (each bench's lines that name one: start-up,
the memory soak, tick → order against both floors, the outbox, the portfolio's), and exits
non-zero if one of them failed to run (a target not met is a figure, not a failure). The chaos
run is not here: it is `make chaos`.

    .venv/bin/python bench/run_all.py [--quick] [--only NAME[,NAME...]]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name, arguments for the full run, arguments for --quick (a smoke run of the same path)
BENCHES: list[tuple[str, list[str], list[str]]] = [
    ("startup", [], ["--runs", "3"]),
    ("book_decode", [], ["--runs", "500"]),
    ("ingest", [], ["--messages", "5000"]),
    ("ingest", ["--soak"], ["--soak", "--soak-messages", "100000", "--sample-every", "10000"]),
    ("latency", [], ["--events", "500"]),
    ("outbox", [], ["--orders", "50"]),
    ("store_size", [], ["--meters", "5", "--days", "2"]),
    ("fanout", [], ["--clients", "20", "--updates", "50"]),
    (
        "portfolio",
        [],
        [
            *("--meters", "2000", "--assets", "200", "--duration", "10"),
            *("--warm-up", "2", "--idle", "2", "--ceiling", "20000", "--runs", "3"),
        ],
    ),
]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    args = parser.parse_args(argv)
    only = {name for name in args.only.split(",") if name}
    unknown = only - {name for name, _, _ in BENCHES}
    if unknown:
        parser.error(f"unknown benchmark {sorted(unknown)}; known: {[n for n, _, _ in BENCHES]}")
    print(f"machine: {machine()}", flush=True)
    failed = []
    targets: list[tuple[str, str]] = []
    for name, full, quick in BENCHES:
        if only and name not in only:
            continue
        extra = quick if args.quick else full
        command = [sys.executable, str(HERE / f"{name}.py"), *extra]
        print(f"\n=== {name} {' '.join(extra)}".rstrip(), flush=True)
        started = time.monotonic()
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1) as running:
            assert running.stdout is not None
            for line in running.stdout:  # shown as it comes, and kept if it names a target
                print(line, end="", flush=True)
                if "target" in line:
                    targets.append((name, line.strip()))
        status = running.returncode
        print(f"=== {name}: {time.monotonic() - started:.1f} s, exit {status}", flush=True)
        if status != 0:
            failed.append(name)
    if targets:
        print("\n=== summary: the figures with a target")
        for name, line in targets:
            print(f"{name:>12}  {line}")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
