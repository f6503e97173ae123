"""One daemon per store: an OS lock on a file beside the store, held for the process's life.

Two daemons on one store adopt and cancel each other's orders, so `flexbot run` takes an exclusive
`flock` on `<store>.lock` before it opens the store, and keeps it until it exits. The kernel drops
the lock when the process dies, SIGKILL included: there is no stale lock to clean up after a crash.
The holder writes its pid into the file, so that a second daemon (and `flexbot status`) can name it.

`flock` rather than `fcntl` record locks: a record lock is dropped when *any* descriptor of the file
is closed in the process, which the store's own connection could do by accident.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from attrs import frozen

from flexbot.store.faults import StoreError, os_failure

# The flag (in the store's flags) the daemon sets when it starts: when, and proof it can write.
STARTED_FLAG = "daemon.started"
READY_FLAG = "daemon.ready"  # wall time the daemon last reached READY
HEARTBEAT_FLAG = "daemon.heartbeat"  # wall time of the running daemon's last heartbeat
HEARTBEAT_S = 30.0  # between two heartbeats

# A `flexbot status` probe holds the lock for microseconds: a daemon starting at that instant
# waits this long before it calls the store taken.
ACQUIRE_PATIENCE_S = 1.0
_POLL_S = 0.05


class StoreLocked(StoreError):
    """Another process holds the store's lock: an operator must act (no retry)."""

    def __init__(self, store: Path, holder: int | None) -> None:
        self.store = store
        self.holder = holder
        who = f"pid {holder}" if holder is not None else "another process"
        super().__init__(
            f"the store {store} is in use by another flexbot ({who}): stop that daemon first, "
            "or point store.path at another file",
            retry_may_fix=False,
        )


def lock_path(store: Path) -> Path:
    """Beside the store's real file: two names of one store (a symlink) share one lock."""
    with contextlib.suppress(OSError, RuntimeError):  # a loop of links: the name as given
        store = store.resolve()
    return store.with_name(store.name + ".lock")


@frozen
class Holder:
    """What `holder()` found: whether a process holds the lock (None: cannot tell, e.g. the lock
    file is not readable by this user), and its pid."""

    held: bool | None
    pid: int | None = None
    why: str = ""


class Held:
    """The lock, held: `stamp` writes the holder's pid into its file."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def stamp(self) -> bool:
        """Best effort (False if the disk is full: the lock holds all the same, only its pid is
        not told; the daemon stamps again once the store takes writes)."""
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            return False
        return True


@contextlib.contextmanager
def hold(store: Path, *, patience_s: float = ACQUIRE_PATIENCE_S) -> Iterator[Held]:
    """Hold the store's lock for the duration; `StoreLocked` at once if another process has it.

    The lock file cannot be made (no permission, a full disk): a `StoreError` that says whether
    a retry may fix it."""
    path = lock_path(store)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise os_failure(exc, f"{path}: cannot take the store's lock") from None
    try:
        deadline = time.monotonic() + patience_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreLocked(store, _read_pid(fd)) from None
                time.sleep(_POLL_S)
        held = Held(fd)
        held.stamp()
        yield held
    finally:
        os.close(fd)  # releases the lock (the pid stays: only a held lock makes it meaningful)


def holder(store: Path) -> Holder:
    """Whether a daemon holds the store's lock now, without disturbing it (a shared probe that
    fails while the daemon holds its exclusive lock)."""
    path = lock_path(store)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return Holder(held=False)
    except OSError as exc:
        return Holder(held=None, why=f"cannot read {path}: {exc.strerror}")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return Holder(held=True, pid=_read_pid(fd))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return Holder(held=True, pid=_read_pid(fd))
            return Holder(held=None, why=f"cannot lock {path}: {exc.strerror}")
        return Holder(held=False)
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
