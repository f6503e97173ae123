"""The market's rules for requests, shared by the client (strict, before sending) and the sandbox.

Two strictness levels, because the market itself is strict about some things and real clients are
known to send odd shapes for others (spec §3, §9):

- `Strictness.MARKET`: what the market enforces on `POST /order`: the 15-minute grid, times in the
  future, expiry before delivery, the country set, power > 0, price >= 0, a baseline only on a sell.
  It accepts `location_id: [null]`, an empty country and the legacy baseline shape.
- `Strictness.CLIENT`: everything above, plus what flexbot promises never to send: empty location
  ids and baselines that the market's verification would reject (resolution 900 s, points inside
  the reading window and ascending, unit named).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

from flexbot import model
from flexbot.problems import Loc, Problem, raise_if_any

MARKET_TIME_UNIT_S = 900
COUNTRIES = frozenset({"CZ", "CH", "ES", "DE", "FI", "FR"})
METER_UNITS = frozenset({"kWh", "Wh"})
GRID_MESSAGE = "must be on the 15-minute grid (…:00, :15, :30, :45, seconds 0)"


class Strictness(enum.Enum):
    MARKET = "market"
    CLIENT = "client"


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
) -> list[Problem]:
    """Every rule the request breaks at market time `now`, located in the request body."""
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
    return problems


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
) -> None:
    """Raise `Invalid` with every broken rule; return quietly when the request is fine."""
    raise_if_any(
        check_order_request(req, now, strictness=strictness, gate_closure_s=gate_closure_s)
    )
