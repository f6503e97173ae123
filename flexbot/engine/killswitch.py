"""The kill switch: halt all trading and cancel every open order.

Three ways to pull it, each of which stays pulled across restarts until cleared where it was set:
- `kill_switch.engaged: true` in the config (cleared by editing the config);
- `kill_switch.file`: engaged while that file exists (`touch` it; cleared by removing it);
- the latch in the store, set by `flexbot kill-switch engage` or a signal to the daemon (cleared
  by `flexbot kill-switch release`).

While engaged, the engine refuses every new order, cancels every open one, and cancels at sight
any order whose submission was unknown and turns out to exist.
"""

from __future__ import annotations

from pathlib import Path

from flexbot.store import AsyncStore, Store

LATCH = "kill_switch"


class KillSwitch:
    def __init__(
        self, *, configured: bool = False, file: Path | None = None, store: AsyncStore | None = None
    ) -> None:
        self.configured = configured
        self.file = file
        self._store = store
        self._latched: str | None = None

    async def refresh(self) -> list[str]:
        """Re-read the latch and the file; returns why it is engaged (empty: it is not)."""
        if self._store is not None:
            self._latched = await self._store.run(self._store.sync.flag, LATCH)
        return self.reasons()

    def reasons(self) -> list[str]:
        reasons = []
        if self.configured:
            reasons.append("config")
        if self.file is not None and self.file.exists():
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


def engage_latch(store: Store, why: str, at: str) -> None:
    store.set_flag(LATCH, why, at)


def release_latch(store: Store) -> bool:
    """Clear the latch; True if it was set."""
    was = store.flag(LATCH) is not None
    store.set_flag(LATCH, None)
    return was


def latch_of(store: Store) -> str | None:
    return store.flag(LATCH)
