"""The `assets` section: where the assets speak (an MQTT broker), which ones are listened to,
assets with fixed limits (a catalogue), and how far the model looks ahead."""

from __future__ import annotations

import attrs
from attrs import frozen

from flexbot.validators import at_least, between, not_empty, seconds


@frozen
class AssetBroker:
    """The MQTT broker the assets publish to (`state`, `availability`) and listen on (`cmd`)."""

    host: str = "127.0.0.1"
    port: int = attrs.field(default=1883, validator=at_least(1))
    username: str | None = None
    password: str | None = None  # a reference: ${ENV_VAR} or file:PATH
    keepalive_s: int = attrs.field(default=30, validator=at_least(5))
    prefix: str = attrs.field(default="flexbot/v1", validator=not_empty)  # topics' first levels


@frozen
class AssetSettings:
    mqtt: AssetBroker | None = (
        None  # None: no asset speaks MQTT (a catalogue, or an in-process fleet)
    )
    # A CSV of assets with fixed limits (see flexbot.assets.catalogue), relative to the config.
    catalogue: str | None = None
    # `site/asset` patterns (shell-style: `site-a/*`) of the assets listened to; None: every one.
    allow: tuple[str, ...] | None = None
    # A state older than this is unknown: its asset offers nothing until it speaks again.
    staleness_s: float = attrs.field(default=120.0, validator=seconds())
    # Quarter hours ahead that an asset's state speaks for (beyond: an EMS's availability only).
    # At most 12: the windows sharing a battery's energy are weighed together, each set of them.
    horizon_windows: int = attrs.field(default=8, validator=between(1, 12))
