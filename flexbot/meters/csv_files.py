"""The CSV source: a file, or a directory of `*.csv` files, that another system appends to.

Columns (a header row names them): `timestamp` (ISO 8601 with a zone), `value`, and `meter_id`.
A meter's own source (`Route.own`) may leave `meter_id` out, and skips the rows of other meters; a
shared source (`Route.of_source`, e.g. a directory of exports for thousands of meters) gives each
row to the meter it names, and a row naming none is a bad row (a file with no `meter_id` column at
all is logged once, at its header, and its rows skipped).

New rows are picked up as they appear: each file is read from where the last poll stopped, only up
to its last complete line (a row being written is read next time); a file that shrank was
replaced and is read again from the start (readings already held are kept once: the store keys
them by meter and time). A bad row is logged with its file and line and skipped; it never stops
the source.

A poll (listing, stat, open, read, parse) is file I/O, which may be slow (a network share): each
runs whole in one worker thread, off the event loop, abandoned if the source is cancelled
meanwhile (nothing runs the source after that, so the abandoned poll touches nothing in use).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import trio

from flexbot import logs, wire
from flexbot.meters.source import CsvSettings, Emit, Reading, Route
from flexbot.problems import Invalid

log = logs.get_logger("flexbot.meters.csv")


class CsvMeter:
    def __init__(self, route: Route, settings: CsvSettings, base: Path) -> None:
        self.route = route
        self.settings = settings
        path = Path(settings.path)
        self.path = path if path.is_absolute() else base / path
        self._offsets: dict[Path, int] = {}
        self._headers: dict[Path, list[str]] = {}
        self._lines: dict[Path, int] = {}

    def files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(self.path.glob("*.csv"))
        return [self.path] if self.path.exists() else []

    def poll(self) -> list[Reading]:
        """Readings from the rows appended since the last poll (blocking: see `run`)."""
        out: list[Reading] = []
        for file in self.files():
            out += self._read_new(file)
        return out

    def _read_new(self, file: Path) -> list[Reading]:
        try:
            size = file.stat().st_size
            offset = self._offsets.get(file, 0)
            if size < offset:  # replaced or truncated: start over
                offset = 0
                self._headers.pop(file, None)
                self._lines[file] = 0
            with file.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read(size - offset)
        except OSError as exc:
            log.warning("meter.read_failed", **self.route.fields, path=str(file), reason=str(exc))
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits
        self._offsets[file] = offset + len(complete)
        rows: list[Reading] = []
        # utf-8-sig at the start of a file: spreadsheet exports begin with a byte-order mark.
        encoding = "utf-8-sig" if offset == 0 else "utf-8"
        for line in complete.decode(encoding, "replace").splitlines():
            self._lines[file] = self._lines.get(file, 0) + 1
            if not line.strip():
                continue
            fields = next(csv.reader(io.StringIO(line)))
            if file not in self._headers:
                self._headers[file] = header = [f.strip() for f in fields]
                if self.route.shared and "meter_id" not in header:
                    log.warning(
                        "meter.bad_row",
                        **self.route.fields,
                        path=str(file),
                        line=self._lines[file],
                        reason="no meter_id column: a shared source's rows must name their meter",
                    )
                continue
            if self.route.shared and "meter_id" not in self._headers[file]:
                continue  # said once, at the header
            reading = self._row(file, dict(zip(self._headers[file], fields, strict=False)))
            if reading is not None:
                rows.append(reading)
        return rows

    def _row(self, file: Path, row: dict[str, str]) -> Reading | None:
        named = row.get("meter_id")
        try:
            meter = self.route.meter_for(None if named is None else named.strip())
            if meter is None:
                return None  # another meter's row
            at = wire.parse_datetime(row.get("timestamp", "").strip())
            value = wire.to_decimal(float(row.get("value", "").strip()))
        except (Invalid, ValueError, TypeError) as exc:
            log.warning(
                "meter.bad_row",
                **self.route.fields,
                path=str(file),
                line=self._lines.get(file, 0),
                reason=str(exc)[:200],
            )
            return None
        return Reading(meter, at, value)

    async def run(self, emit: Emit) -> None:
        while True:
            readings = await trio.to_thread.run_sync(self.poll, abandon_on_cancel=True)
            if readings:
                await emit(readings)
            await trio.sleep(self.settings.poll_s)
