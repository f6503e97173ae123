"""The meter catalogue (`flexbot.meters.catalogue`) and the config's shared meter sources: a CSV
file of thousands of meters loads fast, every problem in it is located by line and column and
reported at once, and a catalogue or a meter without a source is refused unless a shared source
could feed it.

Property tests: any valid catalogue reads back as the meters written; any one corrupted cell is a
problem located at its row and column, never a traceback; any text at all gives problems, never a
traceback."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from flexbot import config
from flexbot.meters.builder import Kind
from flexbot.meters.catalogue import COLUMNS, parse_catalogue
from flexbot.meters.source import (
    BaselineMethod,
    BaselineSettings,
    CsvSettings,
    MeterSettings,
    MqttSettings,
)

GOOD: dict[str, Any] = {
    "market": {
        "url": "https://test.glocalflexmarket.com",
        "username": "aggregator",
        "password": "${FLEXBOT_TEST_PW}",
    },
}
ENV = {"FLEXBOT_TEST_PW": "s3cret"}
SHARED = [{"type": "csv", "path": "exports"}]
SYNTHETIC = {"type": "synthetic"}


def write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "flexbot.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def catalogue(tmp_path: Path, text: str, name: str = "meters.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, env: dict[str, str] = ENV) -> list[str]:
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, env)
    return caught.value.lines


# --- the config ---------------------------------------------------------------------------------


def test_the_catalogues_meters_follow_the_yaml_ones(tmp_path: Path) -> None:
    folder = tmp_path / "lists"
    folder.mkdir()
    catalogue(
        folder,
        "\ufeffsite,meter_id,kind,baseline,x,y,days,forecast_meter\n"  # a spreadsheet's BOM
        "site-1,m1,,,,,,\n"
        "site-1, m2 ,energy_kwh,high_x_of_y,3,5,,\n"
        "\n"  # blank: skipped
        "site-2,m3,power_w,provided,,,,m1\n",
    )
    document = {
        **GOOD,
        "meters": [{"id": "main", "location_id": "site-0", "source": SYNTHETIC}],
        "meter_sources": SHARED,
        "meter_catalogue": "${LISTS}/meters.csv",
    }
    loaded = config.load(write(tmp_path, document), {**ENV, "LISTS": str(folder)})
    assert [m.id for m in loaded.meters] == ["main", "m1", "m2", "m3"]
    assert loaded.meters[1] == MeterSettings(id="m1", location_id="site-1")
    assert loaded.meters[2] == MeterSettings(
        id="m2",
        location_id="site-1",
        kind=Kind.ENERGY_KWH,
        baseline=BaselineSettings(method="high_x_of_y", x=3, y=5),
    )
    assert loaded.meters[3].baseline == BaselineSettings(method="provided", meter="m1")
    assert all(m.source is None for m in loaded.meters[1:])
    assert loaded.meter_sources == (CsvSettings(path="exports"),)


def test_catalogue_problems_are_located_by_line_and_all_reported_at_once(tmp_path: Path) -> None:
    file = catalogue(
        tmp_path,
        "meter_id,site,kind,baseline,days,x,y,forecast_meter,colour\n"  # line 1
        "m1,site-1,,,,,,,\n"  # 2: good
        "m2,site-1,kw,,,,,,\n"  # 3
        ",site-1,,median,0,,,,\n"  # 4
        '"m3\n",,,,abc,,,,\n'  # 5-6: a quoted cell spans two lines
        "m1,site-2,,high_x_of_y,,6,5,,\n"  # 7
        "main,site-3,,provided,,,,,\n"  # 8
        "m4,site-3,,,,,,m1,\n"  # 9
        "m5,site-3,,,,,,,,extra\n",  # 10
    )
    document = {
        **GOOD,
        "meters": [{"id": "main", "location_id": "site-0", "source": SYNTHETIC}],
        "meter_sources": SHARED,
        "meter_catalogue": "meters.csv",
    }
    lines = problems_of(write(tmp_path, document))
    assert lines == [
        f"{file}: $.colour: unknown column (expected some of: {', '.join(COLUMNS)})",
        f"{file}: $[3].kind: must be one of power_w, energy_kwh, got 'kw'",
        f"{file}: $[4].meter_id: must not be empty",
        f"{file}: $[4].baseline: must be one of mean_of_days, high_x_of_y, provided, got 'median'",
        f"{file}: $[4].days: must be at least 1, got 0",
        f"{file}: $[5].site: must not be empty",
        f"{file}: $[5].days: expected an integer, got 'abc'",
        f"{file}: $[7].meter_id: another meter is already named 'm1' (line 2)",
        f"{file}: $[7].x: must be between 1 and y",
        f"{file}: $[8].meter_id: another meter is already named 'main' ($.meters[0] of "
        "flexbot.yaml)",
        f"{file}: $[8].forecast_meter: required for the baseline provided",
        f"{file}: $[9].forecast_meter: only for the baseline provided",
        f"{file}: $[10]: 10 cells, but the header has 9 columns",
    ]


def test_a_missing_column_is_one_problem_however_many_rows(tmp_path: Path) -> None:
    file = catalogue(tmp_path, "meter_id,kind\n" + "".join(f"m{i},power_w\n" for i in range(500)))
    document = {**GOOD, "meter_sources": SHARED, "meter_catalogue": "meters.csv"}
    assert problems_of(write(tmp_path, document)) == [f"{file}: $.site: required column is missing"]


def test_meters_without_a_source_need_a_shared_one(tmp_path: Path) -> None:
    catalogue(tmp_path, "meter_id,site\nm1,site-1\n")
    document = {
        **GOOD,
        "meters": [{"id": "y1", "location_id": "site-0"}],
        "meter_catalogue": "meters.csv",
    }
    path = write(tmp_path, document)
    assert problems_of(path) == [
        f"{path}: $.meters[0].source: required: no `meter_sources` could feed this meter",
        f"{path}: $.meter_catalogue: its meters have no source: add the `meter_sources` that feed "
        "them",
    ]
    loaded = config.load(write(tmp_path, {**document, "meter_sources": SHARED}), ENV)
    assert [(m.id, m.source) for m in loaded.meters] == [("y1", None), ("m1", None)]


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("absent.csv", "$.meter_catalogue: cannot read "),
        ("${NOPE}/meters.csv", "$.meter_catalogue: environment variable NOPE is not set"),
        (".", "$.meter_catalogue: cannot read "),  # a directory
    ],
)
def test_a_catalogue_that_cannot_be_read_is_located_in_the_config(
    tmp_path: Path, setting: str, expected: str
) -> None:
    path = write(tmp_path, {**GOOD, "meter_sources": SHARED, "meter_catalogue": setting})
    [line] = problems_of(path)
    assert line.startswith(f"{path}: {expected}"), line


def test_a_catalogue_that_is_not_text_is_located_in_itself(tmp_path: Path) -> None:
    file = tmp_path / "meters.csv"
    file.write_bytes(b"meter_id,site\nm\xff,site\n")
    path = write(tmp_path, {**GOOD, "meter_sources": SHARED, "meter_catalogue": "meters.csv"})
    assert problems_of(path) == [f"{file}: $[2]: not UTF-8 text (at byte offset 15)"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            SYNTHETIC,
            "$.meter_sources[0].type: must be one of csv, http, mqtt (a synthetic load is ",
        ),
        ({"type": "gps"}, "$.meter_sources[0].type: must be one of csv, http, mqtt, got 'gps'"),
        ({"type": "csv"}, "$.meter_sources[0].path: required field is missing"),
        (
            {"type": "mqtt", "topic": "flexbot/v1/+/+/meter", "meter_level": 5},
            "$.meter_sources[0].meter_level: the topic 'flexbot/v1/+/+/meter' has 5 levels: must "
            "be between -5 and 4, got 5",
        ),
        (
            {"type": "mqtt", "topic": "t/+", "password": "${NOPE}", "username": "u"},
            "$.meter_sources[0].password: environment variable NOPE is not set",
        ),
    ],
)
def test_a_bad_shared_source_is_located(
    tmp_path: Path, source: dict[str, Any], expected: str
) -> None:
    path = write(tmp_path, {**GOOD, "meter_sources": [source]})
    lines = problems_of(path)
    assert any(line.startswith(f"{path}: {expected}") for line in lines), lines


def test_a_shared_mqtt_sources_password_is_resolved_by_its_index(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("broker-pw\n", encoding="utf-8")
    sources = [
        *SHARED,
        {"type": "mqtt", "topic": "flexbot/v1/#", "meter_level": -2, "password": "file:pw"},
    ]
    loaded = config.load(write(tmp_path, {**GOOD, "meter_sources": sources}), ENV)
    assert loaded.meter_source_secrets == {1: "broker-pw"}
    mqtt = loaded.meter_sources[1]
    assert isinstance(mqtt, MqttSettings)
    assert mqtt.meter_level == -2  # with `#`, any level may exist: not bounded
    assert "broker-pw" not in repr(loaded.config)


def test_ten_thousand_meters_load_well_under_a_second(tmp_path: Path) -> None:
    rows = "".join(
        f"meter-{i},site-{i // 10},{('power_w', 'energy_kwh')[i % 2]},"
        f"{('mean_of_days', 'high_x_of_y', '')[i % 3]},{i % 7 + 1},,,\n"
        for i in range(10_000)
    )
    catalogue(tmp_path, "meter_id,site,kind,baseline,days,x,y,forecast_meter\n" + rows)
    path = write(tmp_path, {**GOOD, "meter_sources": SHARED, "meter_catalogue": "meters.csv"})
    started = time.perf_counter()
    loaded = config.load(path, ENV)
    took = time.perf_counter() - started
    assert len(loaded.meters) == 10_000
    assert took < 1.0, f"{took:.3f} s"


# --- properties of the parser ---------------------------------------------------------------------

SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
METHODS: list[BaselineMethod] = ["mean_of_days", "high_x_of_y", "provided"]
# A cell as a spreadsheet could hold it: any text without blanks at its ends (cells are stripped).
# No lone CR: Python's csv writer leaves it unquoted with a "\n" terminator, which no reader reads.
names = (
    st.text(st.characters(exclude_categories=SURROGATES, exclude_characters="\r"), max_size=12)
    .map(lambda s: s.strip())
    .filter(lambda s: bool(s) and s == s.strip())
)
one_line_names = names.filter(lambda s: "\n" not in s)
counts = st.integers(1, 60)


@st.composite
def baselines(draw: st.DrawFn, meter_ids: st.SearchStrategy[str]) -> BaselineSettings:
    method = draw(st.sampled_from(METHODS))
    if method == "high_x_of_y":
        y = draw(counts)
        x = draw(st.integers(1, y))
        return BaselineSettings(method=method, x=x, y=y, days=draw(counts))
    if method == "provided":
        return BaselineSettings(method=method, meter=draw(meter_ids))
    return BaselineSettings(method=method, days=draw(counts))


@st.composite
def meter_lists(draw: st.DrawFn, cells: st.SearchStrategy[str] = names) -> list[MeterSettings]:
    ids = draw(st.lists(cells, min_size=0, max_size=12, unique=True))
    return [
        MeterSettings(
            id=meter_id,
            location_id=draw(cells),
            kind=draw(st.sampled_from(list(Kind))),
            baseline=draw(baselines(cells)),
        )
        for meter_id in ids
    ]


def cells_of(meter: MeterSettings, explicit: bool) -> dict[str, str]:
    """A meter's row; a default is written as an empty cell unless `explicit`."""
    b, default = meter.baseline, BaselineSettings()

    def cell(value: object, fallback: object) -> str:
        return str(value) if explicit or value != fallback else ""

    return {
        "meter_id": meter.id,
        "site": meter.location_id,
        "kind": cell(meter.kind.value, Kind.POWER_W.value),
        "baseline": cell(b.method, default.method),
        "days": cell(b.days, default.days),
        "x": cell(b.x, default.x),
        "y": cell(b.y, default.y),
        "forecast_meter": b.meter or "",
    }


