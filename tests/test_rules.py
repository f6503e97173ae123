"""Property tests for the market rules (`flexbot.rules`): validation accepts exactly the valid
requests.

The oracle below is a plain restatement of the rules in the module docstring and spec §3, written
without the module's helpers. Requests are generated around every boundary (a minute or a second off
the grid, expiry equal to now or to delivery_start, start equal to end, power 0, price just below 0,
countries just outside the set), and `check_order_request` must name exactly the fields the oracle
says are wrong.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexbot import model, rules, wire
from flexbot.market.feed import crossed_windows
from flexbot.problems import Invalid, Loc, render_loc
from flexbot.rules import Strictness
from flexbot.strategy import Window, asks_in, bids_in
from tests import strategies_model as sm

FAST = settings(max_examples=200, deadline=None)
MANY = settings(max_examples=500, deadline=None)

QUARTER = timedelta(minutes=15)
MICRO = timedelta(microseconds=1)
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

# --- the oracle ---------------------------------------------------------------------------------

MARKET_COUNTRIES = {"CZ", "CH", "ES", "DE", "FI", "FR"}  # spec §3


def on_quarter_hour(dt: datetime) -> bool:
    return dt.minute in (0, 15, 30, 45) and dt.second == 0 and dt.microsecond == 0


def oracle_meter_reading(reading: model.MeterReading) -> set[Loc]:
    """Where a baseline or metering series breaks the verification rules (spec §7)."""
    bad: set[Loc] = set()
    if reading.resolution != 900:
        bad.add(("resolution",))
    if reading.unit_measured not in ("kWh", "Wh"):
        bad.add(("unit_measured",))
    start, end = reading.reading_start, reading.reading_end
    if start is None:
        bad.add(("reading_start",))
    if end is None:
        bad.add(("reading_end",))
    if start is not None and end is not None and not start < end:
        bad.add(("reading_end",))
    if len(reading.data_points) == 0:
        bad.add(("data_points",))
    for i, point in enumerate(reading.data_points):
        inside = (start is None or start <= point.timestamp) and (
            end is None or point.timestamp <= end
        )
        ascending = i == 0 or reading.data_points[i - 1].timestamp < point.timestamp
        if not (inside and ascending):
            bad.add(("data_points", i, "timestamp"))
    return bad


def oracle(
    req: model.OrderRequest, now: datetime, strictness: Strictness, gate_closure_s: int = 0
) -> set[Loc]:
    """The fields of `req` that break a rule at market time `now`."""
    bad: set[Loc] = set()
    if not req.power > 0:
        bad.add(("power",))
    if not req.price >= 0:
        bad.add(("price",))
    start, end, expiry = req.delivery_start, req.delivery_end, req.expiry_time
    if not (on_quarter_hour(start) and start > now):
        bad.add(("delivery_start",))
    if not (on_quarter_hour(end) and end > now and end > start):
        bad.add(("delivery_end",))
    if not (now < expiry < start - timedelta(seconds=gate_closure_s)):
        bad.add(("expiry_time",))
    if req.location.country_code not in MARKET_COUNTRIES | {""}:
        bad.add(("location", "country_code"))
    if strictness is Strictness.CLIENT:
        ids = req.location.location_id
        if len(ids) == 0:
            bad.add(("location", "location_id"))
        bad |= {
            ("location", "location_id", i)
            for i, x in enumerate(ids)
            if not (isinstance(x, str) and x != "")
        }
    if req.baseline is not None:
        if req.side != model.Side.SELL:
            bad.add(("baseline",))
        elif strictness is Strictness.CLIENT:
            bad |= {("baseline", *loc) for loc in oracle_meter_reading(req.baseline)}
    return bad


def problem_locs(
    req: model.OrderRequest, now: datetime, strictness: Strictness, gate_closure_s: int = 0
) -> set[Loc]:
    problems = rules.check_order_request(
        req, now, strictness=strictness, gate_closure_s=gate_closure_s
    )
    for problem in problems:
        assert str(problem).startswith(render_loc(problem.loc) + ": ")
    return {p.loc for p in problems}


# --- generators around the boundaries -----------------------------------------------------------

strictnesses = st.sampled_from(list(Strictness))


def _floor_quarter(dt: datetime) -> datetime:
    return EPOCH + ((dt - EPOCH) // QUARTER) * QUARTER


#: Small shifts that take a time just off (or keep it on) a boundary.
nudges = st.one_of(
    st.just(timedelta(0)),
    st.sampled_from([MICRO, -MICRO, timedelta(seconds=1), timedelta(seconds=-1)]),
    st.sampled_from([timedelta(minutes=1), timedelta(minutes=-1), timedelta(minutes=14)]),
    st.integers(1, 59).map(lambda s: timedelta(seconds=s)),
    st.integers(1, 999_999).map(lambda us: timedelta(microseconds=us)),
)

powers = st.one_of(
    st.sampled_from([Decimal(0), Decimal("-0.001"), Decimal(-1000), Decimal("0.001")]),
    st.just(Decimal("1E-9")),
    sm.powers,
)
prices = st.one_of(
    st.sampled_from([Decimal(0), Decimal("-0.000001"), Decimal(-1), Decimal("0.000001")]),
    sm.prices,
)
country_codes = st.one_of(
    sm.country_codes, st.sampled_from(["UK", "ch", "de", "XX", "DEU", " ", "C", "AT"])
)
location_ids = st.one_of(
    st.sampled_from([(), (None,), ("",), ("loc1",), ("loc1", None), ("loc1", "loc2"), ("", "x")]),
    sm.location_ids,
)

LEGACY_BASELINE = model.MeterReading(
    data_points=(model.DataPoint(datetime(2019, 8, 24, 14, 15, tzinfo=UTC), Decimal(1)),),
    metering_id="legacy",
    created_at=datetime(2019, 8, 24, 14, 15, 22, tzinfo=UTC),
    reading_start=datetime(2019, 8, 24, 14, 15, tzinfo=UTC),
    reading_end=datetime(2019, 8, 24, 14, 30, tzinfo=UTC),
    resolution=1,
    unit_measured="kWh",
)


@st.composite
def readings_near_the_rules(draw: st.DrawFn) -> model.MeterReading:
    """A valid series with at most a few of its parts broken: the resolution, the unit, a window
    end, a point moved to a window edge, just past it, or onto its neighbour."""
    reading: model.MeterReading = draw(sm.valid_meter_readings())
    points = list(reading.data_points)
    changes: dict[str, Any] = {}
    if draw(st.integers(0, 5)) == 0:
        changes["resolution"] = draw(st.sampled_from([1, 60, 899, 901, 3600, 0]))
    if draw(st.integers(0, 5)) == 0:
        changes["unit_measured"] = draw(st.sampled_from(["", "kwh", "MWh", "W"]))
    start, end = reading.reading_start, reading.reading_end
    assert start is not None
    assert end is not None
    if draw(st.integers(0, 6)) == 0:
        changes["reading_start"] = None
    if draw(st.integers(0, 6)) == 0:
        changes["reading_end"] = draw(st.sampled_from([None, start, start - MICRO, end - QUARTER]))
    for _ in range(draw(st.integers(0, 2))):
        if not points:
            break
        i = draw(st.integers(0, len(points) - 1))
        where = draw(
            st.sampled_from(
                [
                    start,
                    start - MICRO,
                    end,
                    end + MICRO,
                    points[i - 1].timestamp,
                    points[-1].timestamp,
                ]
            )
        )
        points[i] = attrs.evolve(points[i], timestamp=where)
    if draw(st.integers(0, 8)) == 0:
        points = []
    if draw(st.integers(0, 8)) == 0:
        points.reverse()
    return attrs.evolve(reading, data_points=tuple(points), **changes)


baselines = st.one_of(
    st.none(),
    st.none(),
    sm.valid_meter_readings(),
    st.just(LEGACY_BASELINE),
    readings_near_the_rules(),
    sm.meter_readings,
)


def _strictly_between(draw: st.DrawFn, low: datetime, high: datetime) -> datetime | None:
    """A time in the open interval (low, high) to the microsecond, or None when there is none."""
    span = (high - low) // MICRO
    return low + MICRO * draw(st.integers(1, span - 1)) if span >= 2 else None


@st.composite
def requests_near_the_boundaries(
    draw: st.DrawFn, *, gate_closure_s: int = 0
) -> tuple[model.OrderRequest, datetime]:
    """A request and a market time `now`. Each field is valid four times in five and otherwise on,
    just off, or across one of its boundaries, so that requests with no fault, one fault and many
    faults all come up often."""

    def valid() -> bool:
        return draw(st.integers(0, 4)) > 0

    # now: on the grid or anywhere, in 2001..2099 so that every shift stays in range.
    now = draw(
        sm.utc_datetimes(
            min_value=datetime(2001, 1, 1, tzinfo=UTC), max_value=datetime(2099, 1, 1, tzinfo=UTC)
        )
    )
    if draw(st.booleans()):
        now = _floor_quarter(now) + draw(st.sampled_from([timedelta(0), MICRO, -MICRO]))
    base = _floor_quarter(now)
    if valid():
        start = base + draw(st.integers(1, 8)) * QUARTER  # on the grid, after now
    else:  # now itself, a past quarter hour, or a time nudged off the grid
        start = draw(
            st.one_of(
                st.sampled_from([now, base, base - QUARTER]),
                st.builds(lambda k, d: base + k * QUARTER + d, st.integers(-2, 8), nudges),
            )
        )
    if valid():
        end = start + draw(st.integers(1, 8)) * QUARTER
    else:  # start itself, before start, or nudged off the grid
        end = draw(
            st.one_of(
                st.sampled_from([start, start - QUARTER, start - MICRO]),
                st.builds(lambda k, d: start + k * QUARTER + d, st.integers(-2, 8), nudges),
            )
        )
    gate = start - timedelta(seconds=gate_closure_s)
    expiry = _strictly_between(draw, now, gate) if valid() else None
    if expiry is None:
        expiry = draw(
            st.sampled_from(
                [
                    now,
                    now + MICRO,
                    now - MICRO,
                    start,
                    start - MICRO,
                    start + MICRO,
                    gate,
                    gate - MICRO,
                    gate + MICRO,
                    now - timedelta(minutes=10),
                ]
            )
        )
    side = draw(sm.sides)
    if valid():
        baseline = draw(st.one_of(st.none(), sm.valid_meter_readings())) if side == "sell" else None
    else:
        baseline = draw(
            st.one_of(st.just(LEGACY_BASELINE), readings_near_the_rules(), sm.meter_readings)
        )
    request = model.OrderRequest(
        side=side,
        power=draw(sm.powers if valid() else powers),
        price=draw(sm.prices if valid() else prices),
        delivery_start=start,
        delivery_end=end,
        expiry_time=expiry,
        location=model.Location(
            location_id=draw(st.lists(sm.ids, min_size=1, max_size=3).map(tuple))
            if valid()
            else draw(location_ids),
            country_code=draw(sm.country_codes if valid() else country_codes),
            coordinates=draw(sm.optional(sm.coordinates)),
        ),
        baseline=baseline,
    )
    return request, now


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[model.OrderRequest, datetime]:
    """A request every strictness accepts, with its market time."""
    now = draw(sm.utc_datetimes(max_value=datetime(2099, 1, 1, tzinfo=UTC)))
    # Two quarters up from the floor: at least 15 minutes of room for an expiry before the start.
    start = _floor_quarter(now) + draw(st.integers(2, 96)) * QUARTER
    end = start + draw(st.integers(1, 96)) * QUARTER
    expiry = _strictly_between(draw, now, start)
    assert expiry is not None
    side = draw(sm.sides)
    return (
        model.OrderRequest(
            side=side,
            power=draw(sm.powers),
            price=draw(sm.prices),
            delivery_start=start,
            delivery_end=end,
            expiry_time=expiry,
            location=model.Location(
                location_id=draw(st.lists(sm.ids, min_size=1, max_size=3).map(tuple)),
                country_code=draw(sm.country_codes),
            ),
            baseline=draw(sm.valid_meter_readings()) if side is model.Side.SELL else None,
        ),
        now,
    )


# --- validation accepts exactly the valid requests ----------------------------------------------


@MANY
@given(case=requests_near_the_boundaries(), strictness=strictnesses)
def test_check_order_request_flags_exactly_the_fields_the_rules_forbid(
    case: tuple[model.OrderRequest, datetime], strictness: Strictness
) -> None:
    req, now = case
    assert problem_locs(req, now, strictness) == oracle(req, now, strictness)


@FAST
@given(gate_closure_s=st.integers(0, 7200), strictness=strictnesses, data=st.data())
def test_gate_closure_moves_the_expiry_limit(
    gate_closure_s: int, strictness: Strictness, data: st.DataObject
) -> None:
    req, now = data.draw(requests_near_the_boundaries(gate_closure_s=gate_closure_s))
    assert problem_locs(req, now, strictness, gate_closure_s) == oracle(
        req, now, strictness, gate_closure_s
    )


@FAST
@given(case=valid_requests(), strictness=strictnesses)
def test_a_valid_request_has_no_problems(
    case: tuple[model.OrderRequest, datetime], strictness: Strictness
) -> None:
    req, now = case
    assert rules.check_order_request(req, now, strictness=strictness) == []
    rules.validate_order_request(req, now, strictness=strictness)


@FAST
@given(case=requests_near_the_boundaries(), strictness=strictnesses)
def test_validate_raises_exactly_the_problems_check_finds(
    case: tuple[model.OrderRequest, datetime], strictness: Strictness
) -> None:
    req, now = case
    problems = rules.check_order_request(req, now, strictness=strictness)
    if not problems:
        rules.validate_order_request(req, now, strictness=strictness)
        return
    with pytest.raises(Invalid) as caught:
        rules.validate_order_request(req, now, strictness=strictness)
    assert list(caught.value.problems) == problems


# --- each problem names the offending field -----------------------------------------------------

NOW = datetime(2026, 11, 23, 10, 27, 49, 371000, tzinfo=UTC)
GOOD = model.OrderRequest(
    side=model.Side.SELL,
    power=Decimal(1400),
    price=Decimal("0.65"),
    delivery_start=datetime(2026, 11, 23, 11, 30, tzinfo=UTC),
    delivery_end=datetime(2026, 11, 23, 12, 30, tzinfo=UTC),
    expiry_time=datetime(2026, 11, 23, 10, 37, 49, 371000, tzinfo=UTC),
    location=model.Location(location_id=("loc1",), country_code="CH"),
    baseline=model.MeterReading(
        data_points=tuple(
            model.DataPoint(
                datetime(2026, 11, 23, 11, 30, tzinfo=UTC) + (i + 1) * QUARTER, Decimal("0.35")
            )
            for i in range(4)
        ),
        reading_start=datetime(2026, 11, 23, 11, 30, tzinfo=UTC),
        reading_end=datetime(2026, 11, 23, 12, 30, tzinfo=UTC),
    ),
)
START = GOOD.delivery_start


def test_the_reference_request_is_valid() -> None:
    for strictness in Strictness:
        assert rules.check_order_request(GOOD, NOW, strictness=strictness) == []


SINGLE_FAULTS: list[tuple[str, dict[str, Any], Loc]] = [
    ("power zero", {"power": Decimal(0)}, ("power",)),
    ("power negative", {"power": Decimal("-0.001")}, ("power",)),
    ("price negative", {"price": Decimal("-0.000001")}, ("price",)),
    ("start a minute off", {"delivery_start": START + timedelta(minutes=1)}, ("delivery_start",)),
    ("start a second off", {"delivery_start": START + timedelta(seconds=1)}, ("delivery_start",)),
    ("start a microsecond off", {"delivery_start": START + MICRO}, ("delivery_start",)),
    (
        "end 14 min off",
        {"delivery_end": GOOD.delivery_end - timedelta(minutes=14)},
        ("delivery_end",),
    ),
    ("end equals start", {"delivery_end": START}, ("delivery_end",)),
    ("end before start", {"delivery_end": START - QUARTER}, ("delivery_end",)),
    ("expiry equals start", {"expiry_time": START}, ("expiry_time",)),
    ("expiry after start", {"expiry_time": START + MICRO}, ("expiry_time",)),
    ("expiry equals now", {"expiry_time": NOW}, ("expiry_time",)),
    ("expiry in the past", {"expiry_time": NOW - timedelta(hours=1)}, ("expiry_time",)),
    (
        "country outside the set",
        {"location": model.Location(("loc1",), "UK")},
        ("location", "country_code"),
    ),
    (
        "country lower case",
        {"location": model.Location(("loc1",), "ch")},
        ("location", "country_code"),
    ),
    ("no location id", {"location": model.Location((), "CH")}, ("location", "location_id")),
    (
        "null location id",
        {"location": model.Location((None,), "CH")},
        ("location", "location_id", 0),
    ),
    (
        "empty location id",
        {"location": model.Location(("a", ""), "")},
        ("location", "location_id", 1),
    ),
    ("baseline on a buy", {"side": model.Side.BUY}, ("baseline",)),
    ("baseline resolution", {"baseline": LEGACY_BASELINE}, ("baseline", "resolution")),
]


@pytest.mark.parametrize(
    ("changes", "loc"),
    [(c, loc) for _, c, loc in SINGLE_FAULTS],
    ids=[n for n, _, _ in SINGLE_FAULTS],
)
def test_each_problem_names_the_offending_field(changes: dict[str, Any], loc: Loc) -> None:
    req = attrs.evolve(GOOD, **changes)
    problems = rules.check_order_request(req, NOW, strictness=Strictness.CLIENT)
    assert [p.loc for p in problems] == [loc]
    assert str(problems[0]).startswith(render_loc(loc) + ": ")


def test_an_off_grid_start_is_reported_with_the_grid_message() -> None:
    req = attrs.evolve(GOOD, delivery_start=START + timedelta(seconds=30))
    (problem,) = rules.check_order_request(req, NOW)
    assert problem.loc == ("delivery_start",)
    assert str(problem) == f"$.delivery_start: {rules.GRID_MESSAGE}"


def test_delivery_start_equal_to_now_is_not_in_the_future() -> None:
    now = START
    req = attrs.evolve(GOOD, expiry_time=now - timedelta(minutes=1))
    problems = rules.check_order_request(req, now, strictness=Strictness.MARKET)
    assert [(p.loc, p.msg) for p in problems] == [
        (("delivery_start",), "must be in the future"),
        (("expiry_time",), "must be in the future"),
    ]


@pytest.mark.parametrize("gate_closure_s", [1, 60, 600, 3600])
def test_gate_closure_rejects_an_expiry_inside_the_gate(gate_closure_s: int) -> None:
    gate = START - timedelta(seconds=gate_closure_s)
    now = gate - timedelta(hours=1)
    just_before = attrs.evolve(GOOD, expiry_time=gate - MICRO)
    at_the_gate = attrs.evolve(GOOD, expiry_time=gate)
    check = rules.check_order_request
    assert check(just_before, now, gate_closure_s=gate_closure_s) == []
    (problem,) = check(at_the_gate, now, gate_closure_s=gate_closure_s)
    assert problem.loc == ("expiry_time",)
    assert f"{gate_closure_s} s" in problem.msg
    assert check(at_the_gate, now, gate_closure_s=0) == []


# --- market strictness vs client strictness -----------------------------------------------------

OFFICIAL_ORDER_BODY = (
    b'{"side":"buy","power":1400.0,"price":0.65,"delivery_start":"2026-11-23T11:30:00.000Z",\n'
    b' "delivery_end":"2026-11-23T12:30:00.000Z","expiry_time":"2026-11-23T10:37:49.371Z",\n'
    b' "location":{"location_id":[null],"country_code":"CH"},"baseline":null}'
)


def test_the_market_accepts_the_official_client_order_that_flexbot_would_not_send() -> None:
    req = wire.decode(OFFICIAL_ORDER_BODY, model.OrderRequest)
    assert rules.check_order_request(req, NOW, strictness=Strictness.MARKET) == []
    problems = rules.check_order_request(req, NOW, strictness=Strictness.CLIENT)
    assert [p.loc for p in problems] == [("location", "location_id", 0)]


def test_the_market_accepts_the_legacy_baseline_that_flexbot_would_not_send() -> None:
    req = attrs.evolve(GOOD, location=model.Location((None,), ""), baseline=LEGACY_BASELINE)
    assert rules.check_order_request(req, NOW, strictness=Strictness.MARKET) == []
    client = {p.loc for p in rules.check_order_request(req, NOW, strictness=Strictness.CLIENT)}
    assert client == {
        ("location", "location_id", 0),
        ("baseline", "resolution"),
    }


@FAST
@given(
    case=valid_requests(),
    ids=st.lists(st.one_of(st.none(), st.just("")), max_size=3).map(tuple),
    baseline=st.one_of(st.just(LEGACY_BASELINE), sm.meter_readings),
)
def test_market_strictness_ignores_location_ids_and_baseline_shape(
    case: tuple[model.OrderRequest, datetime],
    ids: tuple[str | None, ...],
    baseline: model.MeterReading,
) -> None:
    req, now = case
    req = attrs.evolve(
        req,
        side=model.Side.SELL,
        location=attrs.evolve(req.location, location_id=ids),
        baseline=baseline,
    )
    assert rules.check_order_request(req, now, strictness=Strictness.MARKET) == []
    assert rules.check_order_request(req, now, strictness=Strictness.CLIENT) != []


def test_client_is_the_default_strictness() -> None:
    req = attrs.evolve(GOOD, location=model.Location((None,), "CH"))
    assert rules.check_order_request(req, NOW) != []


# --- meter readings -----------------------------------------------------------------------------


@FAST
@given(reading=sm.valid_meter_readings())
def test_a_valid_meter_reading_has_no_problems(reading: model.MeterReading) -> None:
    assert rules.check_meter_reading(reading) == []


@MANY
@given(reading=st.one_of(readings_near_the_rules(), sm.meter_readings))
def test_check_meter_reading_flags_exactly_what_verification_rejects(
    reading: model.MeterReading,
) -> None:
    problems = rules.check_meter_reading(reading)
    assert {p.loc for p in problems} == oracle_meter_reading(reading)


@FAST
@given(reading=st.one_of(readings_near_the_rules(), sm.meter_readings))
def test_meter_reading_problems_are_located_under_the_given_prefix(
    reading: model.MeterReading,
) -> None:
    plain = rules.check_meter_reading(reading)
    prefixed = rules.check_meter_reading(reading, ("metering_data",))
    assert prefixed == [p.under(("metering_data",)) for p in plain]


def _reading(*minutes: int, **changes: Any) -> model.MeterReading:
    start = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)
    reading = model.MeterReading(
        data_points=tuple(
            model.DataPoint(start + timedelta(minutes=m), Decimal("0.25")) for m in minutes
        ),
        reading_start=start,
        reading_end=start + timedelta(hours=1),
    )
    return attrs.evolve(reading, **changes)


@pytest.mark.parametrize(
    ("reading", "locs"),
    [
        (_reading(15, 30, 45, 60), set()),
        (_reading(0, 15, 30, 45), set()),  # a point at reading_start is tolerated
        (_reading(15, 30, resolution=1), {("resolution",)}),
        (_reading(15, unit_measured=""), {("unit_measured",)}),
        (_reading(15, unit_measured="MWh"), {("unit_measured",)}),
        (_reading(30, 15), {("data_points", 1, "timestamp")}),
        (_reading(15, 15), {("data_points", 1, "timestamp")}),
        (_reading(15, 75), {("data_points", 1, "timestamp")}),
        (_reading(-15, 15), {("data_points", 0, "timestamp")}),
        (_reading(), {("data_points",)}),
        (_reading(15, reading_start=None), {("reading_start",)}),
        (_reading(15, reading_end=None), {("reading_end",)}),
        (
            _reading(reading_end=datetime(2026, 11, 23, 11, 0, tzinfo=UTC)),
            {("reading_end",), ("data_points",)},
        ),
    ],
)
def test_meter_reading_rules(reading: model.MeterReading, locs: set[Loc]) -> None:
    assert {p.loc for p in rules.check_meter_reading(reading)} == locs


# --- grid helpers and energy --------------------------------------------------------------------


@FAST
@given(dt=sm.datetimes)
def test_floor_and_ceil_bracket_a_time_on_the_grid(dt: datetime) -> None:
    floor, ceil = rules.floor_to_grid(dt), rules.ceil_to_grid(dt)
    assert rules.on_grid(floor)
    assert rules.on_grid(ceil)
    assert floor <= dt <= ceil
    assert ceil - floor in (timedelta(0), QUARTER)
    assert (ceil == floor) == (floor == dt) == rules.on_grid(dt)
    assert rules.floor_to_grid(floor) == floor
    assert rules.ceil_to_grid(ceil) == ceil
    assert floor.tzinfo is dt.tzinfo
    assert ceil.tzinfo is dt.tzinfo


@FAST
@given(dt=sm.datetimes)
def test_on_grid_means_a_quarter_hour_with_zero_seconds(dt: datetime) -> None:
    assert rules.on_grid(dt) == on_quarter_hour(dt)


@FAST
@given(dt=sm.grid_datetimes(max_value=datetime(2099, 1, 1, tzinfo=UTC)), nudge=nudges)
def test_a_nudged_grid_time_rounds_back_to_its_neighbours(dt: datetime, nudge: timedelta) -> None:
    moved = dt + nudge
    if nudge == timedelta(0):
        assert rules.floor_to_grid(moved) == rules.ceil_to_grid(moved) == dt
    elif nudge > timedelta(0):
        assert rules.floor_to_grid(moved) == dt
        assert rules.ceil_to_grid(moved) == dt + QUARTER
    else:
        assert rules.floor_to_grid(moved) == dt - QUARTER
        assert rules.ceil_to_grid(moved) == dt


def test_a_thousand_watts_for_an_hour_is_a_thousand_watt_hours() -> None:
    start = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)
    assert rules.energy_wh(Decimal(1000), start, start + timedelta(hours=1)) == Decimal(1000)
    assert rules.energy_wh(Decimal(1400), start, start + QUARTER) == Decimal(350)


@FAST
@given(
    power=sm.powers,
    start=sm.grid_datetimes(max_value=datetime(2099, 1, 1, tzinfo=UTC)),
    quarters=st.integers(0, 96),
    more=st.integers(0, 96),
)
def test_energy_is_power_times_hours_and_adds_up_over_windows(
    power: Decimal, start: datetime, quarters: int, more: int
) -> None:
    middle = start + quarters * QUARTER
    end = middle + more * QUARTER
    assert rules.energy_wh(power, start, middle) == power * quarters / 4
    assert rules.energy_wh(power, start, end) == rules.energy_wh(
        power, start, middle
    ) + rules.energy_wh(power, middle, end)


# --- who may trade with whom: one rule, the same everywhere -------------------------------------

_QUARTER = timedelta(minutes=15)
_T = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@given(
    bid_country=st.sampled_from(["", "DE", "FR"]),
    ask_country=st.sampled_from(["", "DE", "FR"]),
    ask_later=st.booleans(),
)
def test_one_rule_of_who_may_trade_holds_in_every_place(
    bid_country: str, ask_country: str, ask_later: bool
) -> None:
    """Found by a review: the feed's crossed-book check keyed bids by their exact country, so a
    bid for any country (empty) never crossed an ask for DE, where the matcher would trade them."""
    start = _T + (_QUARTER if ask_later else timedelta(0))
    bid = model.BookEntry("buy", Decimal(1000), Decimal("0.3"), _T, _T + _QUARTER,
                          model.Location(("b",), bid_country))  # fmt: skip
    ask = model.BookEntry("sell", Decimal(1000), Decimal("0.1"), start, start + _QUARTER,
                          model.Location(("a",), ask_country))  # fmt: skip
    expected = not ask_later and (not bid_country or not ask_country or bid_country == ask_country)
    assert rules.may_meet(bid, ask) is expected
    assert rules.may_meet(ask, bid) is expected
    book = model.OrderBook(bids={"1": (bid,)}, asks={"2": (ask,)})
    assert bool(crossed_windows(book)) is expected
    assert (bids_in(book, Window.of(ask), ask_country) == [bid]) is expected
    assert (asks_in(book, Window.of(bid), bid_country) == [ask]) is expected
