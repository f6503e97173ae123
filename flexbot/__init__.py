"""flexbot: a trading daemon for DER aggregators on the GLocalFlex flexibility marketplace."""

__version__ = "0.1.0"
