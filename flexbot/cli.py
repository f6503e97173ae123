"""`flexbot`: the command line. Each subcommand lives in `flexbot.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from flexbot import logs
from flexbot.commands import UsageError, first_leaf

# Subcommand → its module in `flexbot.commands`, in the order `--help` lists them. Only the module
# of the command being run is imported: `flexbot run` does not pay for the sandbox's web server,
# the demo or the replay (a third of its start-up time).
COMMANDS = {
    "sandbox": "sandbox",
    "kill-switch": "run",  # `run` registers it too
    "orders": "orders",
    "watch": "watch",
    "check-config": "check_config",
    "run": "run",
    "replay": "replay",
    "demo": "demo",
    "status": "status",
}


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand `argv` names: its first word that is not an option (nor the value of
    `--log-format`), if that is a command. None, so every command loads, for help before it."""
    words = iter(argv)
    for word in words:
        if word in ("-h", "--help"):
            return None
        if word == "--log-format":
            next(words, None)
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with `argv`, only the subcommand it names (all of them if it names none)."""
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
    chosen = _command_in(argv) if argv is not None else None
    modules = [COMMANDS[chosen]] if chosen is not None else list(dict.fromkeys(COMMANDS.values()))
    for module in modules:
        importlib.import_module(f"flexbot.commands.{module}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
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
    # An error's message may quote a URL with credentials, or a secret: scrubbed as a log line is.
    try:
        status = args.run(args)
    except* UsageError as group:
        print(f"flexbot {args.command}: {logs.scrub(str(first_leaf(group)))}", file=sys.stderr)
        status = 2
    except* OSError as group:  # e.g. the port is taken: say so, without a traceback
        print(f"flexbot {args.command}: {logs.scrub(str(first_leaf(group)))}", file=sys.stderr)
        status = 1
    except* KeyboardInterrupt:
        status = 130
    return status


if __name__ == "__main__":
    sys.exit(main())
