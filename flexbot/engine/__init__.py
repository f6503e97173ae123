"""The engine: strategies fed with market events, their orders through risk, the journal and the
tracker (see `engine.py` for the map of this package)."""
