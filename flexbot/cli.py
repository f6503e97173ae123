"""`flexbot`: the command line. Each subcommand lives in `flexbot.commands`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flexbot import logs
from flexbot.commands import (
    UsageError,
    check_config,
    demo,
    first_leaf,
    orders,
    replay,
    run,
    sandbox,
    status,
    watch,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flexbot", description="Trading daemon for the GLocalFlex flexibility marketplace."
    )
    parser.add_argument(
        "--log-format",
        choices=["json", "console"],
        default=None,
        help="log lines as JSON (default when stdout is not a terminal) or for people",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sandbox.add_parser(sub)
    orders.add_parser(sub)
    watch.add_parser(sub)
    check_config.add_parser(sub)
    run.add_parser(sub)
    replay.add_parser(sub)
    demo.add_parser(sub)
    status.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The sandbox is a service: its log is its output. The other commands print results on
    # stdout (for people and pipes), so their log goes to stderr: all of it for `watch` (its
    # reconnects are part of what it shows), warnings and errors for one-shot commands.
    service = args.command in ("sandbox", "run")
    json = None if args.log_format is None else args.log_format == "json"
    logs.configure(
        json=json,
        stream=sys.stdout if service else sys.stderr,
        level="info" if service or args.command == "watch" else "warning",
    )
    status = 2
    try:
        status = args.run(args)
    except* UsageError as group:
        print(f"flexbot {args.command}: {first_leaf(group)}", file=sys.stderr)
        status = 2
    except* OSError as group:  # e.g. the port is taken: say so, without a traceback
        print(f"flexbot {args.command}: {first_leaf(group)}", file=sys.stderr)
        status = 1
    except* KeyboardInterrupt:
        status = 130
    return status


if __name__ == "__main__":
    sys.exit(main())
