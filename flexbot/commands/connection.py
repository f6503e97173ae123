"""Where the market is and who we are, for the commands that talk to it (`orders`, `watch`).

Flags win over environment variables: `--url`/`FLEXBOT_URL` (default: a local sandbox),
`--user`/`FLEXBOT_USER`, and the password from `--password-file`, `FLEXBOT_PASSWORD` or the systemd
credential `flexbot-password`, in that order. `--ca-bundle` adds a CA to trust (a sandbox run with
`--tls` prints the one to use).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from flexbot.commands import UsageError
from flexbot.commands.argtypes import positive_float
from flexbot.market import ConnectionSettings, CredentialsMissing, Secret, resolve_password

DEFAULT_URL = "http://127.0.0.1:8000"


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("market connection")
    group.add_argument(
        "--url",
        default=os.environ.get("FLEXBOT_URL", DEFAULT_URL),
        help=f"market base URL, e.g. https://test.glocalflexmarket.com (env FLEXBOT_URL; "
        f"default {DEFAULT_URL}, a local sandbox)",
    )
    group.add_argument(
        "--user", default=os.environ.get("FLEXBOT_USER"), help="market user (env FLEXBOT_USER)"
    )
    group.add_argument(
        "--password-file",
        type=Path,
        help="file holding the password (else env FLEXBOT_PASSWORD, else the systemd credential)",
    )
    group.add_argument("--ca-bundle", type=Path, help="an extra CA certificate to trust (PEM)")
    group.add_argument("--timeout", type=positive_float, default=10.0, metavar="S")


def password(args: argparse.Namespace) -> Secret | None:
    """The password if one is configured, None if none is (fine for public streams)."""
    try:
        return resolve_password(args.password_file)
    except CredentialsMissing:
        if args.password_file is not None:
            raise
        return None


def settings(args: argparse.Namespace, *, login: bool = True) -> ConnectionSettings:
    url: str = args.url
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url {url!r}: expected http://… or https://…")
    if args.ca_bundle is not None and not args.ca_bundle.is_file():
        raise UsageError(f"--ca-bundle {args.ca_bundle}: no such file")
    try:
        secret = password(args)
    except CredentialsMissing as exc:
        raise UsageError(str(exc)) from None
    if login and (not args.user or secret is None):
        raise UsageError(
            "this command logs in: give --user (or FLEXBOT_USER) and a password "
            "(--password-file, FLEXBOT_PASSWORD or the systemd credential flexbot-password)"
        )
    return ConnectionSettings(
        url=url.rstrip("/"),
        username=args.user or "",
        password=secret or Secret(""),
        ca_bundle=args.ca_bundle,
        timeout_s=args.timeout,
    )