def csv_text(columns: list[str], rows: list[dict[str, str]], terminator: str = "\n") -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=terminator)
    writer.writerow(columns)
    writer.writerows([row.get(c, "") for c in columns] for row in rows)
    return out.getvalue()


@settings(max_examples=150, deadline=None)
@given(
    meter_lists(),
    st.booleans(),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_any_valid_catalogue_reads_back_as_written(
    meters: list[MeterSettings], explicit: bool, terminator: str, bom: bool, rng: Any
) -> None:
    rows = [cells_of(m, explicit) for m in meters]
    # Every column that holds something, plus any of the others, in any order.
    needed = {c for row in rows for c, value in row.items() if value} | {"meter_id", "site"}
    columns = [c for c in COLUMNS if c in needed or rng.random() < 0.5]
    rng.shuffle(columns)
    text = ("\ufeff" if bom else "") + csv_text(columns, rows, terminator)
    assert parse_catalogue(text) == (meters, [])


BAD_CELLS: dict[str, st.SearchStrategy[str]] = {
    "kind": names.filter(lambda s: s not in {k.value for k in Kind}),
    "baseline": names.filter(lambda s: s not in {"mean_of_days", "high_x_of_y", "provided"}),
    "days": st.one_of(st.integers(-5, 0).map(str), names.filter(lambda s: not s.isascii())),
    "x": st.one_of(st.integers(-5, 0).map(str), st.sampled_from(["1.5", "one", "0x3", "1e3"])),
    "y": st.one_of(st.integers(-5, 0).map(str), st.sampled_from(["2.0", "two", "+", "- 3"])),
}


@settings(max_examples=200, deadline=None)
@given(meter_lists(one_line_names).filter(lambda ms: len(ms) >= 2), st.data())
def test_any_corrupted_cell_is_a_problem_at_its_row_and_column(
    meters: list[MeterSettings], data: st.DataObject
) -> None:
    rows = [cells_of(m, explicit=True) for m in meters]
    at = data.draw(st.integers(1, len(rows) - 1), label="row")  # not the first: see meter_id
    row = rows[at]
    column = data.draw(st.sampled_from([*BAD_CELLS, "meter_id", "site", "forecast_meter"]))
    if column in BAD_CELLS:
        row[column] = data.draw(BAD_CELLS[column], label="bad cell")
    elif column == "meter_id":  # empty, or an earlier row's
        row[column] = data.draw(st.sampled_from(["", rows[0]["meter_id"]]), label="bad id")
    elif column == "site":
        row[column] = ""
    else:  # a forecast where none is wanted, or none where one is
        provided = row["baseline"] == "provided"
        row[column] = "" if provided else data.draw(one_line_names, label="forecast")
    line = at + 2  # the header is line 1
    found, problems = parse_catalogue(csv_text(list(COLUMNS), rows))
    assert problems, "a corrupted cell must be a problem"
    assert all(p.loc[:2] == (line, column) for p in problems), (line, column, problems)
    assert [m.id for m in found] == [m.id for i, m in enumerate(meters) if i != at]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["", "meter_id,site\n", "meter_id,site,kind,days\n", "site,meter_id,x,y\n"]),
    st.text(max_size=300),
)
def test_any_text_gives_problems_never_a_traceback(header: str, text: str) -> None:
    meters, problems = parse_catalogue(header + text)
    assert all(isinstance(m, MeterSettings) for m in meters)
    assert all(str(p).startswith("$") for p in problems)
