"""The store's tables, read and written: `Store` (synchronous, short calls) and `AsyncStore` (the
same for trio code, in a worker thread, one call at a time)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar

import trio
from attrs import frozen

from flexbot.store.faults import StoreError, StoreFailed, failure, is_store_fault, os_failure
from flexbot.store.schema import DAEMON, OPERATOR, migrate, transaction

P = ParamSpec("P")
T = TypeVar("T")


@frozen
class JournalRow:
    client_id: str
    strategy: str
    strategy_version: str
    fingerprint: str
    request: str
    state: str
    created_at: str
    updated_at: str
    order_id: str | None = None
    last_order: str | None = None
    reason: str | None = None
    dry_run: bool = False
    following: bool = True
    origin: str = DAEMON  # DAEMON or OPERATOR


@frozen
class OutboxRow:
    order_id: str
    measurement_type: str
    body: str
    state: str
    attempts: int
    next_at: float
    last_error: str | None
    enqueued_at: float
    done_at: float | None


_OUTBOX = (
    "order_id",
    "measurement_type",
    "body",
    "state",
    "attempts",
    "next_at",
    "last_error",
    "enqueued_at",
    "done_at",
)

_COLUMNS = (
    "client_id",
    "strategy",
    "strategy_version",
    "fingerprint",
    "request",
    "state",
    "created_at",
    "updated_at",
    "order_id",
    "last_order",
    "reason",
    "dry_run",
    "following",
    "origin",
)
_INSERT = f"INSERT INTO orders ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
_IN_CHUNK = 500  # ids per `IN (...)` query, well under SQLite's limit on bound parameters
_UPDATABLE = frozenset({"state", "order_id", "last_order", "reason", "following", "updated_at"})


class Store:
    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Store:
        try:
            if str(path) != ":memory:":
                path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_failure(exc, f"{path}: cannot create its folder") from None
        try:
            # isolation_level=None: we open transactions ourselves (`transaction`), explicitly.
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise failure(exc, path, StoreError) from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            migrate(db, path)
        except (sqlite3.Error, StoreError) as exc:
            db.close()
            if isinstance(exc, StoreError):
                raise
            raise failure(exc, path, StoreError) from None
        return cls(db, path)

    def close(self) -> None:
        self._db.close()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # --- the order journal ----------------------------------------------------------------------

    def journal(self, row: JournalRow) -> None:
        with transaction(self._db):
            self._insert(row)

    def _insert(self, row: JournalRow) -> None:
        values = [getattr(row, c) for c in _COLUMNS]
        self._db.execute(_INSERT, values)

    def update(self, client_id: str, *, durable: bool = True, **fields: Any) -> None:
        """Change a journalled order. `durable=False` skips the fsync: the change survives the
        process being killed (it is in the WAL) but may not survive a power cut until the next
        durable commit. For what the market can tell again after a restart (its status)."""
        unknown = set(fields) - _UPDATABLE
        if not fields:
            raise ValueError("nothing to update")
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        if not durable:
            self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            with transaction(self._db):
                self._db.execute(
                    f"UPDATE orders SET {assignments} WHERE client_id = ?",
                    [*fields.values(), client_id],
                )
        finally:
            if not durable:
                self._db.execute("PRAGMA synchronous=FULL")

    def journalled_order_ids(self, order_ids: Iterable[str]) -> set[str]:
        """Those of `order_ids` that some journalled intent already owns."""
        wanted = list(dict.fromkeys(order_ids))
        found: set[str] = set()
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            query = f"SELECT order_id FROM orders WHERE order_id IN ({marks})"
            found.update(row[0] for row in self._db.execute(query, chunk))
        return found

    def followed(self) -> list[JournalRow]:
        """Every order of the daemon's that news is still expected of, oldest first."""
        clause = f"WHERE following = 1 AND origin = '{DAEMON}' ORDER BY created_at, rowid"
        return list(self._rows(clause))

    def operator_in_flight(self) -> list[JournalRow]:
        """An operator's orders whose market id is not journalled (sent by hand, the answer not
        come yet or lost): a market order identical to one of them may be the operator's, so no
        intent of the daemon's may claim it. Few: operators place orders by hand."""
        clause = (
            f"WHERE origin = '{OPERATOR}' AND order_id IS NULL AND state IN ('pending', 'unknown')"
        )
        return list(self._rows(clause))

    def ownership(self, order_ids: Iterable[str]) -> tuple[set[str], list[JournalRow]]:
        """`journalled_order_ids` and `operator_in_flight` from one snapshot: read apart, an
        operator's answer committed between the two would show its order in neither."""
        self._db.execute("BEGIN")
        try:
            return self.journalled_order_ids(order_ids), self.operator_in_flight()
        finally:
            self._db.execute("COMMIT")

    def journal_unless_twin(self, row: JournalRow) -> JournalRow | None:
        """Journal `row`, unless an unresolved order with its fingerprint (`unresolved_with`) is
        journalled: then that one, and nothing is written. One transaction: two operators placing
        the same order at once cannot both pass."""
        with transaction(self._db):
            twins = self.unresolved_with(row.fingerprint)
            if twins:
                return twins[0]
            self._insert(row)
            return None

    def unresolved_with(self, fingerprint: str) -> list[JournalRow]:
        """Every order, the daemon's or an operator's, with this fingerprint and no market id
        that may still be on its way (the daemon's pending or unknown, an operator's likewise)."""
        clause = "WHERE fingerprint = ? AND order_id IS NULL AND state IN ('pending', 'unknown')"
        return list(self._rows(clause, (fingerprint,)))

    def orders(self, *, limit: int | None = None) -> list[JournalRow]:
        """The whole journal, newest first."""
        tail = " LIMIT ?" if limit is not None else ""
        args = (limit,) if limit is not None else ()
        return list(self._rows(f"ORDER BY created_at DESC, rowid DESC{tail}", args))

    def _rows(self, clause: str, args: Sequence[Any] = ()) -> Iterator[JournalRow]:
        query = f"SELECT {', '.join(_COLUMNS)} FROM orders {clause}"
        for values in self._db.execute(query, args):
            row = dict(zip(_COLUMNS, values, strict=True))
            row["dry_run"] = bool(row["dry_run"])
            row["following"] = bool(row["following"])
            yield JournalRow(**row)

    # --- meter readings ---------------------------------------------------------------------------

    def add_readings(self, rows: Sequence[tuple[str, str, str]]) -> int:
        """(meter id, ISO time, value) rows; a reading already held is kept. Returns how many
        were new."""
        with transaction(self._db):
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO readings (meter_id, at, value) VALUES (?, ?, ?)", rows
            )
            return self._db.total_changes - before

    def readings(self, meter_id: str, start: str, end: str) -> list[tuple[str, str]]:
        """(time, value) in [start, end], plus the nearest reading on each side (to interpolate)."""
        query = "SELECT at, value FROM readings WHERE meter_id = ? AND "
        before = self._db.execute(
            query + "at < ? ORDER BY at DESC LIMIT 1", (meter_id, start)
        ).fetchall()
        inside = self._db.execute(
            query + "at >= ? AND at <= ? ORDER BY at", (meter_id, start, end)
        ).fetchall()
        after = self._db.execute(query + "at > ? ORDER BY at LIMIT 1", (meter_id, end)).fetchall()
        return [(str(a), str(v)) for a, v in (*before, *inside, *after)]

    def last_reading_at(self, meter_id: str) -> str | None:
        found = self._db.execute(
            "SELECT max(at) FROM readings WHERE meter_id = ?", (meter_id,)
        ).fetchone()
        return None if found is None or found[0] is None else str(found[0])

    def first_reading_at(self, meter_id: str) -> str | None:
        found = self._db.execute(
            "SELECT min(at) FROM readings WHERE meter_id = ?", (meter_id,)
        ).fetchone()
        return None if found is None or found[0] is None else str(found[0])

    # --- quarter hours rolled up from readings --------------------------------------------------

    def rolled_until(self, meter_id: str) -> str | None:
        """The end of the meter's newest rolled-up quarter (None: none is)."""
        found = self._db.execute(
            "SELECT max(end_at) FROM quarter_energy WHERE meter_id = ?", (meter_id,)
        ).fetchone()
        return None if found is None or found[0] is None else str(found[0])

    def rolled_quarters(self, meter_id: str, after: str, until: str) -> list[tuple[str, str, bool]]:
        """(end, kWh, flagged) of the rolled-up quarters ending in (after, until], in order."""
        rows = self._db.execute(
            "SELECT end_at, energy_kwh, flagged FROM quarter_energy "
            "WHERE meter_id = ? AND end_at > ? AND end_at <= ? ORDER BY end_at",
            (meter_id, after, until),
        ).fetchall()
        return [(str(end), str(kwh), bool(flagged)) for end, kwh, flagged in rows]

    def roll_up(
        self,
        meter_id: str,
        quarters: Sequence[tuple[str, str, bool]],
        *,
        raw_from: str,
        quarters_from: str,
    ) -> tuple[int, int]:
        """In one transaction: keep `quarters` (end, kWh, flagged), let go of the raw readings
        before `raw_from` but the newest of them (the quarters after it interpolate from it), and
        of the quarters ending before `quarters_from`. Returns (raw, quarters) rows deleted."""
        with transaction(self._db):
            self._db.executemany(
                "INSERT OR REPLACE INTO quarter_energy (meter_id, end_at, energy_kwh, flagged) "
                "VALUES (?, ?, ?, ?)",
                [(meter_id, end, kwh, int(flagged)) for end, kwh, flagged in quarters],
            )
            raw = self._db.execute(
                "DELETE FROM readings WHERE meter_id = ? AND at < ("
                "SELECT max(at) FROM readings WHERE meter_id = ? AND at < ?)",
                (meter_id, meter_id, raw_from),
            ).rowcount
            old = self._db.execute(
                "DELETE FROM quarter_energy WHERE meter_id = ? AND end_at < ?",
                (meter_id, quarters_from),
            ).rowcount
        return raw, old

    # --- the verification outbox ----------------------------------------------------------------

    def enqueue(self, order_id: str, kind: str, body: str, now: float) -> bool:
        """Keep a submission until acknowledged; once per (order, kind): False if already held."""
        return self.enqueue_many([(order_id, kind, body)], now)[0]

    def enqueue_many(self, rows: Sequence[tuple[str, str, str]], now: float) -> list[bool]:
        """`enqueue` for each (order id, kind, body), in one transaction (one fsync for all)."""
        added = []
        with transaction(self._db):
            for order_id, kind, body in rows:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO outbox (order_id, measurement_type, body, state, "
                    "next_at, enqueued_at) VALUES (?, ?, ?, 'pending', ?, ?)",
                    (order_id, kind, body, now, now),
                )
                added.append(cursor.rowcount == 1)
        return added

    def due(self, now: float, limit: int = 16) -> list[OutboxRow]:
        rows = self._db.execute(
            f"SELECT {', '.join(_OUTBOX)} FROM outbox WHERE state = 'pending' AND next_at <= ? "
            "ORDER BY next_at LIMIT ?",
            (now, limit),
        ).fetchall()
        return [OutboxRow(*row) for row in rows]

    def outbox(self, order_id: str | None = None) -> list[OutboxRow]:
        where, args = ("WHERE order_id = ?", (order_id,)) if order_id else ("", ())
        rows = self._db.execute(
            f"SELECT {', '.join(_OUTBOX)} FROM outbox {where} ORDER BY enqueued_at", args
        ).fetchall()
        return [OutboxRow(*row) for row in rows]

    def settle(self, order_id: str, kind: str, state: str, at: float, error: str | None) -> None:
        """Mark acked or failed (final)."""
        self.outcomes([Outcome(order_id, kind, state, at, error)])

    def retry_later(self, order_id: str, kind: str, next_at: float, error: str) -> None:
        self.outcomes([Outcome(order_id, kind, "pending", next_at, error)])

    def outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """What became of sent submissions, in one transaction: final (`acked`, `failed`,
        `obsolete`: `at` is when), or `pending` again (`at` is when to retry)."""
        with transaction(self._db):
            for o in outcomes:
                if o.state == "pending":
                    self._db.execute(
                        "UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ? "
                        "WHERE order_id = ? AND measurement_type = ?",
                        (o.at, o.error, o.order_id, o.kind),
                    )
                else:
                    self._db.execute(
                        "UPDATE outbox SET state = ?, done_at = ?, last_error = ?, "
                        "attempts = attempts + 1 WHERE order_id = ? AND measurement_type = ?",
                        (o.state, o.at, o.error, o.order_id, o.kind),
                    )

    def acked(self, kind: str) -> set[str]:
        """The order ids whose submission of `kind` the market acknowledged (no bodies read)."""
        rows = self._db.execute(
            "SELECT order_id FROM outbox WHERE measurement_type = ? AND state = 'acked'", (kind,)
        )
        return {str(order_id) for (order_id,) in rows}

    def outbox_backlog(self) -> tuple[int, float | None]:
        """Pending submissions, and when the oldest was enqueued (wall seconds)."""
        count, oldest = self._db.execute(
            "SELECT count(*), min(enqueued_at) FROM outbox WHERE state = 'pending'"
        ).fetchone()
        return int(count), None if oldest is None else float(oldest)

    # --- flags (latches that outlive a restart, e.g. the kill switch) ---------------------------

    def flag(self, name: str) -> str | None:
        found = self._db.execute("SELECT value FROM flags WHERE name = ?", (name,)).fetchone()
        return None if found is None else str(found[0])

    def set_flag(self, name: str, value: str | None, at: str = "") -> None:
        with transaction(self._db):
            if value is None:
                self._db.execute("DELETE FROM flags WHERE name = ?", (name,))
            else:
                self._db.execute(
                    "INSERT INTO flags (name, value, set_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                    "set_at = excluded.set_at",
                    (name, value, at),
                )

    # --- strategies' states (`Strategy.save_state`) ---------------------------------------------

    def save_assets(self, rows: Sequence[tuple[str, str, str | None, str | None]], at: str) -> None:
        """(site, asset, state, availability) of the assets that changed; a row with neither
        message is an asset gone. `at` (market time) is kept as the flag `assets.saved_at`."""
        with transaction(self._db):
            self._db.execute(
                "INSERT INTO flags (name, value, set_at) VALUES ('assets.saved_at', ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, set_at = excluded.set_at",
                (at, at),
            )
            for site, asset, state, availability in rows:
                if state is None and availability is None:
                    self._db.execute(
                        "DELETE FROM asset_state WHERE site = ? AND asset = ?", (site, asset)
                    )
                    continue
                self._db.execute(
                    "INSERT OR REPLACE INTO asset_state VALUES (?, ?, ?, ?, ?)",
                    (site, asset, state, availability, at),
                )

    def assets(self) -> list[tuple[str, str, str | None, str | None, str]]:
        """Every asset's last messages: (site, asset, state, availability, saved_at)."""
        return list(
            self._db.execute(
                "SELECT site, asset, state, availability, saved_at FROM asset_state"
                " ORDER BY site, asset"
            )
        )

    def strategy_state(self, name: str) -> str | None:
        """The state strategy `name` saved last (JSON text), None if it saved none."""
        found = self._db.execute(
            "SELECT state FROM strategy_state WHERE name = ?", (name,)
        ).fetchone()
        return None if found is None else str(found[0])

    def save_strategy_state(self, name: str, state: str, at: str, *, durable: bool = False) -> None:
        """Keep `state` as strategy `name`'s. Not fsynced unless `durable` (see `update`): a
        strategy's state survives the process being killed, maybe not a power cut."""
        if not durable:
            self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            with transaction(self._db):
                self._db.execute(
                    "INSERT INTO strategy_state (name, state, saved_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET state = excluded.state, "
                    "saved_at = excluded.saved_at",
                    (name, state, at),
                )
        finally:
            if not durable:
                self._db.execute("PRAGMA synchronous=FULL")


