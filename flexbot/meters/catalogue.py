"""The meter catalogue: thousands of meters in one CSV file, not thousands of YAML entries.

`meter_catalogue: meters.csv` in the config names it (relative to the config file). A header row
names the columns, in any order:

| column | | default |
|---|---|---|
| `meter_id` | required: the meter's id, as its readings name it | |
| `site` | required: the market location it measures | |
| `kind` | `power_w` (W samples) or `energy_kwh` (a cumulative register) | `power_w` |
| `baseline` | `mean_of_days`, `high_x_of_y` or `provided` | `mean_of_days` |
| `days`, `x`, `y` | the method's integers, at least 1 (x at most y) | 10, 4, 5 |
| `forecast_meter` | `provided` only (required then): the meter whose readings are the forecast | |

An empty cell is the default; cells are stripped of blanks. Every row becomes a `MeterSettings`
without a source: its readings come from a shared source (`meter_sources:`), which names the meter
in its data. An unknown column is an error (a typo must not silently fall back to a default).

Problems are located as `$[LINE].column`, where LINE is the row's **line number** in the file (the
header is line 1; a row whose quoted cell spans lines is named by its first line), so an editor
goes straight to it: `config/meters.csv: $[12].kind: must be one of power_w, energy_kwh, got
'kw'`. A problem of the header is at the column (`$.site: required column is missing`), one
problem however many rows. Every problem is reported at once, none ends in a traceback.

Fast on purpose (a config load reads it, `check-config` too): the csv module and plain checks, no
cattrs, and one `BaselineSettings` shared by the rows that agree on it; 10,000 rows take about
50 ms.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import get_args

from flexbot.meters.builder import Kind
from flexbot.meters.source import BaselineMethod, BaselineSettings, MeterSettings
from flexbot.problems import Invalid, Problem

REQUIRED = ("meter_id", "site")
COLUMNS = (*REQUIRED, "kind", "baseline", "days", "x", "y", "forecast_meter")
_KINDS = {kind.value: kind for kind in Kind}
_METHODS: tuple[BaselineMethod, ...] = get_args(BaselineMethod)
_DEFAULT = BaselineSettings()
_INTEGER = re.compile(r"-?[0-9]+")


def read_catalogue(
    path: Path, taken: Mapping[str, str] | None = None
) -> tuple[list[MeterSettings], list[Problem]]:
    """The meters of the catalogue at `path`, and the problems of its content (located in it);
    `taken`: the ids of meters configured elsewhere, each with where (a row naming one is a
    duplicate). A file that cannot be read at all raises `Invalid` (to be located where the
    config names it)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Invalid.single((), f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL byte in the path
        raise Invalid.single((), f"not a usable file name: {exc}") from None
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's export may begin with a byte-order mark
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return [], [Problem((line,), f"not UTF-8 text (at byte offset {exc.start})")]
    return parse_catalogue(text, taken)


def parse_catalogue(
    text: str, taken: Mapping[str, str] | None = None
) -> tuple[list[MeterSettings], list[Problem]]:
    """The meters of a catalogue's text, and every problem found, located by line (see above)."""
    rows = _rows(text.removeprefix("\ufeff"))
    try:
        _, header = next(rows)
    except StopIteration:
        return [], [Problem((), f"empty: expected a header row naming {', '.join(REQUIRED)}")]
    except _BadCsv as exc:
        return [], [exc.problem]
    reader = _Reader([name.strip() for name in header], taken or {})
    if reader.unreadable:  # the rows cannot be read by their columns: one problem, not one a row
        return [], reader.problems
    try:
        for line, cells in rows:
            reader.row(line, cells)
    except _BadCsv as exc:
        reader.problems.append(exc.problem)
    return reader.meters, reader.problems


class _Reader:
    """The rows of one catalogue, read by its header's columns."""

    def __init__(self, columns: list[str], taken: Mapping[str, str]) -> None:
        self.columns = columns
        self.problems = [
            Problem((name,), "the header names this column twice")
            for name in sorted({c for c in columns if columns.count(c) > 1})
        ]
        self.problems += [
            Problem((name,), "required column is missing", "missing")
            for name in REQUIRED
            if name not in columns
        ]
        self.unreadable = bool(self.problems)
        expected = ", ".join(COLUMNS)
        self.problems += [
            Problem((c,), f"unknown column (expected some of: {expected})")
            for c in columns
            if c not in COLUMNS
        ]
        self.index = {name: at for at, name in enumerate(columns)}
        self.meters: list[MeterSettings] = []
        self.seen = dict(taken)  # meter id → where it is named
        # Rows mostly agree on their baseline: one object for them all, checked once.
        self.baselines: dict[tuple[str, ...], BaselineSettings] = {}

    def row(self, line: int, cells: list[str]) -> None:
        if len(cells) > len(self.columns):
            why = f"{len(cells)} cells, but the header has {len(self.columns)} columns"
            self.problems.append(Problem((line,), why))
            return
        cells = [cell.strip() for cell in cells]
        cells += [""] * (len(self.columns) - len(cells))  # a short row: the rest are empty
        get = {name: cells[at] for name, at in self.index.items()}.get
        found: list[Problem] = []
        meter_id, site = get("meter_id", ""), get("site", "")
        for name, value in (("meter_id", meter_id), ("site", site)):
            if not value:
                found.append(Problem((line, name), "must not be empty"))
        if meter_id in self.seen:
            already = f"another meter is already named {meter_id!r} ({self.seen[meter_id]})"
            found.append(Problem((line, "meter_id"), already))
        elif meter_id:
            self.seen[meter_id] = f"line {line}"
        kind = _KINDS.get(get("kind") or Kind.POWER_W.value)
        if kind is None:
            allowed = ", ".join(_KINDS)
            found.append(Problem((line, "kind"), f"must be one of {allowed}, got {get('kind')!r}"))
        key = tuple(get(name, "") for name in ("baseline", "days", "x", "y", "forecast_meter"))
        baseline = self.baselines.get(key)
        if baseline is None:
            baseline, wrong = _baseline(*key)
            found += [p.under((line,)) for p in wrong]
            if baseline is not None:
                self.baselines[key] = baseline
        if found:
            self.problems += found
            return
        assert kind is not None
        assert baseline is not None
        self.meters.append(
            MeterSettings(id=meter_id, location_id=site, kind=kind, baseline=baseline)
        )


def _baseline(
    method: str, days: str, x: str, y: str, forecast: str
) -> tuple[BaselineSettings | None, list[Problem]]:
    problems: list[Problem] = []
    method = method or _DEFAULT.method
    if method not in _METHODS:
        allowed = ", ".join(_METHODS)
        problems.append(Problem(("baseline",), f"must be one of {allowed}, got {method!r}"))
    numbers: dict[str, int] = {}
    for name, text in (("days", days), ("x", x), ("y", y)):
        if not text:
            numbers[name] = getattr(_DEFAULT, name)
        elif not _INTEGER.fullmatch(text):
            problems.append(Problem((name,), f"expected an integer, got {text[:40]!r}"))
        elif len(text) > 18:
            problems.append(Problem((name,), f"must be at most 18 digits, got {len(text)}"))
        elif int(text) < 1:
            problems.append(Problem((name,), f"must be at least 1, got {int(text)}"))
        else:
            numbers[name] = int(text)
    if method == "high_x_of_y" and numbers.get("x", 0) > numbers.get("y", 1 << 62):
        problems.append(Problem(("x",), "must be between 1 and y"))
    if method == "provided" and not forecast:
        problems.append(Problem(("forecast_meter",), "required for the baseline provided"))
    if method in _METHODS and method != "provided" and forecast:
        problems.append(Problem(("forecast_meter",), "only for the baseline provided"))
    if problems:
        return None, problems
    settings = BaselineSettings(
        method=method,  # type: ignore[arg-type]  # one of _METHODS, checked above
        meter=forecast or None,
        **numbers,
    )
    return settings, []


class _BadCsv(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def _rows(text: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, cells) of every row that is not blank; `_BadCsv` where the csv module gives
    up (then nothing after it can be trusted)."""
    reader = csv.reader(io.StringIO(text))
    line = 0  # the last line read
    while True:
        start = line + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _BadCsv(Problem((start,), f"not valid CSV: {exc}")) from None
        line = reader.line_num
        if any(cell.strip() for cell in cells):
            yield start, cells
