"""What a fault of the store's file or disk means: retry, or an operator must act."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path


class StoreError(Exception):
    """The store cannot be used. `retry_may_fix`: the fault may pass by itself (a full disk, an
    I/O error, a busy file), so a restart is worth it; else an operator must act (a damaged file,
    a store from a newer flexbot, no permission)."""

    def __init__(self, message: str, *, retry_may_fix: bool = False) -> None:
        super().__init__(message)
        self.retry_may_fix = retry_may_fix
        self.reported = False  # logged already (`store.failed`): the exit says no more


class StoreFailed(StoreError):
    """A read or write failed while the daemon ran: nothing more can be journalled."""


# SQLite's primary result codes that no retry fixes: SQLITE_PERM, SQLITE_READONLY, SQLITE_CORRUPT,
# SQLITE_AUTH, SQLITE_NOTADB. Everything else that reaches us as an operational error (SQLITE_FULL,
# SQLITE_IOERR, SQLITE_BUSY, SQLITE_CANTOPEN, SQLITE_NOMEM …) may pass.
_PERMANENT = {
    3: "no permission",
    8: "read-only",
    11: "damaged",
    14: "cannot be opened",  # SQLITE_CANTOPEN: a file mode, a folder that is a file, …
    23: "no permission",
    26: "damaged",
}
# SQLITE_ERROR (a wrong statement), SQLITE_MISUSE, SQLITE_RANGE: our bug, not the disk's.
_OURS = {1, 21, 25}


def failure(exc: sqlite3.Error, path: Path, kind: type[StoreError] = StoreFailed) -> StoreError:
    """What a SQLite error means for the daemon, with what to do, as a `StoreError`."""
    code = getattr(exc, "sqlite_errorcode", None)
    what = _PERMANENT.get(code & 0xFF) if isinstance(code, int) else None
    if what is None and type(exc) is sqlite3.DatabaseError:  # raised bare for a damaged file
        what = "damaged"
    if what == "damaged":
        return kind(
            f"{path}: the store is damaged ({exc}): flexbot will not trade on a journal it cannot "
            f"read. Restore it from a backup, or recover it with `sqlite3 {path} .recover`",
            retry_may_fix=False,
        )
    if what is not None:
        return kind(
            f"{path}: the store cannot be written ({exc}, {what}): check the owner and mode of "
            "the file and its folder",
            retry_may_fix=False,
        )
    return kind(
        f"{path}: the store cannot be used ({exc}): free disk space or fix the disk; flexbot "
        "retries by itself",
        retry_may_fix=True,
    )


def is_store_fault(exc: BaseException) -> bool:
    """A fault of the file or the disk, not of our SQL (an IntegrityError or a wrong statement is
    a bug: it stays what it is, and is not waited out as if the disk were full)."""
    if type(exc) not in (sqlite3.DatabaseError, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    return not (isinstance(code, int) and code & 0xFF in _OURS)


# Faults of the file system that may pass by themselves; any other (no permission, a read-only
# file system, a folder that is a file) needs an operator.
_PASSING = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EINTR, errno.ENOMEM}


def os_failure(exc: OSError, what: str) -> StoreError:
    """A file-system error around the store (its folder, its lock file) as a `StoreError`."""
    return StoreError(f"{what}: {exc.strerror}", retry_may_fix=exc.errno in _PASSING)
