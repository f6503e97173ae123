"""The chaos run from the command line: `python -m bench.chaos --help`."""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

from bench import chaos
from bench.chaos.runner import run
from bench.chaos.settings import ChaosSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=chaos.__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, default=900.0, help="wall seconds of chaos")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs in that time (>= 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--two-daemons", type=int, default=3, help="second daemons on the store")
    parser.add_argument("--disk-full", type=int, default=2, help="disks filled, then freed")
    parser.add_argument(
        "--keep", type=Path, help="a directory for the logs, config, store and the final state"
    )
    args = parser.parse_args(argv)
    if args.kills < 1 or not math.isfinite(args.duration) or args.duration < 2 * args.kills:
        parser.error("--kills must be >= 1 and --duration at least 2 s per kill")
    if min(args.two_daemons, args.disk_full) < 0 or args.two_daemons + args.disk_full > args.kills:
        parser.error("--two-daemons and --disk-full: >= 0, together at most --kills")
    settings = ChaosSettings(
        duration_s=args.duration,
        kills=args.kills,
        seed=args.seed,
        two_daemons=args.two_daemons,
        disk_full=args.disk_full,
    )
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = run(args.keep, settings, keep=args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="flexbot-chaos-") as workdir:
            report = run(Path(workdir), settings)
    print(report.render())
    if report.recount:
        print("\n" + report.recount, end="")
    return 0 if not report.problems() else 1


if __name__ == "__main__":
    sys.exit(main())
