"""`flexbot orders list | show ID | place … | cancel ID… | cancel-all`: the operator's hands on the
market, through the same client the daemon uses.

`list` and `cancel-all` work against the real market, which has no route listing one's orders:
with a config (`--config` or FLEXBOT_CONFIG), the store's journal names the orders that may be
open (the daemon's and the operator's own), each read back from the market by id; where the market
has a listing (the sandbox), it adds the orders the journal does not hold.

Times are ISO-8601 (`2026-11-23T12:00:00Z`) or relative to now (`+30m`, `+2h`); a relative delivery
start is rounded up to the 15-minute grid. Orders are checked against the market's rules before
they are sent, and an order whose submission has an unknown outcome is reported as such: look
before placing it again.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

import attrs
import orjson
import trio

from flexbot import config, model, rules, wire
from flexbot.commands import UsageError, add_log_format, connection
from flexbot.commands.operator_journal import OperatorJournal, TwinInFlight
from flexbot.engine.orders import CLOCK_SKEW, matches
from flexbot.market import (
    AuthFailed,
    ConnectionSettings,
    MarketClient,
    MarketError,
    MarketSession,
    NotFound,
    OutcomeUnknown,
    connect,
)
from flexbot.store import Store, StoreError
from flexbot.strategy import Window, flat_baseline

MAY_EXIST = (
    "flexbot orders place: {}. The order may exist: check `flexbot orders list` before placing "
    "it again."
)
_RELATIVE = re.compile(r"\+(\d+)([smh])")
_DURATION = re.compile(r"(\d+)([smh]?)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "": 1}
READ_IN_FLIGHT = 8  # journalled orders read back at once


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("orders", help="list, show, place and cancel orders")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help)
        connection.add_options(p)
        add_log_format(p)
        p.set_defaults(run=run)
        return p

    action("list", "your open orders: the journal's (with --config), and the market's listing")
    action("show", "one order, as JSON").add_argument("order_id")
    place = action("place", "place one order")
    place.add_argument("--side", choices=["buy", "sell"], required=True)
    place.add_argument("--power", required=True, metavar="W", help="power in watts")
    place.add_argument("--price", required=True, metavar="EUR_PER_KWH")
    place.add_argument("--start", required=True, help="delivery start: ISO time or +30m, +2h")
    place.add_argument("--duration", default="15m", help="15m, 30m, 1h … (default 15m)")
    place.add_argument("--expiry", help="ISO time or +10m (default: 5 minutes before the start)")
    place.add_argument("--country", default="", help="CZ CH ES DE FI FR, or none")
    place.add_argument(
        "--baseline-w",
        metavar="W",
        help="a sell's baseline: the site's usual power, flat over the window (without one, a "
        "sell waits for its baseline and is never matched: the daemon's seller sends its own)",
    )
    place.add_argument(
        "--location-id", action="append", default=[], required=True, dest="location_ids"
    )
    action("cancel", "cancel orders by id").add_argument("order_ids", nargs="+", metavar="ID")
    action("cancel-all", "cancel every open order: the journal's and any the market lists")


def run(args: argparse.Namespace) -> int:
    settings = connection.settings(args)
    request = _order_request(args, datetime.now(UTC)) if args.action == "place" else None
    journal = _journal(args) if request is not None else None
    try:
        return trio.run(_run, args, settings, request, journal)
    finally:
        if journal is not None:
            journal.close()


def _journal(args: argparse.Namespace) -> OperatorJournal | None:
    """The daemon's journal, when a config names it (`--config` or FLEXBOT_CONFIG)."""
    if args.config is None:
        print(
            "flexbot orders place: no --config (or FLEXBOT_CONFIG) names the daemon's store, so "
            "this order is not journalled: a daemon trading on this account cannot tell it from "
            "its own",
            file=sys.stderr,
        )
        return None
    try:
        return OperatorJournal.open(config.load(args.config).store_path)
    except config.ConfigError as exc:  # read once already by connection.settings
        raise UsageError("invalid config:\n" + "\n".join(exc.lines)) from None
    except StoreError as exc:
        raise UsageError(f"cannot journal the order: {exc}") from None


