"""`MeterHub`: runs every configured meter source and keeps their readings in the store.

Readings are committed to SQLite as they arrive (a batch a transaction), so metering built after a
crash sees everything read before it. The hub remembers when each meter last delivered, for the
operator (`flexbot status`) and for the silence alarm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import trio

from flexbot import logs
from flexbot.clock import MarketClock
from flexbot.meters.csv_files import CsvMeter
from flexbot.meters.http_poll import HttpMeter
from flexbot.meters.source import (
    CsvSettings,
    HttpSettings,
    MeterSettings,
    MeterSource,
    MqttSettings,
    Reading,
    SyntheticSettings,
    store_time,
)
from flexbot.meters.synthetic import SyntheticMeter
from flexbot.store import AsyncStore

log = logs.get_logger("flexbot.meters")

# A reading beyond a terawatt (or a terawatt-hour register) is a broken device's garbage (a float
# register's 3.4e38): kept, it would poison every quarter and baseline built from it.
MAX_READING = Decimal("1e12")

Delivering = Callable[[str, datetime], Decimal]  # (location id, market time) → W sold and due


class MeterHub:
    def __init__(
        self,
        meters: Sequence[MeterSettings],
        store: AsyncStore,
        *,
        clock: MarketClock,
        base: Path,
        secrets: Mapping[str, str | None] | None = None,
        delivering: Delivering | None = None,
    ) -> None:
        self.meters = list(meters)
        self._store = store
        self._clock = clock
        self._base = base
        self._secrets = secrets or {}
        self._delivering = delivering or (lambda _location, _at: Decimal(0))
        self.last_reading: dict[str, datetime] = {}
        self.readings = 0

    def source_for(self, meter: MeterSettings) -> MeterSource:
        settings = meter.source
        if isinstance(settings, SyntheticSettings):
            # A site's responding synthetic meters share what it delivers: summed, the site
            # lowers its load by what was sold, not by that times its meters.
            share = Decimal(self._responders(meter.location_id))
            return SyntheticMeter(
                meter.id,
                settings,
                self._clock,
                delivering_w=lambda at: self._delivering(meter.location_id, at) / share,
            )
        if isinstance(settings, CsvSettings):
            return CsvMeter(meter.id, settings, self._base)
        if isinstance(settings, HttpSettings):
            return HttpMeter(meter.id, settings)
        assert isinstance(settings, MqttSettings)
        from flexbot.meters.mqtt import MqttMeter  # paho is loaded only when a meter needs it

        return MqttMeter(meter.id, settings, password=self._secrets.get(meter.id))

    def _responders(self, site: str) -> int:
        return (
            sum(
                1
                for m in self.meters
                if m.location_id == site
                and isinstance(m.source, SyntheticSettings)
                and m.source.respond
            )
            or 1
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for meter in self.meters:
                nursery.start_soon(self.source_for(meter).run, self.emit)
                log.info("meter.started", meter=meter.id, source=type(meter.source).__name__)
            task_status.started()

    async def emit(self, readings: Sequence[Reading]) -> None:
        sane = [r for r in readings if abs(r.value) <= MAX_READING]
        if len(sane) < len(readings):
            for absurd in (r for r in readings if abs(r.value) > MAX_READING):
                log.warning("meter.absurd_reading", meter=absurd.meter_id, value=str(absurd.value))
            readings = sane
        rows = [(r.meter_id, store_time(r.at), str(r.value)) for r in readings]
        new = await self._store.run(self._store.sync.add_readings, rows)
        self.readings += new
        for reading in readings:
            last = self.last_reading.get(reading.meter_id)
            if last is None or reading.at > last:
                self.last_reading[reading.meter_id] = reading.at
