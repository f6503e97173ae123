"""The kill switch: halt all trading and cancel every open order.

Three ways to pull it, each of which stays pulled across restarts until cleared where it was set:
- `kill_switch.engaged: true` in the config (cleared by editing the config);
- `kill_switch.file`: engaged while that file exists (`touch` it; cleared by removing it);
- the latch in the store, set by `flexbot kill-switch engage` or a signal to the daemon (cleared
  by `flexbot kill-switch release`).

While engaged, the engine refuses every new order, cancels every open one, and cancels at sight
any order whose submission was unknown and turns out to exist.

What can be waited for is not polled: a signal engages the switch at once (`engage`). The file and
the latch written by another process (`flexbot kill-switch engage`) can only be polled: `refresh`
reads both off the event loop (the latch through the store's worker thread, the file in a worker
thread of its own), and `reasons` answers from what the last `refresh` saw, never touching a disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import trio

from flexbot import logs
from flexbot.store import AsyncStore, Store

if TYPE_CHECKING:
    from flexbot.engine.desk import OrderDesk

log = logs.get_logger("flexbot.engine.killswitch")

LATCH = "kill_switch"


class KillSwitch:
    def __init__(
        self, *, configured: bool = False, file: Path | None = None, store: AsyncStore | None = None
    ) -> None:
        self.configured = configured
        self.file = file
        self._store = store
        self._latched: str | None = None
        self._file_seen = False  # the file existed at the last refresh

    async def refresh(self) -> list[str]:
        """Re-read the latch and the file; returns why it is engaged (empty: it is not)."""
        if self._store is not None:
            self._latched = await self._store.run(self._store.sync.flag, LATCH)
        if self.file is not None:
            # Abandoned if cancelled: a stat on a hung network share must not hold a stop.
            self._file_seen = await trio.to_thread.run_sync(
                self.file.exists, abandon_on_cancel=True
            )
        return self.reasons()

    def reasons(self) -> list[str]:
        """Why it is engaged, as the last `refresh` saw (empty: it is not)."""
        reasons = []
        if self.configured:
            reasons.append("config")
        if self._file_seen:
            reasons.append(f"file {self.file}")
        if self._latched is not None:
            reasons.append(f"latch ({self._latched})")
        return reasons

    @property
    def engaged(self) -> bool:
        return bool(self.reasons())

    async def engage(self, why: str, at: str) -> None:
        self._latched = why
        if self._store is not None:
            await self._store.run(self._store.sync.set_flag, LATCH, why, at)


async def watch(switch: KillSwitch, desk: OrderDesk, poll_s: float) -> None:
    """Poll the file and the latch every `poll_s`, and halt or free the desk as they say."""
    while True:
        reasons = await switch.refresh()
        if reasons and not desk.halted:
            log.warning("killswitch.engaged", reasons=reasons)
        elif desk.halted and not reasons:
            log.warning("killswitch.released")
        await desk.halt(reasons)
        await trio.sleep(poll_s)


def engage_latch(store: Store, why: str, at: str) -> None:
    store.set_flag(LATCH, why, at)


def release_latch(store: Store) -> bool:
    """Clear the latch; True if it was set."""
    was = store.flag(LATCH) is not None
    store.set_flag(LATCH, None)
    return was


def latch_of(store: Store) -> str | None:
    return store.flag(LATCH)