async def _run(
    args: argparse.Namespace,
    settings: ConnectionSettings,
    request: model.OrderRequest | None,
    journal: OperatorJournal | None = None,
) -> int:
    try:
        async with connect(settings, login=False) as session:
            await _login(session, settings)
            client = session.client
            if args.action == "list":
                orders, listed, unread = await _open_orders(client, _journalled(args))
                _print_orders(orders, listed)
                if unread:
                    print(f"{len(unread)} journalled orders could not be read", file=sys.stderr)
                    return 1
            elif args.action == "show":
                order = await client.get_order(args.order_id)
                print(orjson.dumps(wire.unstructure(order), option=orjson.OPT_INDENT_2).decode())
            elif args.action == "place":
                assert request is not None
                return await _place(client, request, journal)
            else:
                if args.action == "cancel":
                    ids = args.order_ids
                else:
                    orders, _, unread = await _open_orders(client, _journalled(args))
                    ids = [o.order_id for o in orders] + unread
                    if not ids:
                        print("no open orders")
                failed = 0
                for result in await client.cancel_many(ids):
                    if result.error is None:
                        print(f"{result.order_id} cancelled")
                    else:
                        failed += 1
                        print(f"{result.order_id} not cancelled: {result.error}", file=sys.stderr)
                return 1 if failed else 0
    except AuthFailed as exc:  # a renewal refused mid-command
        raise UsageError(f"the market refused the credentials: {exc}") from None
    except MarketError as exc:
        print(f"flexbot orders {args.action}: the market said: {exc}", file=sys.stderr)
        return 1
    return 0


async def _place(
    client: MarketClient, request: model.OrderRequest, journal: OperatorJournal | None
) -> int:
    """Journalled before it is sent (see `operator_journal`), its outcome after."""
    client_id = None
    if journal is not None:
        try:
            client_id = journal.before_send(request, datetime.now(UTC))
        except TwinInFlight as exc:
            raise UsageError(str(exc)) from None
        except StoreError as exc:  # nothing was sent
            raise UsageError(f"cannot journal the order, not sent: {exc}") from None

    def note(outcome: str, order: model.Order | None = None, reason: str = "") -> bool:
        """The outcome into the journal; False (said on stderr) if the store refused it."""
        if journal is None or client_id is None:
            return True
        try:
            journal.outcome(client_id, outcome, datetime.now(UTC), order=order, reason=reason)
        except StoreError as exc:  # the daemon stays careful: the order stays "in flight"
            print(f"flexbot orders place: the outcome is not journalled: {exc}", file=sys.stderr)
            return False
        return True

    sent_at = datetime.now(UTC)
    try:
        order = await client.submit_order(request)
    except OutcomeUnknown as exc:
        print(MAY_EXIST.format(exc), file=sys.stderr)
        found = await _look_for(client, journal, request, sent_at) if journal else None
        if found is None:
            note("unknown", reason=str(exc))
            return 1
        print("flexbot orders place: found on the market after all:", file=sys.stderr)
        order = found
    except AuthFailed as exc:  # refused at the token endpoint: the order was not sent
        note("rejected", reason=f"not sent: {exc}")
        raise
    except MarketError as exc:
        note("rejected", reason=str(exc))
        raise
    except BaseException as exc:  # interrupted, or anything unforeseen: it may be on its way
        if isinstance(exc, KeyboardInterrupt | trio.Cancelled):
            print(MAY_EXIST.format("interrupted while the order was on its way"), file=sys.stderr)
        note("unknown", reason=f"{type(exc).__name__} while the order was on its way")
        raise
    print(_line(order))
    return 0 if note("placed", order) else 1


async def _look_for(
    client: MarketClient, journal: OperatorJournal, request: model.OrderRequest, since: datetime
) -> model.Order | None:
    """The order an unknown submission became, where the market lists orders (the sandbox): the
    one identical order made since, that no journalled order owns. None where there is no
    listing, or no single such order."""
    try:
        listed = await client.list_orders()
    except MarketError:
        return None
    candidates = [
        o
        for o in listed
        if matches(request, o) and (o.created_at is None or o.created_at >= since - CLOCK_SKEW)
    ]
    try:
        owned = journal.owned([o.order_id for o in candidates])
    except StoreError:
        return None
    free = [o for o in candidates if o.order_id not in owned]
    return free[0] if len(free) == 1 else None


async def _login(session: MarketSession, settings: ConnectionSettings) -> None:
    bound_s = max(30.0, 3 * settings.timeout_s)
    try:
        with trio.fail_after(bound_s):
            await session.tokens.login()
    except AuthFailed as exc:
        raise UsageError(f"the market refused the credentials: {exc}") from None
    except trio.TooSlowError:
        raise UsageError(
            f"no answer from the market at {settings.url} within {bound_s:g} s"
        ) from None


def _journalled(args: argparse.Namespace) -> list[str] | None:
    """Ids of the orders the store's journal holds as possibly open (the daemon's and the
    operator's); None without a config naming the store."""
    if args.config is None:
        return None
    try:
        path = config.load(args.config, secrets=False).store_path
    except config.ConfigError as exc:
        raise UsageError("invalid config:\n" + "\n".join(exc.lines)) from None
    if not path.exists():
        return []
    try:
        store = Store.open(path)
    except StoreError as exc:
        raise UsageError(f"cannot read the journal: {exc}") from None
    try:
        rows = store.orders()
    finally:
        store.close()
    final = ("done", "rejected", "lapsed")
    return list(
        dict.fromkeys(
            r.order_id
            for r in rows
            if r.order_id and r.state not in final and not r.dry_run  # paper: not on the market
        )
    )


