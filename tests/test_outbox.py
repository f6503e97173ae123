"""The verification outbox (flexbot.store), as a property, on a real SQLite file.

A state machine drives one store file through any interleaving of:
- `enqueue(key, body)`: keys from a few order ids × {baseline, metering}, bodies of any text;
- a send attempt: the rows `due(now)` returns, each then acked (`settle(..., "acked")`), settled
  for good otherwise (`settle(..., "failed")`, or "obsolete": a baseline no longer wanted),
  rescheduled (`retry_later`, a later `next_at`), or left as it was because the process crashed
  mid-batch (the rest of the batch is never answered, and the store restarts);
- wall time moving on (a fake wall: the outbox keeps wall seconds);
- a restart: `close()` and `Store.open` of the same file.

A plain model holds what the outbox must hold, and after every step:
- a key is enqueued at most once: a second `enqueue` returns False and the body stays the first;
- `due(now)` returns exactly the pending keys whose `next_at <= now`, earliest first, with the
  first body byte for byte; an acked (or failed, obsolete) key is never due again (never sent
  twice after its acknowledgement);
- nothing is lost: every pending key is due once `now` reaches its `next_at`, across restarts;
- `outbox_backlog()` counts exactly the pending keys and reports the oldest enqueue time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from flexbot.store import OutboxRow, Store

ORDER_IDS = ("o-1", "o-2", "o-3", "o-4")
KINDS = ("baseline", "metering")
KEYS = [(order_id, kind) for order_id in ORDER_IDS for kind in KINDS]
START = 1_700_000_000.0  # wall seconds
EVERYTHING = 1000  # a `due` limit above the number of keys
# A real SQLite file, WAL and all; on tmpfs where there is one, so that the thousands of commits
# (each fsync'd: synchronous=FULL) do not wait for a disk. The SQL path is the same.
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

keys = st.sampled_from(KEYS)
# Any text SQLite can hold (no lone surrogates): quotes, newlines, NUL and non-ASCII included.
bodies = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
delays = st.floats(min_value=0.001, max_value=600, allow_nan=False, allow_infinity=False)
outcomes = st.sampled_from(["acked", "failed", "obsolete", "retry", "crash"])


@attrs.define
class Entry:
    """What one outbox row must be."""

    body: str
    enqueued_at: float
    next_at: float
    state: str = "pending"
    attempts: int = 0


class OutboxMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="flexbot-outbox-", dir=SCRATCH))
        self.path = self.dir / "state" / "flexbot.db"
        self.store = Store.open(self.path)
        self.now = START
        self.model: dict[tuple[str, str], Entry] = {}
        self.acked_ever: set[tuple[str, str]] = set()

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- helpers --------------------------------------------------------------------------------

    def pending(self) -> dict[tuple[str, str], Entry]:
        return {k: e for k, e in self.model.items() if e.state == "pending"}

    def expected_due(self, now: float) -> set[tuple[str, str]]:
        return {k for k, e in self.pending().items() if e.next_at <= now}

    def check_due(self, rows: list[OutboxRow], now: float) -> None:
        got = [(r.order_id, r.measurement_type) for r in rows]
        assert len(got) == len(set(got)), f"a key returned twice by one due(): {got}"
        assert set(got) == self.expected_due(now)
        assert not set(got) & self.acked_ever, "an acknowledged submission is due again"
        assert [r.next_at for r in rows] == sorted(r.next_at for r in rows)
        for r in rows:
            entry = self.model[(r.order_id, r.measurement_type)]
            assert r.state == "pending"
            assert r.body == entry.body  # byte for byte the first body
            assert r.body.encode() == entry.body.encode()
            assert r.next_at == entry.next_at
            assert r.attempts == entry.attempts
            assert r.enqueued_at == entry.enqueued_at

    def restart(self) -> None:
        self.store.close()
        self.store = Store.open(self.path)

    # --- rules ----------------------------------------------------------------------------------

    @rule(key=keys, body=bodies, after=st.sampled_from([0.0, 0.5, 90.0]))
    def enqueue(self, key: tuple[str, str], body: str, after: float) -> None:
        self.now += after  # the scan finds it a little later (or at once)
        new = self.store.enqueue(key[0], key[1], body, self.now)
        assert new == (key not in self.model)
        if new:
            self.model[key] = Entry(body=body, enqueued_at=self.now, next_at=self.now)
        (row,) = [r for r in self.store.outbox(key[0]) if r.measurement_type == key[1]]
        assert row.body == self.model[key].body
        assert row.state == self.model[key].state

    @rule(seconds=st.one_of(st.just(0.0), delays))
    def wall_moves(self, seconds: float) -> None:
        self.now += seconds

    @rule(data=st.data(), limit=st.one_of(st.just(EVERYTHING), st.integers(1, 3)))
    def send_attempt(self, data: st.DataObject, limit: int) -> None:
        rows = self.store.due(self.now, limit)
        if limit >= len(KEYS):
            self.check_due(rows, self.now)
        else:  # the earliest `limit` of them (which of equals is free)
            due = self.expected_due(self.now)
            assert {(r.order_id, r.measurement_type) for r in rows} <= due
            earliest = sorted(self.model[k].next_at for k in due)[:limit]
            assert [r.next_at for r in rows] == earliest
        for row in rows:
            key = (row.order_id, row.measurement_type)
            entry = self.model[key]
            assert row.body == entry.body
            outcome = data.draw(outcomes, label=f"answer for {key}")
            if outcome == "crash":  # no answer, nothing recorded: the process dies here
                self.restart()
                return
            if outcome == "retry":
                entry.next_at = self.now + data.draw(delays, label="retry delay")
                self.store.retry_later(key[0], key[1], entry.next_at, "503: injected")
            else:
                error = None if outcome == "acked" else "409: refused"
                self.store.settle(key[0], key[1], outcome, self.now, error)
                entry.state = outcome
                if outcome == "acked":
                    self.acked_ever.add(key)
            entry.attempts += 1

    @rule()
    def crash_and_restart(self) -> None:
        self.restart()

    @precondition(lambda self: bool(self.pending()))
    @rule()
    def wait_for_the_next_retry(self) -> None:
        """Wall time reaches the earliest pending `next_at`: that key must then be due."""
        earliest = min(e.next_at for e in self.pending().values())
        self.now = max(self.now, earliest)
        assert self.expected_due(self.now)
        self.check_due(self.store.due(self.now, EVERYTHING), self.now)

    # --- invariants -----------------------------------------------------------------------------

    @invariant()
    def due_now_is_exactly_the_pending_ones_past_their_time(self) -> None:
        self.check_due(self.store.due(self.now, EVERYTHING), self.now)

    @invariant()
    def nothing_pending_is_ever_lost(self) -> None:
        """Whenever the wall reaches every pending `next_at`, every pending key is due."""
        latest = max((e.next_at for e in self.model.values()), default=self.now)
        later = max(self.now, latest)
        rows = self.store.due(later, EVERYTHING)
        self.check_due(rows, later)
        assert {(r.order_id, r.measurement_type) for r in rows} == set(self.pending())

    @invariant()
    def backlog_counts_the_pending_ones(self) -> None:
        pending = self.pending()
        oldest = min((e.enqueued_at for e in pending.values()), default=None)
        assert self.store.outbox_backlog() == (len(pending), oldest)

    @invariant()
    def every_row_is_as_the_model_says(self) -> None:
        rows = {(r.order_id, r.measurement_type): r for r in self.store.outbox()}
        assert set(rows) == set(self.model)
        for key, row in rows.items():
            entry = self.model[key]
            assert (row.body, row.state, row.attempts, row.enqueued_at) == (
                entry.body,
                entry.state,
                entry.attempts,
                entry.enqueued_at,
            )
            if entry.state == "pending":
                assert row.next_at == entry.next_at
                assert row.done_at is None
            else:
                assert row.done_at is not None


OutboxMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestOutboxMachine = OutboxMachine.TestCase


def test_a_second_enqueue_keeps_the_first_body_even_after_the_ack(tmp_path: Path) -> None:
    """The example behind the first invariant, on a file, across a restart."""
    path = tmp_path / "flexbot.db"
    store = Store.open(path)
    try:
        assert store.enqueue("o-1", "metering", '{"v": "first"}', START)
        assert not store.enqueue("o-1", "metering", '{"v": "second"}', START + 1)
        (row,) = store.due(START)
        assert row.body == '{"v": "first"}'
        store.settle("o-1", "metering", "acked", START + 2, None)
    finally:
        store.close()
    store = Store.open(path)
    try:
        assert not store.enqueue("o-1", "metering", '{"v": "third"}', START + 3)
        assert store.due(START + 10**6) == []
        (after,) = store.outbox()
        assert (after.body, after.state, after.attempts) == ('{"v": "first"}', "acked", 1)
        assert store.outbox_backlog() == (0, None)
    finally:
        store.close()
