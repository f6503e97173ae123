"""The asset half: what the sites' assets say (`protocol`), the fleet of them (`fleet`), what they
can deliver (`model`), and how flexbot hears them (`link`). Import the names below from here."""

from flexbot.assets.catalogue import parse as parse_catalogue
from flexbot.assets.fleet import Asset, Fleet
from flexbot.assets.model import Room, WindowRoom, plan, quarters, whole_watts
from flexbot.assets.protocol import AssetKind, AssetState, Availability, WindowOffer
from flexbot.assets.settings import AssetBroker, AssetSettings

__all__ = [
    "Asset",
    "AssetBroker",
    "AssetKind",
    "AssetSettings",
    "AssetState",
    "Availability",
    "Fleet",
    "Room",
    "WindowOffer",
    "WindowRoom",
    "parse_catalogue",
    "plan",
    "quarters",
    "whole_watts",
]