async def _open_orders(
    client: MarketClient, journalled: list[str] | None
) -> tuple[list[model.Order], bool, list[str]]:
    """The open orders, whether the market's listing was read, and the journal's orders that
    could not be read back (they may be open: `cancel-all` cancels them all the same). The
    journal's are each read back by id (the real market has no listing route); the listing, where
    the market has one (the sandbox), adds orders the journal does not hold. Without either: a
    UsageError."""
    found: dict[str, model.Order] = {}
    unread: list[str] = []

    async def read(order_id: str, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            try:
                found[order_id] = await client.get_order(order_id)
            except NotFound:
                pass  # the market knows no such order: nothing open
            except MarketError as exc:
                unread.append(order_id)
                print(f"{order_id}: cannot read it back: {exc}", file=sys.stderr)

    if journalled:
        limiter = trio.CapacityLimiter(READ_IN_FLIGHT)
        async with trio.open_nursery() as nursery:
            for order_id in journalled:
                nursery.start_soon(read, order_id, limiter)
    listed = True
    try:
        for order in await client.list_orders():
            found.setdefault(order.order_id, order)
    except MarketError:
        listed = False
        if journalled is None:
            raise UsageError(
                "the market lists no orders (only the sandbox does): give --config (or "
                "FLEXBOT_CONFIG) so that the store's journal names them"
            ) from None
    ordered = [found[i] for i in (journalled or []) if i in found]
    ordered += [o for i, o in found.items() if i not in set(journalled or [])]
    return [o for o in ordered if not o.is_final], listed, unread


def _print_orders(orders: list[model.Order], listed: bool) -> None:
    where = "the journal and the market's listing" if listed else "the journal"
    if not orders:
        print(f"no open orders ({where})")
        return
    print(f"{len(orders)} open orders ({where})")
    for order in orders:
        print(_line(order))


def _line(order: model.Order) -> str:
    window = f"{order.delivery_start:%Y-%m-%d %H:%M}-{order.delivery_end:%H:%M}Z"
    filled = order.filled_power
    return (
        f"{order.order_id}  {order.side!s:4}  {order.power:>8} W  {order.price:>8.4f} €/kWh  "
        f"{window}  {order.status!s:22}  filled {filled} W"
    )


def _order_request(args: argparse.Namespace, now: datetime) -> model.OrderRequest:
    start = _time(args.start, now, "--start", grid=True)
    end = start + _duration(args.duration)
    expiry = (
        _time(args.expiry, now, "--expiry", grid=False)
        if args.expiry
        else start - timedelta(minutes=5)
    )
    request = model.OrderRequest(
        side=model.Side(args.side),
        power=_decimal(args.power, "--power"),
        price=_decimal(args.price, "--price"),
        delivery_start=start,
        delivery_end=end,
        expiry_time=expiry,
        location=model.Location(tuple(args.location_ids), args.country.upper()),
    )
    if args.baseline_w is not None:
        if request.side is not model.Side.SELL:
            raise UsageError("--baseline-w: only a sell has a baseline")
        usual = _decimal(args.baseline_w, "--baseline-w")
        if usual < request.power:
            raise UsageError("--baseline-w: the site's usual power must be at least --power")
        baseline = flat_baseline(Window(start, end), usual, created_at=now)
        request = attrs.evolve(request, baseline=baseline)
    problems = rules.check_order_request(request, now, strictness=rules.Strictness.CLIENT)
    if problems:
        raise UsageError("; ".join(str(p) for p in problems))
    return request


def _time(text: str, now: datetime, option: str, *, grid: bool) -> datetime:
    relative = _RELATIVE.fullmatch(text)
    if relative:
        when = now + timedelta(seconds=int(relative[1]) * _UNIT_S[relative[2]])
        return rules.ceil_to_grid(when) if grid else when
    try:
        return wire.parse_datetime(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}, or a relative time like +30m") from None


def _duration(text: str) -> timedelta:
    match = _DURATION.fullmatch(text)
    if not match:
        raise UsageError(f"--duration {text!r}: expected e.g. 15m, 30m, 1h")
    seconds = int(match[1]) * _UNIT_S[match[2]]
    if seconds <= 0 or seconds % rules.MARKET_TIME_UNIT_S:
        raise UsageError(f"--duration {text!r}: must be a positive multiple of 15 minutes")
    return timedelta(seconds=seconds)


def _decimal(text: str, option: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise UsageError(f"{option} {text!r}: not a number") from None
    if not value.is_finite():
        raise UsageError(f"{option} {text!r}: not a finite number")
    return value
