"""The store's schema and its migrations: versioned (`PRAGMA user_version`), migrated forward on
open one step at a time, so that a store written by an older flexbot opens in a newer one; a store
from a *newer* flexbot is refused rather than misread."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from flexbot.store.faults import StoreError

# Each migration takes the schema from version i to i + 1. Never edit one that has shipped: add
# the next.
MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE orders (
        client_id        TEXT PRIMARY KEY,
        strategy         TEXT NOT NULL,
        strategy_version TEXT NOT NULL,
        fingerprint      TEXT NOT NULL,
        request          TEXT NOT NULL,      -- the OrderRequest as wire JSON
        state            TEXT NOT NULL,      -- see flexbot.engine.orders.IntentState
        order_id         TEXT UNIQUE,        -- the market's id, once known
        last_order       TEXT,               -- the market's latest Order as wire JSON
        reason           TEXT,               -- why it was rejected or lapsed
        dry_run          INTEGER NOT NULL DEFAULT 0,
        following        INTEGER NOT NULL DEFAULT 1,  -- 1 while news of it is still expected
        created_at       TEXT NOT NULL,      -- market time, ISO 8601 UTC
        updated_at       TEXT NOT NULL
    );
    CREATE INDEX orders_following ON orders (following) WHERE following = 1;
    CREATE TABLE flags (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        set_at TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE readings (
        meter_id TEXT NOT NULL,
        at       TEXT NOT NULL,           -- ISO 8601 UTC, microseconds: sorts as time
        value    TEXT NOT NULL,           -- a Decimal, in the meter's unit
        PRIMARY KEY (meter_id, at)
    ) WITHOUT ROWID;
    CREATE TABLE outbox (
        order_id         TEXT NOT NULL,
        measurement_type TEXT NOT NULL,   -- baseline | metering
        body             TEXT NOT NULL,   -- the exact JSON sent, every time (a resend is identical)
        state            TEXT NOT NULL,   -- pending | acked | failed | obsolete
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_at          REAL NOT NULL,   -- wall-clock seconds of the next attempt
        last_error       TEXT,
        enqueued_at      REAL NOT NULL,   -- wall-clock seconds
        done_at          REAL,
        PRIMARY KEY (order_id, measurement_type)
    );
    CREATE INDEX outbox_due ON outbox (next_at) WHERE state = 'pending';
    """,
    # Who sent the order: the daemon's strategies, or an operator by hand (`flexbot orders place`).
    # The daemon follows only its own; an operator's order is never claimed by an unknown intent.
    """
    ALTER TABLE orders ADD COLUMN origin TEXT NOT NULL DEFAULT 'daemon';
    DROP INDEX IF EXISTS orders_following;
    CREATE INDEX orders_following ON orders (following) WHERE following = 1 AND origin = 'daemon';
    CREATE INDEX orders_operator ON orders (fingerprint) WHERE origin = 'operator';
    """,
    # What a strategy keeps across restarts (`Strategy.save_state`), by the strategy's name.
    """
    CREATE TABLE strategy_state (
        name     TEXT PRIMARY KEY,     -- the strategy's name: its YAML file's stem
        state    TEXT NOT NULL,        -- JSON, canonical (keys sorted)
        saved_at TEXT NOT NULL         -- market time, ISO 8601 UTC
    );
    """,
    # A meter's quarter hours, rolled up from its raw readings once no late reading may still
    # change them (see flexbot.meters.retention); the raw readings are then let go.
    """
    CREATE TABLE quarter_energy (
        meter_id   TEXT NOT NULL,
        end_at     TEXT NOT NULL,     -- the quarter's end, as readings' `at` (sorts as time)
        energy_kwh TEXT NOT NULL,     -- a Decimal
        flagged    INTEGER NOT NULL,  -- 1: extrapolated, or across a long gap
        PRIMARY KEY (meter_id, end_at)
    ) WITHOUT ROWID;
    """,
    # What each asset last said (its `state` and `availability` messages, as received), so that
    # `flexbot status` sees the fleet without asking the daemon; written a batch a few seconds.
    """
    CREATE TABLE asset_state (
        site         TEXT NOT NULL,
        asset        TEXT NOT NULL,
        state        TEXT,           -- the last readable `state` message (JSON)
        availability TEXT,           -- the last readable `availability` message (JSON)
        saved_at     TEXT NOT NULL,  -- market time, ISO 8601 UTC
        PRIMARY KEY (site, asset)
    ) WITHOUT ROWID;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)  # of this flexbot (tests may patch MIGRATIONS)
DAEMON = "daemon"
OPERATOR = "operator"


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None:
            # SQLite rolls back by itself on some faults (a full disk, an I/O error): a second
            # ROLLBACK would fail and hide the fault.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            return
        try:
            self._db.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (busy, disk full) may leave the transaction open: never keep it.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise


def transaction(db: sqlite3.Connection) -> _Transaction:
    return _Transaction(db)


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Each missing step in its own transaction. The version is read again inside it: a command
    (`flexbot status`) and the daemon opening an old store at once must not both apply a step."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        raise StoreError(
            f"{path}: the store has schema version {version}, newer than this flexbot knows "
            f"({len(MIGRATIONS)}): upgrade flexbot, or point store.path at another file"
        )
    for target in range(version + 1, len(MIGRATIONS) + 1):
        with transaction(db):
            if int(db.execute("PRAGMA user_version").fetchone()[0]) >= target:
                continue  # applied meanwhile by another process
            for statement in _statements(MIGRATIONS[target - 1]):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {target}")


def _statements(script: str) -> Iterator[str]:
    """Split a migration script into statements (ours hold no `;` inside literals)."""
    for part in script.split(";"):
        lines = [line.split("--", 1)[0] for line in part.splitlines()]
        statement = "\n".join(lines).strip()
        if statement:
            yield statement
