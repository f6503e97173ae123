"""What a pool of assets can deliver, window by window: the rooms of batteries, loads and
generators, energy shared across windows, an EMS's figures, and the property that matters: what
was committed within the free room can always be served."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexbot import model
from flexbot.assets.model import QUARTER, Room, horizon_from, plan, room_of, whole_watts
from flexbot.assets.protocol import AssetKind, AssetState, Availability, WindowOffer
from flexbot.engine.risk import Exposure, PoolRoom, RiskLimits, check
from flexbot.trading import Window

NOW = datetime(2026, 12, 6, 9, 58, tzinfo=UTC)
HORIZON = horizon_from(NOW, 8)
WINDOWS = Window.upcoming(NOW, 8)  # 10:00 … 12:00


def battery(**changes: object) -> AssetState:
    fields: dict[str, object] = {
        "ts": NOW,
        "kind": AssetKind.BATTERY,
        "power_w": 1200.0,
        "min_power_w": -5000.0,
        "max_power_w": 5000.0,
        "energy_wh": 6200.0,
        "min_energy_wh": 1000.0,
        "max_energy_wh": 10000.0,
        "efficiency": 0.92,
    }
    fields.update(changes)
    return AssetState(**fields)  # type: ignore[arg-type]


def load(**changes: object) -> AssetState:
    fields: dict[str, object] = {
        "ts": NOW,
        "kind": AssetKind.LOAD,
        "power_w": 3000.0,
        "min_power_w": 1000.0,
        "max_power_w": 3000.0,
    }
    fields.update(changes)
    return AssetState(**fields)  # type: ignore[arg-type]


def free(rooms: list[Room], committed: dict[Window, float] | None = None) -> list[float]:
    planned = plan(rooms, committed or {}, WINDOWS, now=NOW, horizon=HORIZON)
    return [round(planned[w].free_w, 3) for w in WINDOWS]


def test_a_battery_is_limited_by_its_power_range_then_by_its_energy() -> None:
    room = room_of("a/b", battery(), None, horizon=HORIZON)
    # From charging at 1200 W to discharging at 5000 W: 6200 W of reduction …
    assert room.power_w == 6200
    # … from (6200 - 1000) Wh stored, 92% of it reaching the grid.
    assert room.energy_wh == pytest.approx(4784)
    # Alone in any window: 6200 W for a quarter hour needs 1550 Wh: there is enough.
    assert free([room]) == [6200.0] * 8


def test_what_is_sold_for_one_window_is_energy_the_next_windows_no_longer_have() -> None:
    room = room_of("a/b", battery(), None, horizon=HORIZON)
    sold = {WINDOWS[0]: 6200.0, WINDOWS[1]: 6200.0, WINDOWS[2]: 6200.0}  # 4650 Wh
    left = free([room], sold)
    assert left[:3] == [0.0, 0.0, 0.0]
    # 134 Wh left: 536 W for a quarter hour, in any one of the windows after.
    assert left[3:] == [pytest.approx(536.0)] * 5


def test_a_battery_that_discharges_by_itself_has_less_and_an_ev_keeps_its_target() -> None:
    draining = room_of("a/b", battery(power_w=-1000.0), None, horizon=HORIZON)
    assert draining.power_w == 4000
    hours = (HORIZON.end - NOW).total_seconds() / 3600
    assert draining.energy_wh == pytest.approx((5200 - 1000 * hours / 0.92) * 0.92)
    ev = room_of("a/ev", battery(target_energy_wh=6000.0), None, horizon=HORIZON)
    assert ev.energy_wh == pytest.approx(200 * 0.92)


def test_a_load_offers_its_draw_above_its_minimum_for_as_long_as_it_can_hold_it() -> None:
    held = room_of("a/hp", load(max_reduction_s=1800.0), None, horizon=HORIZON)
    assert (held.power_w, held.energy_wh) == (2000, 1000)  # 2000 W for half an hour
    sold = {WINDOWS[0]: 2000.0, WINDOWS[1]: 2000.0}
    assert free([held], sold)[2:] == [0.0] * 6
    unlimited = room_of("a/hp", load(), None, horizon=HORIZON)
    assert free([unlimited], sold) == [0.0, 0.0] + [2000.0] * 6


def test_an_unavailable_asset_offers_nothing() -> None:
    assert free([room_of("a/b", battery(available=False), None, horizon=HORIZON)]) == [0.0] * 8


def test_an_ems_figure_overrides_the_model_for_its_windows_and_speaks_beyond_the_horizon() -> None:
    later = Window(HORIZON.end + timedelta(hours=1), HORIZON.end + timedelta(hours=1, minutes=15))
    offers = Availability(
        ts=NOW,
        windows=(
            WindowOffer(WINDOWS[0].start, WINDOWS[0].end, 300.0),
            WindowOffer(later.start, later.end, 4000.0),
        ),
    )
    room = room_of("a/b", battery(), offers, horizon=HORIZON)
    planned = plan([room], {}, [*WINDOWS, later], now=NOW, horizon=HORIZON)
    assert planned[WINDOWS[0]].free_w == 300
    assert planned[WINDOWS[1]].free_w == 6200
    assert planned[later].free_w == 4000
    beyond = Window(later.end, later.end + timedelta(minutes=15))
    assert plan([room], {}, [beyond], now=NOW, horizon=HORIZON)[beyond].free_w == 0


def test_a_window_under_way_counts_only_what_is_left_of_it() -> None:
    now = WINDOWS[0].start + timedelta(minutes=10)
    room = Room("a/b", power_w=4000.0, energy_wh=500.0)
    planned = plan([room], {}, [WINDOWS[0]], now=now, horizon=horizon_from(now, 8))
    assert planned[WINDOWS[0]].free_w == 4000  # 5 minutes at 4000 W: 333 Wh
    planned = plan(
        [room], {WINDOWS[0]: 4000.0}, [WINDOWS[1]], now=now, horizon=horizon_from(now, 8)
    )
    assert planned[WINDOWS[1]].free_w == pytest.approx((500 - 4000 / 12) * 4)


def test_what_no_asset_can_serve_any_more_is_a_shortfall() -> None:
    room = Room("a/b", power_w=1000.0)
    planned = plan([room], {WINDOWS[0]: 1500.0}, WINDOWS[:1], now=NOW, horizon=HORIZON)
    assert (planned[WINDOWS[0]].free_w, planned[WINDOWS[0]].shortfall_w) == (0, 500)


def test_an_hours_sell_is_four_quarters_commitment_and_an_hour_is_asked_as_one() -> None:
    room = Room("a/b", power_w=5000.0)  # no energy limit
    hour = Window(WINDOWS[0].start, WINDOWS[4].start)
    planned = plan([room], {hour: 5000.0}, [*WINDOWS[:5], hour], now=NOW, horizon=HORIZON)
    assert [planned[w].free_w for w in WINDOWS[:5]] == [0, 0, 0, 0, 5000]
    assert (planned[hour].committed_w, planned[hour].free_w) == (5000, 0)
    battery = Room("a/c", power_w=4000.0, energy_wh=1500.0)
    planned = plan([battery], {}, [hour, WINDOWS[0]], now=NOW, horizon=HORIZON)
    # An hour from 1500 Wh: 1500 W in each quarter together; one quarter alone: 4000 W.
    assert planned[hour].free_w == pytest.approx(1500)
    assert planned[WINDOWS[0]].free_w == 4000


def test_a_shortfall_in_one_window_is_not_charged_to_another() -> None:
    room = Room("a/b", power_w=5000.0)
    committed = {WINDOWS[0]: 7000.0, WINDOWS[1]: 3000.0}
    planned = plan([room], committed, WINDOWS[:3], now=NOW, horizon=HORIZON)
    assert [planned[w].shortfall_w for w in WINDOWS[:3]] == [2000, 0, 0]
    assert [planned[w].free_w for w in WINDOWS[:3]] == [0, 2000, 5000]
    shared = Room("a/c", power_w=5000.0, energy_wh=2000.0)  # 2000 Wh for both windows
    planned = plan([shared], committed, WINDOWS[:3], now=NOW, horizon=HORIZON)
    # 7000 W can never be served (5000 W at most); the 1250 + 750 Wh the rest takes uses it all.
    assert planned[WINDOWS[0]].shortfall_w == pytest.approx(2000)
    assert planned[WINDOWS[2]].free_w == pytest.approx(0)


def test_whole_watts_never_round_up() -> None:
    assert [whole_watts(v) for v in (0.999, 2.0, -3.0, 1999.9999999999)] == [0, 2, 0, 2000]


# Windows of one to four quarter hours (the market allows any length on the grid), some beyond
# the horizon; EMS figures for some.
SPANS = [
    Window(WINDOWS[0].start + i * QUARTER, WINDOWS[0].start + (i + n) * QUARTER)
    for i in range(10)
    for n in (1, 2, 4)
]
rooms_st = st.lists(
    st.builds(
        Room,
        key=st.text(min_size=1, max_size=4),
        power_w=st.floats(0, 10_000),
        energy_wh=st.none() | st.floats(0, 20_000),
        offered=st.dictionaries(st.sampled_from(SPANS), st.floats(0, 10_000), max_size=2),
    ),
    max_size=6,
)
orders_st = st.lists(st.tuples(st.integers(0, len(SPANS) - 1), st.floats(0, 1.5)), max_size=20)


@settings(max_examples=300, deadline=None)
@given(rooms=rooms_st, orders=orders_st)
def test_commitments_taken_within_the_free_room_can_always_be_served(
    rooms: list[Room], orders: list[tuple[int, float]]
) -> None:
    """Orders in any windows, each taking a share (up to 150%: some are refused) of what is free
    there when it comes: what was taken is always served in full, and the free room never grows
    with what is committed, nor goes below nothing."""
    committed: dict[Window, float] = {}
    quarter_windows = [Window(w.start, w.start + QUARTER) for w in SPANS]
    for index, share in orders:
        window = SPANS[index]
        before = plan(rooms, committed, [window, *quarter_windows], now=NOW, horizon=HORIZON)
        wanted = share * before[window].free_w
        if wanted > before[window].free_w:
            continue  # the availability check refuses it
        committed[window] = committed.get(window, 0.0) + wanted
        after = plan(rooms, committed, quarter_windows, now=NOW, horizon=HORIZON)
        for w in quarter_windows:
            assert after[w].shortfall_w <= 1e-6 * max(1.0, after[w].committed_w)
            assert after[w].free_w >= 0
            assert after[w].free_w <= before[w].free_w + 1e-6
            assert after[w].capacity_w == pytest.approx(before[w].capacity_w)


def sell(window: Window, power: float) -> model.OrderRequest:
    return model.OrderRequest(
        side=model.Side.SELL,
        power=Decimal(str(round(power, 3))),
        price=Decimal("0.2"),
        delivery_start=window.start,
        delivery_end=window.end,
        expiry_time=window.start - timedelta(minutes=5),
        location=model.Location(location_id=("a",), country_code="DE"),
    )


steps_st = st.lists(
    st.one_of(
        st.tuples(st.just("state"), rooms_st),
        st.tuples(st.just("sell"), st.integers(0, 7), st.floats(1, 12_000)),
        st.tuples(st.just("cancel"), st.integers(0, 7), st.floats(0, 1)),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(steps=steps_st, ratio=st.sampled_from([Decimal("0.5"), Decimal(1)]))
def test_the_availability_limit_never_lets_commitments_exceed_what_the_assets_could_deliver(
    steps: list[tuple[object, ...]], ratio: Decimal
) -> None:
    """Under any sequence of states, sells and cancels (a part of a window's commitment let go),
    every sell the limit lets through is, when it is placed, served in full with everything
    committed before it."""
    rooms: list[Room] = []
    committed: dict[Window, float] = {}
    limits = RiskLimits(max_commit_ratio=ratio)
    for step in steps:
        if step[0] == "state":
            rooms = step[1]  # type: ignore[assignment]
        elif step[0] == "cancel":
            window = WINDOWS[step[1]]  # type: ignore[index]
            committed[window] = committed.get(window, 0.0) * (1 - step[2])  # type: ignore[operator]
        else:
            window, request = WINDOWS[step[1]], sell(WINDOWS[step[1]], step[2])  # type: ignore[index, arg-type]
            room = plan(rooms, committed, [window], now=NOW, horizon=HORIZON)[window]
            servable = room.committed_w - room.shortfall_w + room.free_w
            pool = PoolRoom(
                Decimal(str(committed.get(window, 0.0))), Decimal(whole_watts(servable))
            )
            if check(request, limits, Exposure(pool=pool)) is not None:
                continue
            committed[window] = committed.get(window, 0.0) + float(request.power)
            after = plan(rooms, committed, WINDOWS, now=NOW, horizon=HORIZON)
            assert after[window].shortfall_w <= 1e-6 * max(1.0, committed[window]), (
                "an accepted sell cannot be served"
            )