@frozen
class Outcome:
    """What became of one sent outbox submission (`Store.outcomes`)."""

    order_id: str
    kind: str
    state: str  # acked, failed, obsolete (final), or pending (to be retried at `at`)
    at: float  # wall time: when it ended, or when to retry
    error: str | None = None


GROUP_FLUSH_S = 2.0  # at a stop, how long the writer may take for what is still pending


class GroupCommit(Generic[T]):
    """Writes to the store that many tasks make at once, committed together: `add` waits until a
    transaction holding its item has committed, and while one commits, the next items gather for
    the one after (one fsync for many, no more waiting than for one's own). `run` is the writer
    (a task of the owner's nursery), which writes what is pending even when cancelled; without
    it, `add` writes at once. A failed write raises in the writer and in each of its waiters."""

    def __init__(self, store: AsyncStore, write: Callable[[Store, list[T]], None]) -> None:
        self._store = store
        self._write = write
        self._pending: list[T] = []
        self._batch = trio.Event()  # set when the items now pending are committed
        self._wake = trio.Event()
        self._running = False
        self._failed: dict[trio.Event, Exception] = {}  # a batch whose write failed
        self.commits = 0

    async def add(self, item: T) -> None:
        if not self._running:
            await self._store.run(self._write, self._store.sync, [item])
            self.commits += 1
            return
        self._pending.append(item)
        batch = self._batch
        self._wake.set()
        await batch.wait()
        failed = self._failed.get(batch)
        if failed is not None:
            raise failed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer. Cancelled (the owner stops), it still writes what is pending, within
        `FLUSH_S`: a waiter cancelled with it must not lose its item (an acknowledged submission
        would be sent again at the next start)."""
        self._running = True
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await self._commit()
        finally:
            self._running = False
            with trio.CancelScope(shield=True), trio.move_on_after(GROUP_FLUSH_S):
                await self._commit()

    async def _commit(self) -> None:
        """Write what is pending in one transaction (shielded: its waiters must hear of it), then
        tell them; a failed write is told to them too, and raised here."""
        if not self._pending:
            return
        items, self._pending = self._pending, []
        batch, self._batch = self._batch, trio.Event()
        try:
            with trio.CancelScope(shield=True):
                await self._store.run(self._write, self._store.sync, items)
        except BaseException as exc:
            if isinstance(exc, Exception):
                self._failed[batch] = exc
            raise
        finally:
            batch.set()
        self.commits += 1


class AsyncStore:
    """`Store` for trio code: each call runs in a worker thread, one at a time.

    A fault of the file or the disk comes out as `StoreFailed`, the same for every caller: the
    daemon halts trading on it (see `flexbot.daemon`), and no task mistakes it for its own error."""

    def __init__(self, store: Store) -> None:
        self.sync = store
        self._lock = trio.Lock()
        # The first fault, latched: the daemon halts on it even if the task that met it swallowed
        # it (a strategy's own `except Exception` around `ctx.place`).
        self.failed: StoreFailed | None = None
        self.failing = trio.Event()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        async with self._lock:
            try:
                return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))
            except sqlite3.Error as exc:
                if not is_store_fault(exc):
                    raise
                failed = failure(exc, self.sync.path)
                assert isinstance(failed, StoreFailed)
                if self.failed is None:
                    self.failed = failed
                    self.failing.set()
                raise failed from exc
