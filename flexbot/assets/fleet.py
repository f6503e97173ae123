"""`Fleet`: every asset flexbot knows, by site, with what it last said.

Assets are discovered: the first readable `state` of a `<site>/<asset>` (retained on the broker,
so a restart hears every asset at once) adds it; no per-asset configuration is needed. An
allow-list, when configured, limits which are listened to. An empty retained `state` (how MQTT
deletes a retained message) removes the asset; an empty `availability` takes an EMS's figures
back. Assets with fixed limits come from the catalogue
and never go stale.

An asset's state is judged by its own `ts`, not by when it arrived: a retained state from
yesterday arrives at once and is still yesterday's. A state older than the staleness (or from
further ahead than it: a device's clock gone wrong) is unknown: the asset offers nothing (an EMS's
`availability` figures aside, which speak for their windows as long as the state is fresh).
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

import attrs

from flexbot import logs
from flexbot.assets.model import Room, horizon_from, room_of
from flexbot.assets.protocol import (
    AssetState,
    Availability,
    parse_availability,
    parse_state,
    parse_topic,
)
from flexbot.assets.settings import AssetSettings
from flexbot.problems import Invalid
from flexbot.trading import Window

log = logs.get_logger("flexbot.assets")

PREFIX = "flexbot/v1"


@attrs.define
class Asset:
    site: str
    name: str
    state: AssetState | None = None
    availability: Availability | None = None
    fixed: Room | None = None  # from the catalogue: its limits never change, never stale
    messages: int = 0
    said: dict[str, bytes] = attrs.field(factory=dict)  # the last readable message of each kind

    @property
    def key(self) -> str:
        return f"{self.site}/{self.name}"


class Fleet:
    def __init__(self, settings: AssetSettings, fixed: Iterable[tuple[str, Room]] = ()) -> None:
        self.settings = settings
        self.prefix = settings.mqtt.prefix if settings.mqtt is not None else PREFIX
        self.by_site: defaultdict[str, dict[str, Asset]] = defaultdict(dict)
        self.version = 0  # changes whenever what an asset said changes
        self.bad_messages = 0
        self._refused: set[str] = set()  # keys outside the allow-list, logged once each
        self._stale: set[str] = set()  # keys known stale at the last `check_staleness`
        self._changed: set[tuple[str, str]] = set()  # (site, asset) said something new
        for site, room in fixed:
            name = room.key.split("/", 1)[-1]
            self.by_site[site][name] = Asset(site, name, fixed=room)

    # --- what the assets say ------------------------------------------------------------------

    def receive(self, topic: str, payload: bytes) -> None:
        """One message from the assets' broker (or the in-process fleet)."""
        where = parse_topic(topic, self.prefix)
        if where is None or where.message not in ("state", "availability"):
            return  # commands and acks on the same prefix, or another's topics
        key = f"{where.site}/{where.asset}"
        if not self.allowed(key):
            if key not in self._refused:
                self._refused.add(key)
                log.warning("asset.not_allowed", asset=key, topic=topic)
            return
        known = self.by_site.get(where.site, {}).get(where.asset)
        if not payload:  # how MQTT deletes a retained message
            if known is None or known.fixed is not None:
                return
            if where.message == "state":
                del self.by_site[where.site][where.asset]
                log.info("asset.removed", asset=key)
            elif known.availability is not None:
                known.availability = None  # the EMS takes its figures back
                known.said.pop("availability", None)
                log.info("asset.availability_withdrawn", asset=key)
            else:
                return
            self.version += 1
            self._changed.add((where.site, where.asset))
            return
        try:
            if where.message == "state":
                state = parse_state(payload)
            else:
                offered = parse_availability(payload)
        except Invalid as exc:
            self.bad_messages += 1
            log.warning(
                "asset.bad_message",
                asset=key,
                topic=topic,
                reason=str(exc)[:300],
                payload=payload[:200].decode("utf-8", "replace"),
            )
            return
        if known is None:
            known = self.by_site[where.site][where.asset] = Asset(where.site, where.asset)
        known.messages += 1
        if where.message == "state":
            if known.state is None:
                log.info("asset.discovered", asset=key, kind=str(state.kind))
            known.state = state
        else:
            known.availability = offered
        known.said[where.message] = payload
        self._changed.add((where.site, where.asset))
        self.version += 1

    def changes_unsaved(self, rows: Sequence[tuple[str, str, str | None, str | None]]) -> None:
        """`take_changes` rows the store did not take: they go with the next save."""
        self._changed.update((site, name) for site, name, _, _ in rows)

    def restore(self, site: str, name: str, state: str | None, availability: str | None) -> None:
        """An asset as the store kept it (`flexbot status`): quietly, unreadable parts left out."""
        asset = self.by_site[site].setdefault(name, Asset(site, name))
        for text, parse, field in (
            (state, parse_state, "state"),
            (availability, parse_availability, "availability"),
        ):
            if text is not None:
                try:
                    setattr(asset, field, parse(text.encode()))
                except Invalid:
                    continue

    def take_changes(self) -> list[tuple[str, str, str | None, str | None]]:
        """(site, asset, state, availability) of each asset that said something new since the
        last call (both None: it is gone), for the store."""
        rows = []
        for site, name in sorted(self._changed):
            asset = self.by_site.get(site, {}).get(name)
            said = {} if asset is None else asset.said
            rows.append((site, name, _text(said.get("state")), _text(said.get("availability"))))
        self._changed.clear()
        return rows

    def allowed(self, key: str) -> bool:
        allow = self.settings.allow
        return allow is None or any(fnmatch.fnmatchcase(key, pattern) for pattern in allow)

    # --- what they can do -----------------------------------------------------------------------

    def fresh(self, asset: Asset, now: datetime) -> bool:
        if asset.fixed is not None:
            return True
        if asset.state is None:
            return False
        age = abs((now - asset.state.ts).total_seconds())
        return age <= self.settings.staleness_s

    def assets(self, sites: Iterable[str] | None = None) -> list[Asset]:
        names = self.by_site if sites is None else dict.fromkeys(sites)
        return [a for site in names for a in self.by_site.get(site, {}).values()]

    def horizon(self, now: datetime) -> Window:
        return horizon_from(now, self.settings.horizon_windows)

    def rooms(self, sites: Iterable[str], now: datetime) -> list[Room]:
        """The room of every asset of the sites (a stale one's is nothing)."""
        horizon = self.horizon(now)
        out = []
        for asset in self.assets(sites):
            if asset.fixed is not None:
                out.append(asset.fixed)
            elif asset.state is not None and self.fresh(asset, now):
                out.append(room_of(asset.key, asset.state, asset.availability, horizon=horizon))
        return out

    def check_staleness(self, now: datetime) -> None:
        """Log each asset that went stale, or came back, since the last check."""
        assets = self.assets()
        known = {a.key for a in assets}
        stale = {a.key for a in assets if a.fixed is None and not self.fresh(a, now)}
        for key in sorted(stale - self._stale):
            log.warning("asset.stale", asset=key, staleness_s=self.settings.staleness_s)
        for key in sorted((self._stale - stale) & known):  # back, not removed
            log.info("asset.fresh", asset=key)
        if stale != self._stale:
            self.version += 1
        self._stale = stale


def _text(payload: bytes | None) -> str | None:
    return None if payload is None else payload.decode("utf-8", "replace")
