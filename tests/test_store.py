"""The SQLite store (flexbot.store): the order journal and the flags, on real files.

- a journalled row reads back through `followed()` and `orders()`, updates apply, and only the
  updatable columns can be updated;
- a committed row survives `close()` and re-`open()`, in WAL mode with `synchronous=FULL`;
- the schema migrates forward from an older flexbot's store and refuses a newer one's;
- a file that is not SQLite is refused with a `StoreError` naming it;
- `AsyncStore` runs the calls from trio, one at a time;
- any sequence of journal/update operations leaves `followed()` as a simple model predicts.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from flexbot.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    AsyncStore,
    JournalRow,
    Store,
    StoreError,
)
from flexbot.store import schema as store_schema

T0 = "2026-11-23T10:00:00+00:00"
T1 = "2026-11-23T10:00:01+00:00"
T2 = "2026-11-23T10:00:02+00:00"


def row(client_id: str, created_at: str = T0, **fields: Any) -> JournalRow:
    base = JournalRow(
        client_id=client_id,
        strategy="demo",
        strategy_version="1",
        fingerprint=f"fp-{client_id}",
        request='{"side":"buy"}',
        state="pending",
        created_at=created_at,
        updated_at=created_at,
    )
    return attrs.evolve(base, **fields)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "state" / "flexbot.db")
    yield opened
    opened.close()


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


# --- the journal -----------------------------------------------------------------------------


def test_journal_update_and_read_back(store: Store) -> None:
    first = row("c-1", T0)
    store.journal(first)
    assert store.followed() == [first]
    assert store.orders() == [first]

    store.update(
        "c-1",
        state="working",
        order_id="m-17",
        last_order='{"id":"m-17"}',
        updated_at=T1,
    )
    updated = attrs.evolve(
        first, state="working", order_id="m-17", last_order='{"id":"m-17"}', updated_at=T1
    )
    assert store.followed() == [updated]
    assert store.orders() == [updated]

    store.update("c-1", state="rejected", reason="too late", following=False, updated_at=T2)
    done = attrs.evolve(
        updated, state="rejected", reason="too late", following=False, updated_at=T2
    )
    assert store.followed() == []
    assert store.orders() == [done]


def test_an_update_without_fsync_is_kept_and_the_next_one_is_durable_again(
    store: Store, tmp_path: Path
) -> None:
    store.journal(row("c-1", T0))
    store.update("c-1", durable=False, state="open", order_id="m-1", updated_at=T1)
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
    # Another connection (a restarted process) sees it: it is in the WAL.
    other = Store.open(tmp_path / "state" / "flexbot.db")
    try:
        [seen] = other.orders()
    finally:
        other.close()
    assert (seen.state, seen.order_id) == ("open", "m-1")


def test_a_failed_update_without_fsync_leaves_the_connection_durable(store: Store) -> None:
    store.journal(row("c-1", T0))
    store.journal(row("c-2", T0))
    store.update("c-1", order_id="m-1", updated_at=T1)
    with pytest.raises(sqlite3.IntegrityError):  # the order id is another's
        store.update("c-2", durable=False, order_id="m-1", updated_at=T1)
    assert not store._db.in_transaction
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_journalled_order_ids_answers_for_any_number_of_ids(store: Store) -> None:
    for i in range(1200):
        store.journal(row(f"c-{i}", T0, order_id=f"m-{i}" if i % 2 == 0 else None))
    asked = [f"m-{i}" for i in range(0, 2400, 3)]  # more than one IN (...) query's worth
    assert store.journalled_order_ids(asked) == {f"m-{i}" for i in range(0, 1200, 3) if i % 2 == 0}


def test_rows_keep_their_types(store: Store) -> None:
    dry = row("c-dry", dry_run=True)
    store.journal(dry)
    (back,) = store.orders()
    assert back == dry
    assert back.dry_run is True
    assert back.following is True


def test_unfollowed_rows_are_not_followed(store: Store) -> None:
    store.journal(row("a", T0))
    store.journal(row("b", T1, following=False))
    store.journal(row("c", T2))
    assert [r.client_id for r in store.followed()] == ["a", "c"]
    assert [r.client_id for r in store.orders()] == ["c", "b", "a"]  # newest first
    assert [r.client_id for r in store.orders(limit=2)] == ["c", "b"]


def test_followed_is_oldest_first_then_in_insertion_order(store: Store) -> None:
    store.journal(row("late", T2))
    store.journal(row("tie-1", T1))
    store.journal(row("early", T0))
    store.journal(row("tie-2", T1))
    assert [r.client_id for r in store.followed()] == ["early", "tie-1", "tie-2", "late"]
    assert [r.client_id for r in store.orders()] == ["late", "tie-2", "tie-1", "early"]


@pytest.mark.parametrize("column", ["strategy", "request", "created_at", "dry_run", "bogus"])
def test_update_refuses_columns_that_are_not_updatable(store: Store, column: str) -> None:
    original = row("c-1")
    store.journal(original)
    with pytest.raises(ValueError, match="not updatable") as caught:
        store.update("c-1", state="working", **{column: "x"})
    assert column in str(caught.value)
    assert store.orders() == [original]  # nothing applied, not even the valid field


def test_update_of_an_unknown_client_id_changes_nothing(store: Store) -> None:
    original = row("c-1")
    store.journal(original)
    store.update("nobody", state="working")
    assert store.orders() == [original]


def test_a_duplicate_client_id_is_refused_and_rolled_back(store: Store) -> None:
    original = row("c-1")
    store.journal(original)
    with pytest.raises(sqlite3.IntegrityError):
        store.journal(row("c-1", T1, state="other"))
    store.journal(row("c-2", T1))  # the failed transaction did not leave one open
    assert [r.client_id for r in store.orders()] == ["c-2", "c-1"]


# --- durability ------------------------------------------------------------------------------


def test_a_journalled_row_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "flexbot.db"
    first = Store.open(path)
    first.journal(row("c-1"))
    first.update("c-1", state="working", updated_at=T1)
    first.set_flag("kill", "on", T1)
    first.close()

    again = Store.open(path)
    try:
        assert again.followed() == [row("c-1", state="working", updated_at=T1)]
        assert again.flag("kill") == "on"
        assert again.schema_version == SCHEMA_VERSION  # reopening migrates nothing
    finally:
        again.close()


def test_wal_mode_and_full_sync(store: Store) -> None:
    db = store._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    # WAL is a property of the file: a second, plain connection sees it too.
    other = sqlite3.connect(store.path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


def test_open_creates_missing_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "flexbot.db"
    opened = Store.open(path)
    opened.close()
    assert path.is_file()


# --- migrations ------------------------------------------------------------------------------


def test_a_fresh_store_is_at_the_current_schema_version(store: Store) -> None:
    assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    assert user_version(store.path) == SCHEMA_VERSION


def test_a_store_from_a_newer_flexbot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flexbot.db"
    Store.open(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()

    with pytest.raises(StoreError, match="upgrade flexbot") as caught:
        Store.open(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert user_version(path) == SCHEMA_VERSION + 1  # left as it was


def test_an_older_store_is_migrated_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "flexbot.db"
    old = Store.open(path)
    old.journal(row("c-1"))
    old.set_flag("kill", "on", T0)
    old.close()

    newer = (*MIGRATIONS, "ALTER TABLE orders ADD COLUMN note TEXT; -- a later flexbot's column")
    monkeypatch.setattr(store_schema, "MIGRATIONS", newer)

    migrated = Store.open(path)
    try:
        assert migrated.schema_version == SCHEMA_VERSION + 1
        assert migrated.followed() == [row("c-1")]
        assert migrated.flag("kill") == "on"
        columns = [c[1] for c in migrated._db.execute("PRAGMA table_info(orders)")]
        assert columns[-1] == "note"
        migrated.journal(row("c-2", T1))  # the migrated schema still takes rows
        assert [r.client_id for r in migrated.orders()] == ["c-2", "c-1"]
    finally:
        migrated.close()


def test_a_failing_migration_leaves_the_store_at_its_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "flexbot.db"
    old = Store.open(path)
    old.journal(row("c-1"))
    old.close()

    broken = (*MIGRATIONS, "ALTER TABLE orders ADD COLUMN note TEXT; ALTER TABLE nope ADD x TEXT")
    monkeypatch.setattr(store_schema, "MIGRATIONS", broken)
    with pytest.raises(StoreError, match="nope"):
        Store.open(path)

    monkeypatch.undo()
    again = Store.open(path)  # the half-applied step was rolled back
    try:
        assert again.schema_version == SCHEMA_VERSION
        assert "note" not in [c[1] for c in again._db.execute("PRAGMA table_info(orders)")]
        assert again.followed() == [row("c-1")]
    finally:
        again.close()


# --- not a store -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", [b"hello", b"\x00\xff garbage \x13\x37" * 100, b"SQLite format 2\x00" + b"x" * 200]
)
def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "flexbot.db"
    path.write_bytes(content)
    with pytest.raises(StoreError) as caught:
        Store.open(path)
    error = caught.value
    assert str(path) in str(error)
    assert "the store is damaged" in str(error)
    assert f"sqlite3 {path} .recover" in str(error)  # what to do
    assert not error.retry_may_fix
    assert error.__cause__ is None
    assert error.__suppress_context__  # no sqlite3 traceback chained under it
    assert type(error) is StoreError
    assert path.read_bytes() == content  # not overwritten


def test_a_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flexbot.db"
    path.mkdir()
    with pytest.raises(StoreError, match="cannot be opened") as caught:
        Store.open(path)
    assert str(path) in str(caught.value)


# --- flags -----------------------------------------------------------------------------------


def test_flags_set_overwrite_read_and_clear(store: Store) -> None:
    assert store.flag("kill") is None
    store.set_flag("kill", "on", T0)
    assert store.flag("kill") == "on"
    store.set_flag("kill", "still on", T1)
    assert store.flag("kill") == "still on"
    assert store._db.execute("SELECT set_at FROM flags WHERE name = 'kill'").fetchone() == (T1,)
    store.set_flag("other", "x")
    store.set_flag("kill", None)
    assert store.flag("kill") is None
    assert store.flag("other") == "x"
    store.set_flag("kill", None)  # clearing a clear flag is fine
    assert store.flag("kill") is None


# --- AsyncStore ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_store_runs_concurrent_calls(store: Store) -> None:
    async_store = AsyncStore(store)
    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(async_store.run, async_store.sync.journal, row(f"c-{i:02}"))
    assert sorted(r.client_id for r in store.followed()) == [f"c-{i:02}" for i in range(50)]
    assert await async_store.run(store.flag, "kill") is None
    await async_store.run(store.set_flag, "kill", "on", at=T1)
    assert await async_store.run(store.flag, name="kill") == "on"


@pytest.mark.anyio
async def test_async_store_serializes_calls(store: Store) -> None:
    async_store = AsyncStore(store)
    entered = threading.Event()
    release = threading.Event()
    started: list[str] = []

    def slow() -> str:
        started.append("slow")
        entered.set()
        assert release.wait(timeout=10)
        return "slow done"

    def quick() -> str:
        started.append("quick")
        return "quick done"

    results: dict[str, str] = {}

    async def call(name: str, fn: Callable[[], str]) -> None:
        results[name] = await async_store.run(fn)

    async with trio.open_nursery() as nursery:
        try:
            nursery.start_soon(call, "slow", slow)
            await trio.to_thread.run_sync(entered.wait, 10)  # `slow` runs in its worker thread
            assert started == ["slow"]
            nursery.start_soon(call, "quick", quick)
            await trio.testing.wait_all_tasks_blocked()
            assert started == ["slow"]  # `quick` waits for the lock, not beside `slow`
            assert async_store._lock.statistics().tasks_waiting == 1
        finally:
            release.set()
    assert started == ["slow", "quick"]
    assert results == {"slow": "slow done", "quick": "quick done"}


@pytest.mark.anyio
async def test_async_store_passes_errors_through(store: Store) -> None:
    async_store = AsyncStore(store)
    with pytest.raises(ValueError, match="not updatable"):
        await async_store.run(store.update, "c-1", strategy="x")
    await async_store.run(store.journal, row("c-1"))  # the lock was released
    assert [r.client_id for r in store.followed()] == ["c-1"]


# --- property: followed() matches a model ----------------------------------------------------

client_ids = st.sampled_from([f"c-{i}" for i in range(8)])
created = st.sampled_from([T0, T1, T2])
states = st.sampled_from(["pending", "working", "filled", "rejected"])
journal_op = st.tuples(st.just("journal"), client_ids, created, states, st.booleans())
update_op = st.tuples(
    st.just("update"), client_ids, st.one_of(st.none(), states), st.one_of(st.none(), st.booleans())
)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.lists(st.one_of(journal_op, update_op), max_size=40))
def test_followed_matches_a_model(ops: list[tuple[object, ...]]) -> None:
    model: dict[str, JournalRow] = {}  # insertion-ordered, like rowid
    # In memory: the property is about the queries; the tests above cover the file itself.
    store = Store.open(Path(":memory:"))
    try:
        for op in ops:
            if op[0] == "journal":
                _, cid, at, state, following = op
                new = row(str(cid), str(at), state=state, following=following)
                if cid in model:
                    with pytest.raises(sqlite3.IntegrityError):
                        store.journal(new)
                else:
                    store.journal(new)
                    model[new.client_id] = new
            else:
                _, cid, state, following = op
                fields: dict[str, Any] = {"updated_at": T2}
                if state is not None:
                    fields["state"] = state
                if following is not None:
                    fields["following"] = following
                store.update(str(cid), **fields)
                if cid in model:
                    model[str(cid)] = attrs.evolve(model[str(cid)], **fields)
            order = list(model)
            expected = sorted(
                (r for r in model.values() if r.following),
                key=lambda r: (r.created_at, order.index(r.client_id)),
            )
            assert store.followed() == expected
        newest_first = sorted(
            model.values(), key=lambda r: (r.created_at, list(model).index(r.client_id))
        )[::-1]
        assert store.orders() == newest_first
    finally:
        store.close()
