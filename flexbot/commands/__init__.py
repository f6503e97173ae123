"""The `flexbot` subcommands, one module each. Each has `add_parser(subparsers)`, which registers
its arguments and sets `run` (a function of the parsed arguments returning the exit status).

Errors a user can fix are `UsageError`s: printed as one line on stderr with exit status 2, never as
a traceback.
"""

import argparse
import os
import sys
from pathlib import Path

from flexbot import config

DEFAULT_CONFIG = Path("config/flexbot.yaml")


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


def add_log_format(parser: argparse.ArgumentParser) -> None:
    """`--log-format` is accepted before or after the subcommand."""
    parser.add_argument(
        "--log-format",
        choices=["json", "console"],
        default=argparse.SUPPRESS,
        help="log lines as JSON (default when stdout is not a terminal) or for people",
    )


def first_leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("FLEXBOT_CONFIG", DEFAULT_CONFIG)),
        help=f"the config file (env FLEXBOT_CONFIG, default {DEFAULT_CONFIG})",
    )


def load_config(path: Path, *, secrets: bool = True) -> config.LoadedConfig | None:
    """The config, or None after printing every located problem on stderr. `secrets=False`: for
    the commands that only touch the store, which need no password."""
    try:
        return config.load(path, secrets=secrets)
    except config.ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) in {path}", file=sys.stderr)
        return None
