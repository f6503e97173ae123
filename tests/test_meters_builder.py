"""Property tests for the quarter-hour builder (`flexbot.meters.builder`).

The oracles below restate the module docstring with exact arithmetic (`Fraction`, integer
microseconds), without the module's helpers:
- the curve: power → the trapezoid in kWh; register → the increases, a decrease being a reset
  (the increase is then the new reading); duplicates of a time keep the last value given;
- E(t): linear between curve points, extended beyond the ends along the nearest segment;
- the gap rule: a quarter [a, b] is flagged iff it is not inside the sampled span [first, last]
  or some gap longer than `max_gap_s` overlaps it (t0 < b and t1 > a).

Samples are generated unsorted, with duplicate times, at microsecond precision, around an anchor
that is sometimes on the 15-minute grid (so samples fall exactly on quarter boundaries).

The builder turns timedeltas into float seconds (`total_seconds()`), so its values are exact only
up to a relative 1e-16 or so: comparisons allow 1e-12 kWh plus 1e-15 of the magnitudes involved.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from flexbot import rules
from flexbot.meters.builder import KWH_PLACES, Kind, Quarter, Sample, energy_curve, quarters
from flexbot.meters.builder import meter_reading as build_meter_reading
from tests import strategies_model as sm

FAST = settings(max_examples=100, deadline=None)

QUARTER = timedelta(minutes=15)
QUARTER_US = 15 * 60 * 1_000_000
MICRO = timedelta(microseconds=1)
HOUR_US = 3600 * 1_000_000
ABS_TOL = Fraction(1, 10**12)
REL_TOL = Fraction(1, 10**15)

Curve = Sequence[tuple[datetime, Decimal]]


def us(delta: timedelta) -> int:
    return delta // MICRO


def close(actual: Decimal | Fraction, expected: Fraction, scale: Fraction = Fraction(0)) -> bool:
    tolerance = ABS_TOL + REL_TOL * (abs(expected) + abs(scale))
    return abs(Fraction(actual) - expected) <= tolerance


# --- the oracles --------------------------------------------------------------------------------


def oracle_points(samples: Sequence[Sample]) -> list[tuple[datetime, Decimal]]:
    """The distinct times, ascending; a repeated time keeps the value given last."""
    by_time: dict[datetime, Decimal] = {}
    for sample in samples:  # in the order given: a later duplicate overwrites
        by_time[sample.at] = sample.value
    return sorted(by_time.items())


def oracle_curve(samples: Sequence[Sample], kind: Kind) -> list[tuple[datetime, Fraction]]:
    points = oracle_points(samples)
    out: list[tuple[datetime, Fraction]] = []
    total = Fraction(0)
    for i, (at, value) in enumerate(points):
        if i:
            prev_at, prev_value = points[i - 1]
            if kind is Kind.POWER_W:
                hours = Fraction(us(at - prev_at), HOUR_US)
                total += (Fraction(prev_value) + Fraction(value)) / 2 * hours / 1000
            elif value < prev_value:  # a reset: the register counted up from 0
                total += Fraction(value)
            else:
                total += Fraction(value) - Fraction(prev_value)
        out.append((at, total))
    return out


def exact_energy_at(curve: Curve, when: datetime) -> Fraction:
    """E(when): linear between points, extended along the first / last segment outside them."""
    if not curve:
        return Fraction(0)
    if len(curve) == 1:
        return Fraction(curve[0][1])
    index = 0
    for i in range(len(curve) - 1):
        if curve[i][0] <= when:
            index = i
    (t0, e0), (t1, e1) = curve[index], curve[index + 1]
    e0f, e1f = Fraction(e0), Fraction(e1)
    return e0f + (e1f - e0f) * Fraction(us(when - t0), us(t1 - t0))


def oracle_flagged(curve: Curve, start: datetime, end: datetime, max_gap_s: float) -> bool:
    if not curve:
        return True
    if start < curve[0][0] or end > curve[-1][0]:
        return True  # not (fully) inside the sampled span
    max_gap = Fraction(max_gap_s)
    return any(
        Fraction(us(t1 - t0), 1_000_000) > max_gap and t0 < end and t1 > start
        for (t0, _), (t1, _) in itertools.pairwise(curve)
    )


def magnitude(curve: Curve) -> Fraction:
    return max((abs(Fraction(e)) for _, e in curve), default=Fraction(0))


def grid_points_inside(curve: Curve) -> list[datetime]:
    """The 15-minute boundaries in [first sample, last sample]."""
    if not curve:
        return []
    at = rules.ceil_to_grid(curve[0][0])
    out = []
    while at <= curve[-1][0]:
        out.append(at)
        at += QUARTER
    return out


# --- strategies ---------------------------------------------------------------------------------

anchors = st.builds(
    lambda grid, offset: grid + offset * MICRO,
    sm.grid_datetimes(datetime(2001, 1, 1, tzinfo=UTC), datetime(2099, 1, 1, tzinfo=UTC)),
    st.one_of(st.just(0), st.integers(0, QUARTER_US - 1)),
)
power_values = sm.wire_decimals(places=3, below=10**6, min_value=-(10**6))  # W, export < 0
register_values = sm.wire_decimals(places=6, below=10**6)  # kWh
kinds = st.sampled_from(list(Kind))
max_gaps = st.one_of(
    st.sampled_from([60.0, 300.0, 900.0, 1800.0]),
    st.integers(1, 14400).map(lambda n: n / 2),  # halves: exact, so no float quibbles
)


def gap_limits(curve: Curve) -> st.SearchStrategy[float]:
    """Any limit, or one of the curve's own gaps (to the half second: exact in a float), so
    that gaps equal to the limit and just over it are common."""
    gaps = sorted(
        {
            max(1, round(2 * (t1 - t0).total_seconds())) / 2
            for (t0, _), (t1, _) in itertools.pairwise(curve)
        }
    )
    return st.one_of(max_gaps, st.sampled_from(gaps)) if gaps else max_gaps


def values_for(kind: Kind) -> st.SearchStrategy[Decimal]:
    return power_values if kind is Kind.POWER_W else register_values


def offsets_within(span_us: int) -> st.SearchStrategy[int]:
    """Offsets into [0, span]: anywhere, or on whole quarters of the anchor."""
    return st.one_of(
        st.integers(0, span_us),
        st.integers(0, span_us // QUARTER_US).map(lambda n: n * QUARTER_US),
    )


@st.composite
def shuffled_samples(
    draw: st.DrawFn,
    times: list[datetime],
    kind: Kind,
) -> list[Sample]:
    """A sample at each time, some times repeated with other values, in any order."""
    samples = [Sample(at, draw(values_for(kind))) for at in times]
    repeats = draw(st.lists(st.sampled_from(times), max_size=4)) if times else []
    samples += [Sample(at, draw(values_for(kind))) for at in repeats]
    return list(draw(st.permutations(samples)))


@st.composite
def sampled(
    draw: st.DrawFn,
    *,
    kind: Kind | None = None,
    min_span_us: int = 0,
    max_span_us: int = 6 * HOUR_US,
    min_samples: int = 0,
) -> tuple[Kind, list[Sample]]:
    """A kind and samples over a span of [min_span_us, max_span_us] from an anchor: scattered,
    or a meter's regular interval with outages (the long gaps then start and end on samples that
    are often quarter boundaries)."""
    chosen = kind if kind is not None else draw(kinds)
    anchor = draw(anchors)
    if draw(st.booleans()):
        step_us = draw(st.sampled_from([60, 300, 450, 900])) * 1_000_000
        needed = max(-(-min_span_us // step_us) + 1, min_samples, 2)
        n = draw(st.integers(needed, max(needed, max_span_us // step_us)).filter(lambda k: k < 80))
        kept = [0, n - 1, *draw(st.lists(st.integers(0, n - 1), max_size=n))]
        if draw(st.booleans()):  # mostly complete, a few outages
            holes = set(draw(st.lists(st.integers(1, n - 2), max_size=4))) if n > 2 else set()
            kept = [i for i in range(n) if i not in holes]
        times = [anchor + i * step_us * MICRO for i in sorted(set(kept))]
        return chosen, draw(shuffled_samples(times, chosen))
    count = draw(st.integers(min_samples, 25))
    if count == 0:
        return chosen, []
    spans = st.one_of(
        st.integers(min_span_us, max_span_us),
        st.integers(-(-min_span_us // QUARTER_US), max_span_us // QUARTER_US).map(
            lambda n: n * QUARTER_US  # whole quarters: the last sample on a boundary too
        ),
    )
    span_us = draw(spans) if count > 1 else 0
    extra = max(count - 2, 0)
    on_quarters = st.integers(0, span_us // QUARTER_US).map(lambda n: n * QUARTER_US)
    inner = st.one_of(  # anywhere, or every sample on a quarter boundary of the anchor
        st.lists(offsets_within(span_us), min_size=extra, max_size=extra),
        st.lists(on_quarters, min_size=extra, max_size=extra),
    )
    offsets = [0, span_us, *draw(inner)]
    times = [anchor + offset * MICRO for offset in offsets]
    return chosen, draw(shuffled_samples(times, chosen))


@st.composite
def windows_near(draw: st.DrawFn, samples: Sequence[Sample]) -> tuple[datetime, datetime]:
    """A grid window from up to 2 h before the first sample to up to 2 h after the last."""
    if samples:
        first = min(s.at for s in samples)
        last = max(s.at for s in samples)
    else:
        first = last = draw(anchors)
    lo = rules.floor_to_grid(first) - 8 * QUARTER
    hi = rules.ceil_to_grid(last) + 8 * QUARTER
    count = (hi - lo) // QUARTER
    i = draw(st.integers(0, count - 1))
    j = draw(st.integers(i + 1, count))
    return lo + i * QUARTER, lo + j * QUARTER


# --- the curve ----------------------------------------------------------------------------------


@FAST
@given(sampled())
def test_curve_matches_the_exact_integral_or_register_increases(
    case: tuple[Kind, list[Sample]],
) -> None:
    kind, samples = case
    curve = energy_curve(samples, kind)
    expected = oracle_curve(samples, kind)
    assert [at for at, _ in curve] == [at for at, _ in expected]
    assert all(at.tzinfo is not None for at, _ in curve)
    if curve:
        assert curve[0][1] == 0
    scale = sum((abs(e) for _, e in expected), Fraction(0))
    for (_, got), (_, want) in zip(curve, expected, strict=True):
        if kind is Kind.ENERGY_KWH:
            assert Fraction(got) == want  # registers add up exactly
        else:
            assert close(got, want, scale)


@FAST
@given(st.lists(register_values, min_size=1, max_size=30), anchors, st.data())
def test_register_total_counts_a_decrease_as_a_reset(
    readings: list[Decimal], anchor: datetime, data: st.DataObject
) -> None:
    times = [anchor + i * timedelta(seconds=61, microseconds=7) for i in range(len(readings))]
    samples = [Sample(at, value) for at, value in zip(times, readings, strict=True)]
    shuffled = data.draw(st.permutations(samples))
    curve = energy_curve(shuffled, Kind.ENERGY_KWH)
    increases = sum(
        (new if new < old else new - old for old, new in itertools.pairwise(readings)),
        Decimal(0),
    )
    assert curve[-1][1] == increases
    assert all(later >= earlier for (_, earlier), (_, later) in itertools.pairwise(curve))


def test_duplicate_times_keep_the_last_value_given() -> None:
    t0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    t1 = t0 + QUARTER
    samples = [Sample(t1, Decimal(5)), Sample(t0, Decimal(1)), Sample(t1, Decimal(7))]
    assert energy_curve(samples, Kind.ENERGY_KWH) == [(t0, Decimal(0)), (t1, Decimal(6))]


# --- conservation -------------------------------------------------------------------------------


@FAST
@given(sampled(min_span_us=2 * QUARTER_US, min_samples=2), max_gaps, st.data())
def test_quarters_inside_the_span_sum_to_the_curve_increase(
    case: tuple[Kind, list[Sample]], max_gap_s: float, data: st.DataObject
) -> None:
    kind, samples = case
    curve = energy_curve(samples, kind)
    grid = grid_points_inside(curve)
    assert len(grid) >= 2  # a span of 30 min holds two boundaries
    i = data.draw(st.integers(0, len(grid) - 2))
    j = data.draw(st.integers(i + 1, len(grid) - 1))
    start, end = grid[i], grid[j]
    got = quarters(curve, start, end, max_gap_s=max_gap_s)
    total = sum((q.energy_kwh for q in got), Decimal(0))
    expected = exact_energy_at(curve, end) - exact_energy_at(curve, start)
    assert close(total, expected, magnitude(curve))


@FAST
@given(sampled(), max_gaps, st.data())
def test_every_quarter_is_the_curve_difference_over_it(
    case: tuple[Kind, list[Sample]], max_gap_s: float, data: st.DataObject
) -> None:
    """Inside the span by interpolation, outside by extending the nearest segment."""
    kind, samples = case
    curve = energy_curve(samples, kind)
    start, end = data.draw(windows_near(samples))
    got = quarters(curve, start, end, max_gap_s=max_gap_s)
    ends = [exact_energy_at(curve, q.end) for q in got]
    scale = max([magnitude(curve), *(abs(e) for e in ends)])
    for q, e1 in zip(got, ends, strict=True):
        e0 = exact_energy_at(curve, q.end - QUARTER)
        assert close(q.energy_kwh, e1 - e0, scale)


@FAST
@given(
    kinds,
    anchors.map(rules.floor_to_grid),
    st.integers(1, 24),
    st.integers(0, 20),
    max_gaps,
    st.data(),
)
def test_the_window_from_first_to_last_sample_gives_the_whole_increase(
    kind: Kind,
    first: datetime,
    n_quarters: int,
    inner: int,
    max_gap_s: float,
    data: st.DataObject,
) -> None:
    span_us = n_quarters * QUARTER_US
    offsets = [0, span_us, *data.draw(st.lists(offsets_within(span_us), min_size=inner))]
    times = [first + offset * MICRO for offset in offsets]
    samples = data.draw(shuffled_samples(times, kind))
    curve = energy_curve(samples, kind)
    last = first + n_quarters * QUARTER
    got = quarters(curve, first, last, max_gap_s=max_gap_s)
    total = sum((q.energy_kwh for q in got), Decimal(0))
    assert close(total, Fraction(curve[-1][1]))
    assert close(total, oracle_curve(samples, kind)[-1][1], magnitude(curve))
    if kind is Kind.ENERGY_KWH:
        readings = [value for _, value in oracle_points(samples)]
        resets = sum(
            (b if b < a else b - a for a, b in itertools.pairwise(readings)),
            Decimal(0),
        )
        assert close(total, Fraction(resets))


# --- the series ---------------------------------------------------------------------------------


@FAST
@given(sampled(), max_gaps, st.data())
def test_quarters_are_a_window_aligned_ascending_series(
    case: tuple[Kind, list[Sample]], max_gap_s: float, data: st.DataObject
) -> None:
    kind, samples = case
    start, end = data.draw(windows_near(samples))
    got = quarters(energy_curve(samples, kind), start, end, max_gap_s=max_gap_s)
    assert all(isinstance(q, Quarter) for q in got)
    assert len(got) == (end - start) // QUARTER
    assert got[0].end == start + QUARTER
    assert got[-1].end == end
    assert all(rules.on_grid(q.end) for q in got)
    assert all(b.end - a.end == QUARTER for a, b in itertools.pairwise(got))


# --- the gap rule -------------------------------------------------------------------------------


@FAST
@given(sampled(), st.data())
def test_flags_exactly_the_quarters_the_gap_rule_names(
    case: tuple[Kind, list[Sample]], data: st.DataObject
) -> None:
    kind, samples = case
    curve = energy_curve(samples, kind)
    max_gap_s = data.draw(gap_limits(curve))
    start, end = data.draw(windows_near(samples))
    got = quarters(curve, start, end, max_gap_s=max_gap_s)
    expected = [oracle_flagged(curve, q.end - QUARTER, q.end, max_gap_s) for q in got]
    assert [q.flagged for q in got] == expected


@FAST
@given(
    kinds,
    anchors,
    st.integers(60, 7200),
    st.lists(st.integers(1, 10**9), min_size=1, max_size=60),
    st.data(),
)
def test_never_flags_a_quarter_inside_densely_sampled_data(
    kind: Kind,
    anchor: datetime,
    max_gap_s: int,
    steps: list[int],
    data: st.DataObject,
) -> None:
    """Every gap at most `max_gap_s` (and enough samples to cover 30 minutes or more)."""
    max_gap_us = max_gap_s * 1_000_000
    offsets = [0]
    for step in steps:
        offsets.append(offsets[-1] + 1 + step % max_gap_us)  # in [1 µs, max_gap_s]
    while offsets[-1] < 2 * QUARTER_US:
        offsets.append(offsets[-1] + max_gap_us)
    samples = data.draw(shuffled_samples([anchor + o * MICRO for o in offsets], kind))
    curve = energy_curve(samples, kind)
    grid = grid_points_inside(curve)
    got = quarters(curve, grid[0], grid[-1], max_gap_s=float(max_gap_s))
    assert got
    assert not any(q.flagged for q in got)


def test_a_gap_of_exactly_max_gap_is_silent_and_one_microsecond_more_is_flagged() -> None:
    t0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    times = [t0, t0 + QUARTER, t0 + 2 * QUARTER, t0 + 3 * QUARTER]
    dense = energy_curve([Sample(at, Decimal(100)) for at in times], Kind.POWER_W)
    assert not any(q.flagged for q in quarters(dense, t0, times[-1], max_gap_s=900.0))
    times[2] += MICRO  # the 2nd and 3rd gaps: one a microsecond longer, the other shorter
    sparse = energy_curve([Sample(at, Decimal(100)) for at in times], Kind.POWER_W)
    flags = [q.flagged for q in quarters(sparse, t0, times[-1], max_gap_s=900.0)]
    assert flags == [False, True, True]


def test_quarters_outside_the_samples_are_extrapolated_and_flagged() -> None:
    t0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    samples = [Sample(t0 + i * timedelta(minutes=5), Decimal(400)) for i in range(4)]
    got = quarters(energy_curve(samples, Kind.POWER_W), t0 - QUARTER, t0 + 3 * QUARTER)
    assert [q.flagged for q in got] == [True, False, True, True]  # the 2nd ends at 10:15 = last
    assert all(q.energy_kwh.quantize(KWH_PLACES) == Decimal("0.1") for q in got)
    assert all(q.flagged for q in quarters([], t0, t0 + QUARTER))
    lone = energy_curve(samples[:1], Kind.POWER_W)
    assert [(q.energy_kwh, q.flagged) for q in quarters(lone, t0, t0 + QUARTER)] == [
        (Decimal(0), True)
    ]


# --- constant power -----------------------------------------------------------------------------


@FAST
@given(power_values, st.lists(st.integers(0, 6 * HOUR_US), min_size=2, max_size=20), anchors)
def test_constant_power_gives_power_times_a_quarter_hour(
    power: Decimal, offsets: list[int], anchor: datetime
) -> None:
    assume(len(set(offsets)) >= 2)
    samples = [Sample(anchor + o * MICRO, power) for o in reversed(offsets)]
    curve = energy_curve(samples, Kind.POWER_W)
    start = rules.floor_to_grid(anchor) - 4 * QUARTER
    end = rules.ceil_to_grid(anchor + max(offsets) * MICRO) + 4 * QUARTER
    expected = Fraction(power) * Fraction(1, 4) / 1000
    got = quarters(curve, start, end)
    scale = Fraction(abs(power)) * 24 / 1000  # |E| stays below a day's energy
    assert all(close(q.energy_kwh, expected, scale) for q in got)


# --- the market's reading -----------------------------------------------------------------------


@FAST
@given(sampled(), max_gaps, sm.datetimes, st.data())
def test_meter_reading_is_accepted_and_quantized_to_a_milliwatt_hour(
    case: tuple[Kind, list[Sample]], max_gap_s: float, created_at: datetime, data: st.DataObject
) -> None:
    kind, samples = case
    start, end = data.draw(windows_near(samples))
    points = quarters(energy_curve(samples, kind), start, end, max_gap_s=max_gap_s)
    reading = build_meter_reading(points, start, end, created_at=created_at)
    assert rules.check_meter_reading(reading) == []
    assert reading.reading_start == start
    assert reading.reading_end == end
    assert reading.created_at == created_at
    assert reading.resolution == 900
    assert reading.unit_measured == "kWh"
    assert [p.timestamp for p in reading.data_points] == [q.end for q in points]
    for point, q in zip(reading.data_points, points, strict=True):
        assert point.value == q.energy_kwh.quantize(Decimal("0.000001"))
        assert point.value.as_tuple().exponent == -6
        assert abs(point.value - q.energy_kwh) <= Decimal("0.0000005")


# --- bad windows --------------------------------------------------------------------------------

any_times = st.one_of(
    sm.grid_datetimes(datetime(2001, 1, 1, tzinfo=UTC), datetime(2099, 1, 1, tzinfo=UTC)),
    sm.datetimes,
)


@FAST
@given(any_times, any_times, sampled(max_span_us=HOUR_US))
def test_a_window_off_the_grid_or_empty_is_refused(
    start: datetime, end: datetime, case: tuple[Kind, list[Sample]]
) -> None:
    kind, samples = case
    curve = energy_curve(samples, kind)
    valid = rules.on_grid(start) and rules.on_grid(end) and start < end
    assume(not valid or end - start <= 4 * 24 * QUARTER)  # keep the valid ones short
    if valid:
        assert len(quarters(curve, start, end)) == (end - start) // QUARTER
    else:
        with pytest.raises(ValueError, match="grid"):
            quarters(curve, start, end)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (datetime(2026, 11, 23, 10, 0, tzinfo=UTC), datetime(2026, 11, 23, 10, 0, tzinfo=UTC)),
        (datetime(2026, 11, 23, 10, 15, tzinfo=UTC), datetime(2026, 11, 23, 10, 0, tzinfo=UTC)),
        (datetime(2026, 11, 23, 10, 1, tzinfo=UTC), datetime(2026, 11, 23, 10, 30, tzinfo=UTC)),
        (datetime(2026, 11, 23, 10, 0, tzinfo=UTC), datetime(2026, 11, 23, 10, 30, 1, tzinfo=UTC)),
        (
            datetime(2026, 11, 23, 10, 0, 0, 1, tzinfo=UTC),
            datetime(2026, 11, 23, 10, 30, tzinfo=UTC),
        ),
    ],
)
def test_bad_windows(start: datetime, end: datetime) -> None:
    curve = energy_curve([Sample(start, Decimal(1)), Sample(end, Decimal(2))], Kind.POWER_W)
    with pytest.raises(ValueError, match="15-minute grid"):
        quarters(curve, start, end)
