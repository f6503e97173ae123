"""`flexbot sandbox`: the local market, with a banner that shows how to use it."""

from __future__ import annotations

import argparse
import signal
import sys
from decimal import Decimal
from functools import partial
from pathlib import Path

import trio

from flexbot import logs, wire
from flexbot.commands import UsageError, add_log_format
from flexbot.commands.argtypes import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from flexbot.problems import Invalid
from flexbot.sandbox.faults import FAULT_NAMES, FaultSettings, parse_fault_option
from flexbot.sandbox.lifecycle import LifecycleRules
from flexbot.sandbox.market import MarketSettings, SandboxMarket
from flexbot.sandbox.ratelimit import RateLimit
from flexbot.sandbox.server import Running, ServerSettings, serve

log = logs.get_logger("flexbot.sandbox")

DEMO_USER = ("demo", "demo")


def _user(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name or not password:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:PASSWORD")
    return name, password


def _rate_limit(text: str) -> RateLimit | None:
    if text.lower() in ("off", "0", "none"):
        return None
    try:
        return RateLimit.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fault(text: str) -> tuple[str, object]:
    try:
        return parse_fault_option(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_sandbox_options(p: argparse.ArgumentParser, *, counterparties: int = 0) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default 8000)")
    p.add_argument(
        "--user",
        action="append",
        type=_user,
        default=[],
        metavar="NAME:PASSWORD",
        help="a market user; repeat for several (default demo:demo)",
    )
    p.add_argument("--token-ttl", type=positive_int, default=300, metavar="S")
    p.add_argument("--refresh-ttl", type=positive_int, default=1800, metavar="S")
    p.add_argument(
        "--strict-refresh",
        action="store_true",
        help="a refresh token is invalid once used (catches clients that keep a stale one)",
    )
    p.add_argument(
        "--rate-limit",
        type=_rate_limit,
        default=RateLimit(10, 1.0),
        metavar="N/S",
        help="per-user limit, N requests per S seconds, or 'off' (default 10/1)",
    )
    p.add_argument(
        "--time-scale",
        type=positive_float,
        default=1.0,
        metavar="X",
        help="market time runs X times faster than the wall clock (default 1)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed for order and contract ids")
    p.add_argument("--gate-closure", type=int, default=0, metavar="S", dest="gate_closure_s")
    p.add_argument(
        "--no-listing",
        dest="listing",
        action="store_false",
        help="answer GET /api/v1/order/ with 405, as the real market (which documents no listing)",
    )
    p.add_argument("--tls", action="store_true", help="serve https/wss with a self-signed cert")
    p.add_argument("--cert", type=Path, help="with --tls: your own certificate (PEM)")
    p.add_argument("--key", type=Path, help="with --tls: the key of --cert (PEM)")
    p.add_argument("--tls-dir", type=Path, help="with --tls: where to write the generated cert")
    p.add_argument(
        "--counterparties",
        type=non_negative_int,
        default=counterparties,
        metavar="N",
        help=f"simulated traders that keep the book moving (default {counterparties})",
    )
    p.add_argument(
        "--counterparty-interval",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="mean wall seconds between one trader's actions (default 2)",
    )
    p.add_argument(
        "--fault",
        action="append",
        type=_fault,
        default=[],
        metavar="NAME=VALUE",
        help=f"switch a fault on at start; repeatable. Names: {', '.join(FAULT_NAMES)}",
    )
    p.add_argument(
        "--ping-interval",
        type=non_negative_float,
        default=30.0,
        metavar="S",
        help="server WebSocket ping interval; a client missing 3 pongs is closed; 0 = no pings",
    )
    p.add_argument(
        "--ws-queue",
        type=positive_int,
        default=256,
        metavar="N",
        help="messages queued per WebSocket client before it is cut off (default 256)",
    )
    p.add_argument(
        "--metering-deadline",
        type=positive_int,
        default=3600,
        metavar="S",
        help="seconds after delivery end that metering is accepted (default 3600)",
    )
    p.add_argument(
        "--min-delivered-pct",
        type=non_negative_float,
        default=90.0,
        metavar="P",
        help="verification succeeds when at least P%% was delivered (default 90)",
    )
    p.add_argument(
        "--settlement-delay",
        type=non_negative_int,
        default=300,
        metavar="S",
        help="market seconds from successful verification to settlement (default 300)",
    )
    add_log_format(p)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sandbox = sub.add_parser("sandbox", help="run the local GLocalFlex marketplace")
    _add_sandbox_options(sandbox)
    sandbox.set_defaults(run=run)


def _settings(args: argparse.Namespace) -> tuple[MarketSettings, ServerSettings]:
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together: give both or neither")
    if args.cert is not None and not args.tls:
        raise UsageError("--cert/--key need --tls")
    for path in (args.cert, args.key):
        if path is not None and not path.is_file():
            raise UsageError(f"{path}: no such file")
    if args.gate_closure_s < 0:
        raise UsageError("--gate-closure must not be negative")
    users = dict(args.user or [DEMO_USER])
    try:
        faults = wire.structure(dict(args.fault), FaultSettings)
    except Invalid as exc:
        raise UsageError(f"--fault {exc.problems[0]}") from None
    market = MarketSettings(
        users=users,
        token_ttl_s=args.token_ttl,
        refresh_ttl_s=args.refresh_ttl,
        strict_refresh=args.strict_refresh,
        rate_limit=args.rate_limit,
        time_scale=args.time_scale,
        seed=args.seed,
        gate_closure_s=args.gate_closure_s,
        listing=args.listing,
        lifecycle=LifecycleRules(
            metering_deadline_s=args.metering_deadline,
            min_delivered_pct=Decimal(str(args.min_delivered_pct)),
            settlement_delay_s=args.settlement_delay,
        ),
        faults=faults,
        counterparties=args.counterparties,
        counterparty_interval_s=args.counterparty_interval,
    )
    server = ServerSettings(
        host=args.host,
        port=args.port,
        tls=args.tls,
        cert=args.cert,
        key=args.key,
        tls_dir=args.tls_dir,
        ws_ping_interval_s=args.ping_interval or None,
        ws_queue_size=args.ws_queue,
    )
    return market, server


def _banner(running: Running, market: MarketSettings, demo: bool) -> str:
    user, password = next(iter(market.users.items()))
    lines = [
        f"flexbot sandbox listening on {running.base_url} (WebSocket {running.ws_url})",
        f"users: {', '.join(market.users)}; market time x{market.time_scale:g}",
        "streams: /api/v1/ws/trade (Bearer token), /api/v1/ws/ticker, /api/v1/ws/orderbook",
        "introspection: GET /sandbox/clock, /sandbox/orders, /sandbox/stats, /sandbox/faults",
    ]
    if running.ca is not None:
        lines.append(f"TLS: trust {running.ca} (e.g. REQUESTS_CA_BUNDLE={running.ca})")
    if demo:
        curl = "curl --cacert " + str(running.ca) if running.ca else "curl"
        lines += [
            "",
            "Try the official quick start against it:",
            f"  {curl} -s -X POST {running.base_url}/auth/oauth/v2/token \\",
            f"    -d client_id=glocalflexmarket_public_api -d grant_type=password"
            f" -d username={user} -d password={password}",
            f"  {curl} -s {running.base_url}/sandbox/clock",
            "",
            f"Watch the market ({market.counterparties} simulated traders keep it moving):",
            f"  .venv/bin/flexbot watch orderbook --url {running.base_url}"
            + (f" --ca-bundle {running.ca}" if running.ca else ""),
            f"  .venv/bin/flexbot watch ticker --url {running.base_url}"
            + (f" --ca-bundle {running.ca}" if running.ca else ""),
            "Stop with Ctrl-C.",
        ]
    return "\n".join(lines)


async def _run_sandbox(market_settings: MarketSettings, server: ServerSettings, demo: bool) -> None:
    market = SandboxMarket(market_settings)
    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    if shutdown.is_set():  # a second signal: stop now
                        nursery.cancel_scope.cancel()
                        return
                    log.info("sandbox.stopping", signal=signal.Signals(signum).name)
                    shutdown.set()

            nursery.start_soon(watch_signals)
            async with trio.open_nursery() as server_nursery:
                running: Running = await server_nursery.start(
                    partial(serve, market, server, shutdown=shutdown)
                )
                log.info("sandbox.started", base_url=running.base_url, ca=str(running.ca or ""))
                print(_banner(running, market_settings, demo), file=sys.stderr, flush=True)
            nursery.cancel_scope.cancel()  # the server has stopped: stop watching for signals
    log.info("sandbox.stopped")


def run(args: argparse.Namespace) -> int:
    market, server = _settings(args)
    # The quick start shows the password: only for the default demo user, never for real ones.
    trio.run(_run_sandbox, market, server, dict(market.users) == dict([DEMO_USER]))
    return 0
