"""SQLite state that must survive a crash: the order journal, the engine's latches, meter
readings and the verification outbox; and the lock that keeps one daemon per store.

One file, WAL mode, `synchronous=FULL`: a committed row is on disk before the call returns, so an
order journalled here *before* it is sent can never be forgotten by a crash, a SIGKILL or a power
cut. The methods are synchronous and short; async callers run them through `AsyncStore`, which
keeps the event loop free while SQLite waits for the disk and serializes access to the one
connection.

Faults of the file or the disk are `StoreError`s that say whether a retry may fix them
(`faults`); the schema migrates forward on open (`schema`); `lock` holds the store for one daemon.
"""

from flexbot.store.db import AsyncStore, GroupCommit, JournalRow, OutboxRow, Outcome, Store
from flexbot.store.faults import StoreError, StoreFailed, failure, is_store_fault
from flexbot.store.lock import StoreLocked
from flexbot.store.schema import DAEMON, MIGRATIONS, OPERATOR, SCHEMA_VERSION

__all__ = [
    "DAEMON",
    "MIGRATIONS",
    "OPERATOR",
    "SCHEMA_VERSION",
    "AsyncStore",
    "GroupCommit",
    "JournalRow",
    "OutboxRow",
    "Outcome",
    "Store",
    "StoreError",
    "StoreFailed",
    "StoreLocked",
    "failure",
    "is_store_fault",
]
