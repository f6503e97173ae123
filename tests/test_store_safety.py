"""The store under what machines and operators do: one holder of its lock, faults of the disk and
the file told apart (a retry may fix a full disk, not a damaged file), each with what to do.

Real SQLite files and real processes: a full disk is SQLite's own SQLITE_FULL (a page limit on the
connection), a damaged file is one whose middle pages were overwritten, a lock holder that dies is
a child process killed with SIGKILL.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from flexbot.store import (
    AsyncStore,
    JournalRow,
    Store,
    StoreError,
    StoreFailed,
    StoreLocked,
    failure,
    lock,
)
from tests.processes import READY_S, ROOT, child_env

T0 = "2026-11-23T10:00:00+00:00"


def row(client_id: str, **changes: object) -> JournalRow:
    fields: dict[str, object] = {
        "client_id": client_id,
        "strategy": "s",
        "strategy_version": "1",
        "fingerprint": f"fp-{client_id}",
        "request": "{}",
        "state": "open",
        "created_at": T0,
        "updated_at": T0,
    }
    fields.update(changes)
    return JournalRow(**fields)  # type: ignore[arg-type]


# --- one holder ----------------------------------------------------------------------------------


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    store = tmp_path / "flexbot.db"
    assert not lock.holder(store).held
    with lock.hold(store):
        assert lock.holder(store) == lock.Holder(held=True, pid=os.getpid())
        with pytest.raises(StoreLocked) as caught, lock.hold(store, patience_s=0.1):
            pass
        assert caught.value.holder == os.getpid()
        assert str(store) in str(caught.value)
        assert not caught.value.retry_may_fix  # exit 2: systemd does not restart it
    assert not lock.holder(store).held  # released with the holder


def test_the_kernel_frees_the_lock_of_a_killed_holder(tmp_path: Path) -> None:
    store = tmp_path / "flexbot.db"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from flexbot.store import lock\n"
        "with lock.hold(Path(sys.argv[1])):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(store)],
        stdout=subprocess.PIPE,
        env=child_env(),
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"held\n"
        with pytest.raises(StoreLocked) as caught, lock.hold(store, patience_s=0.1):
            pass
        assert caught.value.holder == child.pid
        assert lock.holder(store) == lock.Holder(held=True, pid=child.pid)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=READY_S)
        with lock.hold(store):  # no stale lock to clean up
            assert lock.holder(store).pid == os.getpid()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_probe_by_status_does_not_make_a_starting_daemon_fail(tmp_path: Path) -> None:
    """`flexbot status` probes with a shared lock for an instant; a daemon starting at that
    instant waits for it rather than calling the store taken."""
    store = tmp_path / "flexbot.db"
    path = lock.lock_path(store)
    path.touch()
    with path.open("rb") as probe:
        fcntl.flock(probe, fcntl.LOCK_SH)
        released = False

        def release_soon() -> None:
            nonlocal released
            released = True
            fcntl.flock(probe, fcntl.LOCK_UN)

        timer = threading.Timer(0.2, release_soon)
        timer.start()
        try:
            with lock.hold(store, patience_s=5.0):
                assert released
        finally:
            timer.cancel()


# --- faults of the disk and the file -------------------------------------------------------------


@pytest.mark.anyio
async def test_a_full_disk_is_a_store_failure_a_retry_may_fix(tmp_path: Path) -> None:
    path = tmp_path / "flexbot.db"
    store = AsyncStore(Store.open(path))
    try:
        db = store.sync._db
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL from here on
        readings = [
            ("m", f"2026-11-23T10:{i // 60:02d}:{i % 60:02d}", "1" * 200) for i in range(40)
        ]
        with pytest.raises(StoreFailed) as caught:
            await store.run(store.sync.add_readings, readings)
        failed = caught.value
        assert failed.retry_may_fix
        assert str(path) in str(failed)
        assert "free disk space" in str(failed)
        assert not db.in_transaction  # rolled back cleanly
        # The disk is freed: the same connection writes again, nothing half-done is left.
        db.execute("PRAGMA max_page_count = 1073741823")
        assert await store.run(store.sync.add_readings, readings) > 0
    finally:
        store.sync.close()


def damage_the_middle(path: Path) -> None:
    """Overwrite pages in the middle of the file (not its header): what a bad disk leaves."""
    size = path.stat().st_size
    page = 4096
    assert size > 8 * page
    with path.open("r+b") as file:
        for index in range(2, size // page - 2):
            file.seek(index * page)
            file.write(b"\x5a" * page)


def filled_store(path: Path) -> None:
    store = Store.open(path)
    try:
        for index in range(300):
            store.journal(row(f"c-{index:04d}", request="x" * 300))
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()


@pytest.mark.anyio
async def test_a_damaged_store_is_a_failure_no_retry_fixes_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "flexbot.db"
    filled_store(path)
    damage_the_middle(path)
    try:
        store = AsyncStore(Store.open(path))
    except StoreError as exc:  # the damage may already show on open
        failed: StoreError = exc
    else:
        try:
            with pytest.raises(StoreFailed) as caught:
                await store.run(store.sync.orders)
            failed = caught.value
        finally:
            store.sync.close()
    assert not failed.retry_may_fix
    assert "damaged" in str(failed)
    assert f"sqlite3 {path} .recover" in str(failed)


def test_a_bug_in_our_sql_is_not_taken_for_a_disk_fault(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "flexbot.db")
    try:
        store.journal(row("c-1"))

        async def twice() -> None:
            async_store = AsyncStore(store)
            await async_store.run(store.journal, row("c-1"))

        with pytest.raises(sqlite3.IntegrityError):
            trio.run(twice)
    finally:
        store.close()


PERMANENT = {3, 8, 11, 14, 23, 26}


@given(code=st.integers(min_value=1, max_value=0xFFFF), message=st.text(max_size=40))
def test_every_sqlite_fault_says_where_whether_to_retry_and_what_to_do(
    code: int, message: str
) -> None:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    path = Path("/var/lib/flexbot/flexbot.db")
    found = failure(error, path)
    assert isinstance(found, StoreFailed)
    assert str(found).startswith(f"{path}: ")
    assert found.retry_may_fix is ((code & 0xFF) not in PERMANENT)
    assert any(hint in str(found) for hint in ("retries by itself", "Restore", "owner and mode"))
