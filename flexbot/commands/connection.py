"""Where the market is and who we are, for the commands that talk to it (`orders`, `watch`).

Each setting comes from the first of: a flag, the daemon's config file (`--config` or
`FLEXBOT_CONFIG`, its `market` section), the environment (`FLEXBOT_URL`, `FLEXBOT_USER`, and the
password from `FLEXBOT_PASSWORD` or the systemd credential `flexbot-password`). Without any, the
URL is a local sandbox. `--ca-bundle` adds a CA to trust (a sandbox run with `--tls` prints one).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from flexbot import config
from flexbot.commands import UsageError
from flexbot.commands.argtypes import positive_float
from flexbot.market import ConnectionSettings, CredentialsMissing, Secret, resolve_password
from flexbot.redaction import redact_url

DEFAULT_URL = "http://127.0.0.1:8000"


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("market connection")
    group.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("FLEXBOT_CONFIG"),
        help="the daemon's config file, for its market section (env FLEXBOT_CONFIG)",
    )
    group.add_argument(
        "--url",
        help=f"market base URL, e.g. https://test.glocalflexmarket.com (else the config, env "
        f"FLEXBOT_URL, or {DEFAULT_URL}: a local sandbox)",
    )
    group.add_argument("--user", help="market user (else the config, or env FLEXBOT_USER)")
    group.add_argument(
        "--password-file",
        type=Path,
        help="file holding the password (else the config, env FLEXBOT_PASSWORD, or the systemd "
        "credential flexbot-password)",
    )
    group.add_argument("--ca-bundle", type=Path, help="an extra CA certificate to trust (PEM)")
    group.add_argument("--timeout", type=positive_float, default=None, metavar="S")


def settings(args: argparse.Namespace, *, login: bool = True) -> ConnectionSettings:
    """Flags first, then the config file, then the environment."""
    base: ConnectionSettings | None = None
    if args.config is not None:
        try:
            base = config.load(args.config).connection
        except config.ConfigError as exc:
            raise UsageError("invalid config:\n" + "\n".join(exc.lines)) from None
    url: str = (
        args.url or (base.url if base else None) or os.environ.get("FLEXBOT_URL", DEFAULT_URL)
    )
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url {redact_url(url)!r}: expected http://… or https://…")
    user = args.user or (base.username if base else None) or os.environ.get("FLEXBOT_USER")
    ca_bundle = args.ca_bundle or (base.ca_bundle if base else None)
    if ca_bundle is not None and not ca_bundle.is_file():
        raise UsageError(f"--ca-bundle {ca_bundle}: no such file")
    try:
        if args.password_file is not None:
            secret: Secret | None = resolve_password(args.password_file)
        elif base is not None:
            secret = base.password
        else:
            secret = resolve_password()
    except CredentialsMissing as exc:
        if login or args.password_file is not None:
            raise UsageError(str(exc)) from None
        secret = None
    if login and not user:
        raise UsageError("this command logs in: give --user, a config, or FLEXBOT_USER")
    return ConnectionSettings(
        url=url.rstrip("/"),
        username=user or "",
        password=secret or Secret(""),
        ca_bundle=ca_bundle,
        timeout_s=args.timeout or (base.timeout_s if base else 10.0),
    )
