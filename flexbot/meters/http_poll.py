"""The HTTP source: polls a JSON endpoint on an interval, with a timeout and backoff.

The answer is a list of `{"timestamp": ISO, "value": number[, "meter_id": id]}` or an object
`{"readings": [...]}`. A meter's own endpoint may leave `meter_id` out (entries of other meters are
skipped); a shared one (one endpoint answering for many meters) names the meter in every entry, an
entry naming none being a bad entry. A failed poll (network, non-2xx, bad JSON) is logged and
retried with capped, fully jittered backoff; entries that cannot be read are logged and skipped.
"""

from __future__ import annotations

import random
from typing import Any

import httpx
import trio

from flexbot import logs, wire
from flexbot.backoff import Backoff, Retrying
from flexbot.meters.source import Emit, HttpSettings, Reading, Route
from flexbot.problems import Invalid

log = logs.get_logger("flexbot.meters.http")


class HttpMeter:
    def __init__(
        self, route: Route, settings: HttpSettings, *, rng: random.Random | None = None
    ) -> None:
        self.route = route
        self.settings = settings
        self._retry = Retrying(Backoff(base_s=1.0, cap_s=60.0), rng or random.Random())

    def parse(self, body: Any) -> list[Reading]:
        entries = body.get("readings") if isinstance(body, dict) else body
        if not isinstance(entries, list):
            raise Invalid.single((), 'expected a list of readings, or {"readings": [...]}')
        out = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            named = entry.get("meter_id")
            try:
                meter = self.route.meter_for(None if named is None else str(named))
                if meter is None:
                    continue  # another meter's entry
                at = wire.parse_datetime(str(entry.get("timestamp")))
                value = wire.to_decimal(entry.get("value"))
            except (Invalid, ValueError, TypeError) as exc:
                log.warning("meter.bad_entry", **self.route.fields, index=index, reason=str(exc))
                continue
            out.append(Reading(meter, at, value))
        return out

    async def poll(self, http: httpx.AsyncClient) -> list[Reading]:
        response = await http.get(self.settings.url)
        response.raise_for_status()
        return self.parse(response.json())

    async def run(self, emit: Emit) -> None:
        timeout = httpx.Timeout(self.settings.timeout_s)
        async with httpx.AsyncClient(timeout=timeout) as http:
            while True:
                try:
                    readings = await self.poll(http)
                except (httpx.HTTPError, ValueError, Invalid) as exc:
                    delay = self._retry.next_delay()
                    log.warning(
                        "meter.poll_failed",
                        **self.route.fields,
                        reason=_reason(exc),
                        retry_in_s=round(delay, 2),
                    )
                    await trio.sleep(delay)
                    continue
                self._retry.reset()
                if readings:
                    await emit(readings)
                await trio.sleep(self.settings.interval_s)


def _reason(exc: Exception) -> str:
    """What went wrong, without the URL: it may carry credentials (user:password@, ?api_key=)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, httpx.HTTPError):
        return type(exc).__name__
    return str(exc)[:200]
