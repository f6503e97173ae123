"""The `flexbot` subcommands, one module each. Each has `add_parser(subparsers)`, which registers
its arguments and sets `run` (a function of the parsed arguments returning the exit status).

Errors a user can fix are `UsageError`s: printed as one line on stderr with exit status 2, never as
a traceback.
"""

import argparse


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
