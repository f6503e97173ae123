"""`flexbot check-config [--config PATH]`: validate the config, resolve its secret references,
and print every problem located by file and path (exit 2), or a short summary (exit 0)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flexbot import config
from flexbot.commands import add_log_format

DEFAULT_CONFIG = Path("config/flexbot.yaml")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("check-config", help="validate the configuration")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("FLEXBOT_CONFIG", DEFAULT_CONFIG)),
        help=f"the config file (env FLEXBOT_CONFIG, default {DEFAULT_CONFIG})",
    )
    add_log_format(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        loaded = config.load(args.config)
    except config.ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) in {args.config}", file=sys.stderr)
        return 2
    market = loaded.config.market
    print(f"{args.config}: valid; market {market.url} as {market.username}, password resolved")
    for spec in loaded.strategies:
        modes = [m for m, on in (("disabled", not spec.enabled), ("dry run", spec.dry_run)) if on]
        suffix = f" ({', '.join(modes)})" if modes else ""
        print(f"  strategy {spec.name}: {spec.cls.__name__} v{spec.version}{suffix}")
    enabled = sum(s.enabled for s in loaded.strategies)
    print(f"{len(loaded.strategies)} strategies, {enabled} enabled; store {loaded.store_path}")
    return 0
