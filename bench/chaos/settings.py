"""What a chaos run is set to: its settings, the bounds it holds the daemon to, the constant
faults, and what the logs must never show."""

from __future__ import annotations

import re
import resource
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "alice-pw"  # the secret the log must never show
TIME_SCALE = 60
SETTLE_S = 30  # verification.settle_delay_s, market seconds
DUE_MARGIN_S = SETTLE_S + 150  # market seconds after delivery end: settle, scan, send, retries
START_BOUND_S = 20.0  # the sandbox's start on a busy machine
STOP_BOUND_S = 30.0  # SIGTERM to exit: the daemon's 20 s graceful bound plus a margin
RESTART_DELAY_S = 0.5  # systemd's RestartSec in deploy/flexbot.service is longer; this is harsher
READY_BOUND_S = 45.0  # a start to `daemon.ready` (or to `store.unwritable`) under every fault
SECOND_BOUND_S = 10.0  # a second daemon on the store: its exit 2 ("at once": imports, 1 s patience)
HALT_BOUND_S = (
    45.0  # a full disk to exit 1: the next write (a reading every 1 s) and 20 s of cancels
)
FULL_HOLD_S = 3.0  # the restart kept waiting under the full disk, before the disk is freed
TRADE_BOUND_S = 30.0  # after the disk is freed, until the restart has placed an order
# A file-size limit of one byte: no file of the daemon's may grow, as on a full disk (Python
# ignores SIGXFSZ, so a write fails with EFBIG, which SQLite reports as a disk I/O error). The hard
# limit stays, so it can be lifted again.
FULL_DISK = (1, resource.RLIM_INFINITY)
DISK_FREED = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
CONSTANT_FAULTS = {
    "ws_drop_every": 10,
    "token_ttl": 5,
    "rest_error_rate": 0.1,
    "ambiguous_rate": 0.1,
}
TOKEN = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")  # token_urlsafe(32)
BEARER = re.compile(r"Bearer\s+(?!\*)\S", re.IGNORECASE)
TRACEBACK = "Traceback (most recent call last)"


@attrs.frozen
class ChaosSettings:
    duration_s: float = 900.0  # wall seconds of killing and faults (the events add their own)
    kills: int = 20
    seed: int = 1
    min_due: int = 3  # contracts whose metering must fall due before the run ends
    settle_bound_s: float = 180.0  # wall seconds to wait, after the chaos, for due metering
    two_daemons: int = 3  # a second daemon started on the running one's store
    disk_full: int = 2  # the running daemon's disk filled, its restart waiting, the disk freed
