"""`MeterHub`: runs every meter source and keeps their readings in the store.

One task per source, not per meter: one for each meter with a source of its own
(`meters[].source`), one for each shared source (`meter_sources:`, whose readings name their
meters), so 10,000 meters fed by one MQTT wildcard subscription or one CSV directory are one task.

A reading is kept only for a configured meter. One naming a meter id that no meter has (a shared
source hears more than is configured) is dropped, never stored, and counted (`unknown_readings`);
each such id is logged once (`meter.unknown`, with the source), for the first `UNKNOWN_LOGGED`
ids (then they are only counted: garbage ids must not grow memory or the log without bound). A
reading beyond `MAX_READING` is dropped and logged (`meter.absurd_reading`).

Readings are committed to SQLite in batches by one writer task: `emit` checks a source's batch,
turns it into rows and returns; the writer commits whatever gathered meanwhile in one transaction
(one fsync for many readings, not one each), at most every `COMMIT_EVERY_S`, so under load the
batches grow and the store keeps up, and a trickle costs a commit a quarter second, not one a
reading. A source more than `MAX_PENDING` rows ahead of the writer waits (memory stays
bounded). Rows not yet committed when the hub is cancelled are written before it ends (for at
most `FLUSH_S`).
Outside `run` (tests, tools) `emit` commits at once. The hub remembers when each meter last
delivered, for the operator (`flexbot status`) and for the silence alarm.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from functools import partial
from pathlib import Path

import trio

from flexbot import logs
from flexbot.clock import MarketClock
from flexbot.meters.csv_files import CsvMeter
from flexbot.meters.http_poll import HttpMeter
from flexbot.meters.source import (
    SOURCE_KINDS,
    CsvSettings,
    HttpSettings,
    MeterSettings,
    MeterSource,
    MqttSettings,
    Reading,
    Route,
    SharedSourceSettings,
    SourceSettings,
    SyntheticSettings,
    store_time,
)
from flexbot.meters.synthetic import SyntheticMeter
from flexbot.store import AsyncStore

log = logs.get_logger("flexbot.meters")

# A reading beyond a terawatt (or a terawatt-hour register) is a broken device's garbage (a float
# register's 3.4e38): kept, it would poison every quarter and baseline built from it.
MAX_READING = Decimal("1e12")
MAX_PENDING = 50_000  # rows a source may be ahead of the writer before it waits
FLUSH_S = 2.0  # at the end, how long the rows not yet committed may take to write
# The writer commits at most this often: a commit costs a thread hop and an fsync (0.4 ms of CPU),
# so 10,000 meters reading once a minute, committed one reading at a time, took a third of the
# daemon's CPU (bench/portfolio.py). A reading waits at most this long more to be stored.
COMMIT_EVERY_S = 0.25
UNKNOWN_LOGGED = 10_000  # unknown meter ids logged (once each) and remembered; then only counted
_ID_CHARS = 200  # of an unknown meter id, what is logged and remembered

Delivering = Callable[[str, datetime], Decimal]  # (location id, market time) → W sold and due
Row = tuple[str, str, str]  # (meter id, store time, value): the store's readings row


def shared_source_name(index: int) -> str:
    """How a shared source is named in its logs: as the config locates it."""
    return f"meter_sources[{index}]"


class MeterHub:
    def __init__(
        self,
        meters: Sequence[MeterSettings],
        store: AsyncStore,
        *,
        clock: MarketClock,
        base: Path,
        sources: Sequence[SharedSourceSettings] = (),
        secrets: Mapping[str, str | None] | None = None,
        source_secrets: Mapping[int, str | None] | None = None,
        delivering: Delivering | None = None,
    ) -> None:
        """`secrets`: MQTT passwords of meters' own sources, by meter id; `source_secrets`: of
        the shared `sources`, by their index."""
        self.meters = list(meters)
        self.sources = list(sources)
        self._known = frozenset(m.id for m in self.meters)
        self._store = store
        self._clock = clock
        self._base = base
        self._secrets = secrets or {}
        self._source_secrets = source_secrets or {}
        self._delivering = delivering or (lambda _location, _at: Decimal(0))
        # A site's responding synthetic meters share what it delivers: summed, the site lowers
        # its load by what was sold, not by that times its meters.
        self._responders = Counter(
            m.location_id
            for m in self.meters
            if isinstance(m.source, SyntheticSettings) and m.source.respond
        )
        self.last_reading: dict[str, datetime] = {}
        self.readings = 0  # new readings stored
        self.unknown_readings = 0  # readings dropped: no meter of that id
        self.unknown_meters: set[str] = set()  # the ids logged (at most UNKNOWN_LOGGED)
        self._rows: list[Row] = []  # waiting for the writer
        self._wake = trio.lowlevel.ParkingLot()  # the writer waits here for rows
        self._room = trio.lowlevel.ParkingLot()  # sources wait here while MAX_PENDING are waiting
        self._writing = False  # the writer runs: `emit` leaves rows to it

    def source_for(self, meter: MeterSettings) -> MeterSource:
        """The task of a meter's own source (it has one: `meter.source` is not None)."""
        settings = meter.source
        assert settings is not None, f"meter {meter.id} is fed by a shared source"
        if isinstance(settings, SyntheticSettings):
            share = Decimal(self._responders[meter.location_id] or 1)
            return SyntheticMeter(
                meter.id,
                settings,
                self._clock,
                delivering_w=lambda at: self._delivering(meter.location_id, at) / share,
            )
        return self._reader(Route.own(meter.id), settings, self._secrets.get(meter.id))

    def shared_source(self, index: int) -> MeterSource:
        """The task of `sources[index]`, whose readings name their meters."""
        route = Route.of_source(shared_source_name(index))
        return self._reader(route, self.sources[index], self._source_secrets.get(index))

    def _reader(self, route: Route, settings: SourceSettings, password: str | None) -> MeterSource:
        if isinstance(settings, CsvSettings):
            return CsvMeter(route, settings, self._base)
        if isinstance(settings, HttpSettings):
            return HttpMeter(route, settings)
        assert isinstance(settings, MqttSettings)
        from flexbot.meters.mqtt import MqttMeter  # paho is loaded only when a meter needs it

        return MqttMeter(route, settings, password=password)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._writing = True
            nursery.start_soon(self._write_rows)
            for meter in self.meters:
                if meter.source is not None:
                    source = self.source_for(meter)
                    nursery.start_soon(source.run, partial(self.emit, source=meter.id))
                    log.info("meter.started", meter=meter.id, source=type(meter.source).__name__)
            for index, settings in enumerate(self.sources):
                name = shared_source_name(index)
                nursery.start_soon(self.shared_source(index).run, partial(self.emit, source=name))
                log.info("meter.source_started", source=name, type=_kind(settings))
            task_status.started()

    async def emit(self, readings: Sequence[Reading], source: str | None = None) -> None:
        """Keep `readings` (of the source named `source`, for the logs): those of configured
        meters, within bounds."""
        rows = self._rows_of(readings, source)
        if not rows:
            return
        if not self._writing:
            await self._write(rows)
            return
        self._rows += rows
        self._wake.unpark_all()
        while len(self._rows) > MAX_PENDING:
            await self._room.park()

    def _rows_of(self, readings: Sequence[Reading], source: str | None) -> list[Row]:
        rows: list[Row] = []
        known, last = self._known, self.last_reading
        for reading in readings:
            meter = reading.meter_id
            if meter not in known:
                self._unknown(meter, source)
                continue
            if abs(reading.value) > MAX_READING:
                log.warning("meter.absurd_reading", meter=meter, value=str(reading.value))
                continue
            rows.append((meter, store_time(reading.at), str(reading.value)))
            seen = last.get(meter)
            if seen is None or reading.at > seen:
                last[meter] = reading.at
        return rows

    def _unknown(self, meter: str, source: str | None) -> None:
        self.unknown_readings += 1
        meter = meter[:_ID_CHARS]
        if meter in self.unknown_meters or len(self.unknown_meters) >= UNKNOWN_LOGGED:
            return
        self.unknown_meters.add(meter)
        log.warning(
            "meter.unknown",
            meter=meter,
            source=source,
            **(
                {"note": f"{UNKNOWN_LOGGED} unknown ids logged: further ones are only counted"}
                if len(self.unknown_meters) == UNKNOWN_LOGGED
                else {}
            ),
        )

    async def _write(self, rows: list[Row]) -> None:
        self.readings += await self._store.run(self._store.sync.add_readings, rows)

    async def _write_rows(self) -> None:
        """The writer: commits the rows gathered since its last commit, in one transaction."""
        rows: list[Row] = []
        try:
            while True:
                while not self._rows:
                    await self._wake.park()
                rows, self._rows = self._rows, []
                self._room.unpark_all()
                await self._write(rows)
                rows = []
                await trio.sleep(COMMIT_EVERY_S)  # what comes meanwhile goes in the next one
        except trio.Cancelled:
            rows, self._rows = rows + self._rows, []
            if rows:
                with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_S) as scope:
                    try:
                        await self._write(rows)
                    except Exception as exc:  # the store failed: the daemon halts on it anyway
                        log.warning("meter.unsaved", readings=len(rows), reason=str(exc)[:200])
                if scope.cancelled_caught:
                    log.warning("meter.unsaved", readings=len(rows), reason="timed out")
            raise
        finally:
            self._writing = False


def _kind(settings: SourceSettings) -> str:
    return next(kind for kind, cls in SOURCE_KINDS.items() if isinstance(settings, cls))
