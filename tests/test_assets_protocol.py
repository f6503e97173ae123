"""The asset protocol's messages in (`state`, `availability`) and the fleet that keeps them:
located errors, tolerance of what a newer device adds, discovery, allow-list, staleness."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs as captured_events

from flexbot import config
from flexbot.assets import AssetSettings, Fleet, parse_catalogue
from flexbot.assets.link import LocalBus, topics
from flexbot.assets.model import Room
from flexbot.assets.protocol import (
    AssetKind,
    parse_availability,
    parse_state,
    parse_topic,
    topic_of,
)
from flexbot.engine.orders import OrderTracker
from flexbot.metrics import portfolio_metrics
from flexbot.parts import Parts
from flexbot.problems import Invalid

NOW = datetime(2026, 12, 6, 10, 0, 3, tzinfo=UTC)
SPEC_STATE = {
    "ts": "2026-12-06T10:00:03Z",
    "kind": "battery",
    "power_w": 1200,
    "min_power_w": -5000,
    "max_power_w": 5000,
    "energy_wh": 6200,
    "min_energy_wh": 1000,
    "max_energy_wh": 10000,
    "efficiency": 0.92,
    "available": True,
}


def body(**changes: Any) -> bytes:
    document = {**SPEC_STATE, **changes}
    return orjson.dumps({k: v for k, v in document.items() if v is not ...})


def problems(payload: bytes, parse: Any = parse_state) -> list[str]:
    with pytest.raises(Invalid) as caught:
        parse(payload)
    return [str(p) for p in caught.value.problems]


def test_the_spec_example_reads_and_unknown_fields_are_ignored() -> None:
    state = parse_state(body(firmware="2.1", soc_pct=62))
    assert state.kind is AssetKind.BATTERY
    assert (state.power_w, state.min_power_w, state.energy_wh, state.efficiency) == (
        1200,
        -5000,
        6200,
        0.92,
    )
    assert state.ts == NOW


def test_every_problem_of_a_state_is_located_at_once() -> None:
    found = problems(body(power_w="lots", kind="flywheel", efficiency=1.5, ts="yesterday"))
    assert found == [
        "$.ts: 'yesterday' is not an ISO-8601 timestamp with a zone (e.g. 2026-11-23T11:30:00Z)",
        "$.kind: must be one of battery, load, generator, got the string 'flywheel'",
        "$.power_w: expected a number, got the string 'lots'",
        "$.efficiency: must be above 0 and at most 1",
    ]
    assert problems(body(energy_wh=...)) == ["$.energy_wh: required"]
    assert problems(body(min_power_w=10, max_power_w=0)) == [
        "$.min_power_w: must not be above max_power_w"
    ]
    assert problems(b"[1, 2]") == ["$: expected a JSON object, got a list"]
    assert problems(b"{")[0].startswith("$: not JSON")


def test_a_load_without_limits_offers_no_room() -> None:
    state = parse_state(
        orjson.dumps({"ts": "2026-12-06T10:00:03Z", "kind": "load", "power_w": 900})
    )
    assert (state.min_power_w, state.max_power_w) == (900, 900)


def test_availability_reads_its_windows_and_locates_bad_ones() -> None:
    good = {
        "ts": "2026-12-06T09:58:00Z",
        "windows": [
            {
                "start": "2026-12-06T11:00:00Z",
                "end": "2026-12-06T11:15:00Z",
                "reduce_w": 3000,
                "increase_w": 1500,
            }
        ],
    }
    offers = parse_availability(orjson.dumps(good))
    assert [(o.reduce_w, o.increase_w) for o in offers.windows] == [(3000, 1500)]
    bad = {**good, "windows": [{**good["windows"][0], "end": "2026-12-06T10:00:00Z"}, 7]}  # type: ignore[dict-item]
    assert problems(orjson.dumps(bad), parse_availability) == [
        "$.windows[0].end: must be after start",
        "$.windows[1]: expected an object",
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    changes=st.dictionaries(
        st.sampled_from([*SPEC_STATE, "target_at", "max_reduction_s", "x"]), json_values
    )
)
def test_any_state_message_is_read_or_refused_with_located_problems(
    changes: dict[str, Any],
) -> None:
    payload = json.dumps({**SPEC_STATE, **changes}, allow_nan=True).encode()
    try:
        parse_state(payload)
    except Invalid as exc:
        found = exc.problems
    else:
        return
    assert found
    assert all(str(p).startswith("$") for p in found)


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_are_read_or_refused(payload: bytes) -> None:
    for parse in (parse_state, parse_availability):
        try:
            parse(payload)
        except Invalid as exc:
            found = exc.problems
        else:
            continue
        assert found


names = st.text(st.characters(blacklist_characters="/+#\0", codec="utf-8"), min_size=1, max_size=8)


@given(prefix=st.sampled_from(["flexbot/v1", "acme/flex/v1/", "x"]), site=names, asset=names)
def test_topics_round_trip(prefix: str, site: str, asset: str) -> None:
    where = parse_topic(topic_of(prefix, site, asset, "state"), prefix)
    assert where is not None
    assert (where.site, where.asset, where.message) == (site, asset, "state")
    assert parse_topic(f"{prefix.rstrip('/')}/{site}/state", prefix) is None
    assert parse_topic(f"other/{site}/{asset}/state", prefix) is None


def fleet(**changes: Any) -> Fleet:
    return Fleet(AssetSettings(**changes))


def test_assets_are_discovered_from_their_first_state_and_removed_by_an_empty_one() -> None:
    known = fleet()
    with captured_events() as events:
        known.receive("flexbot/v1/site-a/bat-1/state", body())
        known.receive("flexbot/v1/site-a/bat-1/state", body(power_w=0))
        known.receive("flexbot/v1/site-a/bat-1/cmd", b"{}")  # not for the fleet
        known.receive("elsewhere/site-a/bat-1/state", body())
    assert [a.key for a in known.assets()] == ["site-a/bat-1"]
    assert known.assets()[0].state is not None
    assert known.assets()[0].state.power_w == 0
    assert [e["event"] for e in events] == ["asset.discovered"]
    known.receive("flexbot/v1/site-a/bat-1/state", b"")
    assert known.assets() == []


def test_a_bad_message_is_logged_with_its_problem_and_keeps_the_last_good_state() -> None:
    known = fleet()
    known.receive("flexbot/v1/site-a/bat-1/state", body())
    with captured_events() as events:
        known.receive("flexbot/v1/site-a/bat-1/state", body(power_w=None, kind="ufo"))
    (event,) = events
    assert event["event"] == "asset.bad_message"
    assert event["asset"] == "site-a/bat-1"
    assert "$.kind" in event["reason"]
    assert "$.power_w: required" in event["reason"]
    assert known.assets()[0].state is not None
    assert known.assets()[0].state.power_w == 1200
    assert known.bad_messages == 1


def test_the_allow_list_keeps_other_assets_out_and_says_so_once() -> None:
    known = fleet(allow=("site-a/*",))
    with captured_events() as events:
        for _ in range(3):
            known.receive("flexbot/v1/site-b/bat-9/state", body())
        known.receive("flexbot/v1/site-a/bat-1/state", body())
    assert [a.key for a in known.assets()] == ["site-a/bat-1"]
    assert [e["event"] for e in events] == ["asset.not_allowed", "asset.discovered"]


def test_a_stale_state_offers_nothing_however_recently_it_arrived() -> None:
    known = fleet(staleness_s=120)
    known.receive("flexbot/v1/site-a/bat-1/state", body())
    known.receive("flexbot/v1/site-a/hp/state", body(kind="load", ts="2026-12-06T09:50:00Z"))
    rooms = known.rooms(["site-a"], NOW)
    assert [r.key for r in rooms] == ["site-a/bat-1"]
    assert known.rooms(["site-a"], NOW + timedelta(seconds=121)) == []
    # A clock far ahead is as wrong as one far behind.
    assert known.rooms(["site-a"], NOW - timedelta(seconds=121)) == []
    with captured_events() as events:
        known.check_staleness(NOW)
        known.check_staleness(NOW)
        known.receive("flexbot/v1/site-a/hp/state", body(kind="load"))
        known.check_staleness(NOW)
    assert [(e["event"], e["asset"]) for e in events] == [
        ("asset.stale", "site-a/hp"),
        ("asset.fresh", "site-a/hp"),
    ]


def test_fixed_assets_from_the_catalogue_never_go_stale() -> None:
    fixed = parse_catalogue(
        "site,asset,reduce_w,energy_wh\nsite-c,chiller,1500,\nsite-c,pump,500,250\n"
    )
    assert fixed == [
        ("site-c", Room("site-c/chiller", 1500.0, None)),
        ("site-c", Room("site-c/pump", 500.0, 250.0)),
    ]
    known = Fleet(AssetSettings(), fixed)
    assert len(known.rooms(["site-c"], NOW + timedelta(days=30))) == 2


def test_catalogue_problems_are_located_by_line_and_column_all_at_once() -> None:
    with pytest.raises(Invalid) as caught:
        parse_catalogue("site,asset,reduce_w,colour\n")
    assert [str(p) for p in caught.value.problems] == [
        "$[1].colour: unknown column; the columns are site, asset, reduce_w, energy_wh"
    ]
    with pytest.raises(Invalid) as caught:
        parse_catalogue("site,asset,reduce_w\na,b,lots\na/x,c,1\na,b,-4\n")
    assert [str(p) for p in caught.value.problems] == [
        "$[2].reduce_w: expected a number, got 'lots'",
        "$[3].site: must be a name without '/'",
        "$[4].reduce_w: must be a finite number, at least 0, got '-4'",
        "$[4].asset: a/b is already on line 2",
    ]


def test_the_in_process_bus_delivers_retained_states_to_a_late_subscriber() -> None:
    bus = LocalBus()
    bus.publish("flexbot/v1/s/b/state", body(), retain=True)
    bus.publish("flexbot/v1/s/gone/state", body(), retain=True)
    bus.publish("flexbot/v1/s/gone/state", b"", retain=True)
    known = fleet()
    bus.subscribe(topics(known), known.receive)
    assert [a.key for a in known.assets()] == ["s/b"]
    bus.publish("flexbot/v1/s/c/state", body(kind="load"))
    assert [a.key for a in known.assets()] == ["s/b", "s/c"]


def test_the_metrics_give_each_sites_assets_and_its_room_in_the_next_windows() -> None:
    known = fleet()
    known.receive("flexbot/v1/site-a/bat-1/state", body())
    known.receive("flexbot/v1/site-a/old/state", body(ts="2026-12-06T09:00:00Z"))
    meter = SimpleNamespace(id="m-1", location_id="site-a")
    parts = cast(
        Parts,
        SimpleNamespace(
            fleet=known,
            tracker=OrderTracker(None),
            clock=SimpleNamespace(now=lambda: NOW),
            hub=SimpleNamespace(meters=[meter], last_reading={"m-1": NOW - timedelta(seconds=30)}),
        ),
    )
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in portfolio_metrics(parts)
        for s in family.samples
    }
    assert samples[("flexbot_assets", (("site", "site-a"), ("state", "fresh")))] == 1
    assert samples[("flexbot_assets", (("site", "site-a"), ("state", "stale")))] == 1
    window = (("site", "site-a"), ("window", "0"))
    assert samples[("flexbot_site_deliverable_watts", window)] == 6200
    assert samples[("flexbot_site_free_watts", window)] == 6200
    assert samples[("flexbot_site_committed_watts", window)] == 0
    assert samples[("flexbot_site_meter_age_seconds", (("site", "site-a"),))] == 30


def test_the_config_reads_the_assets_section_and_locates_the_catalogues_problems(
    tmp_path: Path,
) -> None:
    (tmp_path / "flexbot.yaml").write_text(
        "market: {url: 'https://market.example', username: u, password: '${PW}'}\n"
        "assets:\n"
        "  mqtt: {host: broker.local, password: '${MQTT_PW}'}\n"
        "  catalogue: assets.csv\n"
        "  horizon_windows: 13\n"
    )
    (tmp_path / "assets.csv").write_text("site,asset,reduce_w\nsite-1,chiller,lots\n")
    with pytest.raises(config.ConfigError) as caught:
        config.load(tmp_path / "flexbot.yaml", {"PW": "x"})
    assert [line.replace(str(tmp_path), "") for line in caught.value.lines] == [
        "/flexbot.yaml: $.assets.horizon_windows: must be between 1 and 12, got 13",
    ]
    (tmp_path / "flexbot.yaml").write_text(
        (tmp_path / "flexbot.yaml").read_text().replace("13", "8")
    )
    with pytest.raises(config.ConfigError) as caught:
        config.load(tmp_path / "flexbot.yaml", {"PW": "x"})
    assert [line.replace(str(tmp_path), "") for line in caught.value.lines] == [
        "/flexbot.yaml: $.assets.mqtt.password: environment variable MQTT_PW is not set",
        "/assets.csv: $[2].reduce_w: expected a number, got 'lots'",
    ]
    (tmp_path / "assets.csv").write_text("site,asset,reduce_w\nsite-1,chiller,1500\n")
    loaded = config.load(tmp_path / "flexbot.yaml", {"PW": "x", "MQTT_PW": "secret"})
    assert loaded.asset_password == "secret"
    assert loaded.fixed_assets == (("site-1", Room("site-1/chiller", 1500.0)),)
    (tmp_path / "assets.csv").unlink()
    with pytest.raises(config.ConfigError) as caught:
        config.load(tmp_path / "flexbot.yaml", {"PW": "x", "MQTT_PW": "secret"})
    (line,) = caught.value.lines
    assert line.startswith(f"{tmp_path}/flexbot.yaml: $.assets.catalogue: cannot read ")


def test_an_ems_takes_its_availability_back_with_an_empty_retained_message() -> None:
    known = fleet()
    known.receive("flexbot/v1/s/b/state", body())
    offer = {
        "ts": "2026-12-06T10:00:00Z",
        "windows": [
            {"start": "2026-12-06T10:15:00Z", "end": "2026-12-06T10:30:00Z", "reduce_w": 300}
        ],
    }
    known.receive("flexbot/v1/s/b/availability", orjson.dumps(offer))
    assert known.assets()[0].availability is not None
    known.take_changes()
    known.receive("flexbot/v1/s/b/availability", b"")
    assert known.assets()[0].availability is None
    assert known.take_changes() == [("s", "b", body().decode(), None)]


def test_a_catalogue_that_is_no_csv_or_names_a_column_twice_is_refused_located() -> None:
    with pytest.raises(Invalid) as caught:
        parse_catalogue("site,asset,reduce_w,reduce_w\na,b,lots,5\n")
    assert [str(p) for p in caught.value.problems] == ["$[1].reduce_w: column given twice"]
    with pytest.raises(Invalid) as caught:
        parse_catalogue('site,asset,reduce_w\na,b,"' + "x" * 200_000 + '"\n')
    assert str(caught.value.problems[0]).startswith("$: not a readable CSV file")


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200) | st.lists(st.text(max_size=12), max_size=12).map(",".join))
def test_any_catalogue_text_is_read_or_refused_with_located_problems(text: str) -> None:
    for candidate in (text, "site,asset,reduce_w,energy_wh\n" + text):
        try:
            parse_catalogue(candidate)
        except Invalid as exc:
            found = exc.problems
        else:
            continue
        assert found
