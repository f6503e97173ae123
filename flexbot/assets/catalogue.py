"""Assets with fixed limits, from a CSV file (`assets.catalogue`): for sites whose assets do not
speak the protocol, sold by what their owner states they can do.

Columns (a header row names them, in any order): `site`, `asset`, `reduce_w` (the reduction it
can hold in any window, W), and optionally `energy_wh` (the most reduction energy it has over the
model's horizon; empty: no limit). Problems are located by the file's line number and column,
`$[3].reduce_w: expected a number, got 'lots'`, every one reported at once.
"""

from __future__ import annotations

import csv
import io
import math

from flexbot.assets.model import Room
from flexbot.problems import Invalid, Problem

REQUIRED = ("site", "asset", "reduce_w")
COLUMNS = (*REQUIRED, "energy_wh")


def parse(text: str) -> list[tuple[str, Room]]:
    """The catalogue's assets, as (site, room); `Invalid` listing every problem."""
    try:
        return _parse(text)
    except csv.Error as exc:  # a field beyond the csv module's limit, a NUL byte
        raise Invalid.single((), f"not a readable CSV file: {exc}") from None


def _parse(text: str) -> list[tuple[str, Room]]:
    rows = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    header = [name.strip() for name in next(rows, [])]
    problems = [
        Problem((1, name), "column given twice")
        for name in dict.fromkeys(header)
        if header.count(name) > 1
    ]
    problems += [
        Problem((1, name), "required column is missing") for name in REQUIRED if name not in header
    ]
    problems += [
        Problem((1, name), f"unknown column; the columns are {', '.join(COLUMNS)}")
        for name in header
        if name not in COLUMNS
    ]
    if problems:
        raise Invalid(problems)
    out: list[tuple[str, Room]] = []
    seen: dict[str, int] = {}
    for line, fields in enumerate(rows, start=2):
        if not any(f.strip() for f in fields):
            continue
        row = dict(zip(header, (f.strip() for f in fields), strict=False))
        site, asset = row.get("site", ""), row.get("asset", "")
        before = len(problems)
        for name, value in (("site", site), ("asset", asset)):
            if not value or "/" in value:
                problems.append(Problem((line, name), "must be a name without '/'"))
        reduce_w = _number(row.get("reduce_w", ""), (line, "reduce_w"), problems)
        energy = row.get("energy_wh", "")
        energy_wh = _number(energy, (line, "energy_wh"), problems) if energy else None
        key = f"{site}/{asset}"
        if key in seen:
            problems.append(Problem((line, "asset"), f"{key} is already on line {seen[key]}"))
        seen[key] = line
        if len(problems) == before and reduce_w is not None:
            out.append((site, Room(key, reduce_w, energy_wh)))
    if problems:
        raise Invalid(problems)
    return out


def _number(text: str, loc: tuple[int, str], problems: list[Problem]) -> float | None:
    try:
        value = float(text)
    except ValueError:
        problems.append(Problem(loc, f"expected a number, got {text!r}"))
        return None
    if not math.isfinite(value) or value < 0:
        problems.append(Problem(loc, f"must be a finite number, at least 0, got {text!r}"))
        return None
    return value
