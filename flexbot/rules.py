"""The market's rules for requests, shared by the client (strict, before sending) and the sandbox.

Two strictness levels, because the market itself is strict about some things and real clients are
known to send odd shapes for others (spec §3, §9):

- `Strictness.MARKET`: what the market enforces on `POST /order`: the 15-minute grid, times in the
  future, expiry before delivery, the country set, power > 0, price >= 0, a baseline only on a sell.
  It accepts `location_id: [null]`, an empty country and the legacy baseline shape.
- `Strictness.CLIENT`: everything above, plus what flexbot promises never to send: empty location
  ids and baselines that the market's verification would reject (resolution 900 s, points inside
  the reading window and ascending, unit named).

Apart from both: `MarketCaps`, upper bounds on an order's size that the sandbox enforces (a located
422) so that one user cannot bloat the public book. They are *assumed* [A], not documented: the
client passes none, so flexbot never refuses an order of its own for a cap the market may not have.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

from attrs import frozen

from flexbot import model
from flexbot.problems import Loc, Problem, raise_if_any

MARKET_TIME_UNIT_S = 900
COUNTRIES = frozenset({"CZ", "CH", "ES", "DE", "FI", "FR"})
METER_UNITS = frozenset({"kWh", "Wh"})
GRID_MESSAGE = "must be on the 15-minute grid (…:00, :15, :30, :45, seconds 0)"

# Caps on one order, all assumed [A]: the market documents none, but a real market must have some
# (spec §3 says nothing; seen: 17 orders with a 1 MB location id made the public book 18.8 MB and
# every client's /orderbook link closed with 1009). Each is generous for a real flexibility order.
MAX_LOCATION_IDS = 100  # an aggregator's pool of sites in one order
MAX_LOCATION_ID_CHARS = 128  # an EAN (18 digits) or a UUID (36 characters) with room to spare
MIN_POWER_W = Decimal(1)
MAX_POWER_W = Decimal(100_000_000)  # 100 MW, beyond any single flexible asset on a local grid
MAX_PRICE_EUR_KWH = Decimal(10)  # the EU intraday harmonised maximum is 9,999 €/MWh
MAX_WINDOW_S = 24 * 3600  # one delivery window at most a day
MAX_LEAD_S = 31 * 24 * 3600  # delivery and expiry at most a month ahead: no year-9999 orders


class Strictness(enum.Enum):
    MARKET = "market"
    CLIENT = "client"


@frozen
class MarketCaps:
    """Upper bounds on one order, enforced by the sandbox only (see the constants above: all [A]).

    Kept apart from `Strictness` on purpose: `CLIENT` adds rules to `MARKET`, and a client that
    adopted these caps would refuse orders the real market may well take."""

    max_location_ids: int = MAX_LOCATION_IDS
    max_location_id_chars: int = MAX_LOCATION_ID_CHARS
    min_power_w: Decimal = MIN_POWER_W
    max_power_w: Decimal = MAX_POWER_W
    max_price_eur_kwh: Decimal = MAX_PRICE_EUR_KWH
    max_window_s: int = MAX_WINDOW_S
    max_lead_s: int = MAX_LEAD_S


def on_grid(dt: datetime) -> bool:
    return dt.minute % 15 == 0 and dt.second == 0 and dt.microsecond == 0


def floor_to_grid(dt: datetime) -> datetime:
    return dt.replace(minute=dt.minute - dt.minute % 15, second=0, microsecond=0)


def ceil_to_grid(dt: datetime) -> datetime:
    floor = floor_to_grid(dt)
    return floor if floor == dt else floor + timedelta(seconds=MARKET_TIME_UNIT_S)


def energy_wh(power_w: Decimal, start: datetime, end: datetime) -> Decimal:
    """Energy of a constant power over a window: W × h = Wh."""
    return power_w * Decimal(int((end - start).total_seconds())) / Decimal(3600)


def check_order_request(
    req: model.OrderRequest,
    now: datetime,
    *,
    strictness: Strictness = Strictness.CLIENT,
    gate_closure_s: int = 0,
    caps: MarketCaps | None = None,
) -> list[Problem]:
    """Every rule the request breaks at market time `now`, located in the request body; with
    `caps` (the sandbox), also every cap it exceeds."""
    problems: list[Problem] = []

    def bad(loc: Loc, msg: str) -> None:
        problems.append(Problem(loc, msg))

    if req.power <= 0:
        bad(("power",), "must be greater than 0 (watts)")
    if req.price < 0:
        bad(("price",), "must not be negative (€/kWh)")
    for name in ("delivery_start", "delivery_end"):
        when: datetime = getattr(req, name)
        if not on_grid(when):
            bad((name,), GRID_MESSAGE)
        elif when <= now:
            bad((name,), "must be in the future")
    if req.delivery_end <= req.delivery_start:
        bad(("delivery_end",), "must be after delivery_start")
    if req.expiry_time <= now:
        bad(("expiry_time",), "must be in the future")
    gate = req.delivery_start - timedelta(seconds=gate_closure_s)
    if req.expiry_time >= gate:
        what = "delivery_start" if gate_closure_s == 0 else f"delivery_start - {gate_closure_s} s"
        bad(("expiry_time",), f"must be before {what}")
    problems.extend(check_location(req.location, ("location",), strictness))
    if req.baseline is not None:
        if req.side is not model.Side.SELL:
            bad(("baseline",), "only a sell order carries a baseline")
        elif strictness is Strictness.CLIENT:
            problems.extend(check_meter_reading(req.baseline, ("baseline",)))
    if caps is not None:
        problems.extend(check_caps(req, now, caps))
    return problems


def check_caps(req: model.OrderRequest, now: datetime, caps: MarketCaps) -> Iterator[Problem]:
    """Where `req` exceeds a cap. A value that already breaks a rule above (power <= 0, a window
    that ends before it starts) is not reported twice."""
    ids = req.location.location_id
    if len(ids) > caps.max_location_ids:
        yield Problem(
            ("location", "location_id"),
            f"must name at most {caps.max_location_ids} location ids, got {len(ids)}",
            "too_long",
        )
    for i, location_id in enumerate(ids[: caps.max_location_ids]):
        if location_id is not None and len(location_id) > caps.max_location_id_chars:
            yield Problem(
                ("location", "location_id", i),
                f"must be at most {caps.max_location_id_chars} characters, got {len(location_id)}",
                "string_too_long",
            )
    if 0 < req.power < caps.min_power_w:
        yield Problem(("power",), f"must be at least {caps.min_power_w} W", "greater_than_equal")
    if req.power > caps.max_power_w:
        yield Problem(("power",), f"must be at most {caps.max_power_w} W", "less_than_equal")
    if req.price > caps.max_price_eur_kwh:
        yield Problem(
            ("price",), f"must be at most {caps.max_price_eur_kwh} €/kWh", "less_than_equal"
        )
    window_s = (req.delivery_end - req.delivery_start).total_seconds()
    if window_s > caps.max_window_s:
        yield Problem(
            ("delivery_end",),
            f"must be at most {_span(caps.max_window_s)} after delivery_start, "
            f"got {_span(int(window_s))}",
            "less_than_equal",
        )
    try:
        horizon = now + timedelta(seconds=caps.max_lead_s)
    except OverflowError:  # a clock near year 9999: nothing can be too far ahead
        return
    for name in ("delivery_start", "expiry_time"):
        when: datetime = getattr(req, name)
        if when > horizon:
            yield Problem(
                (name,),
                f"must be at most {_span(caps.max_lead_s)} ahead (not after {_utc(horizon)})",
                "less_than_equal",
            )


def _utc(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(seconds: int) -> str:
    """`86400` → `24 h`, `87300` → `24.25 h`, `2678400` → `31 days`: as a person would say it."""
    if seconds > 86400 and seconds % 86400 == 0:
        return f"{seconds // 86400} days"
    if seconds >= 3600 and seconds % 900 == 0:
        return f"{seconds / 3600:g} h"
    return f"{seconds} s"


def check_location(location: model.Location, loc: Loc, strictness: Strictness) -> Iterator[Problem]:
    country = location.country_code
    if country and country not in COUNTRIES:
        allowed = ", ".join(sorted(COUNTRIES))
        yield Problem((*loc, "country_code"), f"must be one of {allowed} or empty, got {country!r}")
    if strictness is Strictness.CLIENT:
        if not location.location_id:
            yield Problem((*loc, "location_id"), "must name at least one location id")
        for i, location_id in enumerate(location.location_id):
            if not location_id:
                yield Problem((*loc, "location_id", i), "must be a non-empty string")


def check_meter_reading(reading: model.MeterReading, loc: Loc = ()) -> list[Problem]:
    """Rules for a baseline or metering series as verification will read it (spec §7)."""
    problems: list[Problem] = []

    def bad(where: Loc, msg: str) -> None:
        problems.append(Problem((*loc, *where), msg))

    if reading.resolution != MARKET_TIME_UNIT_S:
        bad(("resolution",), f"must be {MARKET_TIME_UNIT_S} (seconds per data point)")
    if reading.unit_measured not in METER_UNITS:
        bad(("unit_measured",), f"must name the unit: one of {', '.join(sorted(METER_UNITS))}")
    start, end = reading.reading_start, reading.reading_end
    if start is None:
        bad(("reading_start",), "is required")
    if end is None:
        bad(("reading_end",), "is required")
    if start is not None and end is not None and end <= start:
        bad(("reading_end",), "must be after reading_start")
    if not reading.data_points:
        bad(("data_points",), "must hold at least one data point")
    previous: datetime | None = None
    for i, point in enumerate(reading.data_points):
        where: Loc = ("data_points", i, "timestamp")
        # A point's timestamp marks the end of its interval, so it lies in (start, end]; the docs
        # are not consistent about this, so the start itself is tolerated too.
        if (start is not None and point.timestamp < start) or (
            end is not None and point.timestamp > end
        ):
            bad(where, "must lie inside the reading window (reading_start … reading_end)")
        if previous is not None and point.timestamp <= previous:
            bad(where, "must be later than the previous data point (ascending, no duplicates)")
        previous = point.timestamp
    return problems


def validate_order_request(
    req: model.OrderRequest,
    now: datetime,
    *,
    strictness: Strictness = Strictness.CLIENT,
    gate_closure_s: int = 0,
    caps: MarketCaps | None = None,
) -> None:
    """Raise `Invalid` with every broken rule; return quietly when the request is fine."""
    raise_if_any(
        check_order_request(
            req, now, strictness=strictness, gate_closure_s=gate_closure_s, caps=caps
        )
    )


# --- which orders may trade with each other ------------------------------------------------------


class InMarket(Protocol):
    """An order, an order request or a book entry: what places it in a market."""

    @property
    def delivery_start(self) -> datetime: ...
    @property
    def delivery_end(self) -> datetime: ...
    @property
    def location(self) -> model.Location: ...


def countries_meet(a: str, b: str) -> bool:
    """Two orders' countries let them trade: the same, or either left empty (any country)."""
    return not a or not b or a == b


def may_meet(a: InMarket, b: InMarket) -> bool:
    """The one rule of who may trade with whom (sandbox matching, paper fills, a strategy's view
    of the book, the feed's crossed-book check): the same delivery window, and countries that
    meet. Prices, the all-or-nothing sell and owners are each matcher's own business."""
    return (
        a.delivery_start == b.delivery_start
        and a.delivery_end == b.delivery_end
        and countries_meet(a.location.country_code, b.location.country_code)
    )
