"""Property tests of the delivery buffers (flexbot.buffers), the rules of ARCHITECTURE.md:

- `Conflator` (order books): the writer never waits, a reader gets the newest value, never a
  backlog, never an older value after a newer one, and `replaced` counts what it skipped;
- `DropOldest` (ticker, expired orders): the writer never waits, items come out in order, and on
  overflow exactly the oldest are dropped and counted;
- `Backlog` with a key (a strategy's own-order changes), the one implementation behind both:
  checked against a model by a rule-based state machine (never more than its capacity, the line
  in the order of the latest puts, the latest item of a key kept, drop and replace counts exact),
  and with
  several buffers sharing one parking lot, as an inbox reads them;
- `BoundedSet` (the verifier's and the alarms' memories): never more than its capacity, the
  longest unused key forgotten first, counted.

Each example runs in its own `trio.run` on a `MockClock` that jumps ahead whenever every task is
asleep, so schedules of writers and readers are deterministic and take no real time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from flexbot.buffers import Backlog, BoundedSet, Closed, Conflator, DropOldest


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# Sleeps of a writer or reader between steps: 0 (no wait, not even a checkpoint) or a few ticks.
pauses = st.lists(st.sampled_from([0, 0, 1, 2, 3, 5]), min_size=1, max_size=60)


async def pause(ticks: int) -> None:
    if ticks:
        await trio.sleep(ticks * 0.001)


# --- Conflator ------------------------------------------------------------------------------------


@given(st.lists(st.one_of(st.integers(), st.none()), max_size=100))
def test_conflator_put_never_waits_and_keeps_only_the_newest(values: list[int | None]) -> None:
    async def main() -> None:
        conflator: Conflator[int | None] = Conflator()
        with trio.testing.assert_no_checkpoints():
            for value in values:
                conflator.put(value)
        assert conflator.replaced == max(0, len(values) - 1)
        if values:
            with trio.testing.assert_no_checkpoints():  # a held value is handed over at once
                assert await conflator.get() == values[-1]
        with trio.move_on_after(1) as waited:
            await conflator.get()
        assert waited.cancelled_caught  # nothing more: the older values are gone

    run(main)


@given(st.lists(st.one_of(st.just("get"), st.integers(min_value=0, max_value=5)), max_size=100))
def test_conflator_matches_a_one_slot_model(script: list[str | int]) -> None:
    """Any sequence of puts and (non-waiting) gets behaves like a single overwritten slot."""

    async def main() -> None:
        conflator: Conflator[int] = Conflator()
        slot: list[int] = []
        replaced = 0
        for step in script:
            if step == "get":
                if not slot:
                    continue  # a get would wait; the concurrent tests cover waiting
                assert await conflator.get() == slot.pop()
            else:
                assert isinstance(step, int)
                replaced += bool(slot)
                slot[:] = [step]
                conflator.put(step)
            assert conflator.replaced == replaced

    run(main)


@settings(max_examples=200)
@given(writer=pauses, reader=pauses)
def test_conflator_reader_gets_an_ordered_subsequence_ending_with_the_newest(
    writer: list[int], reader: list[int]
) -> None:
    """A writer puts 0, 1, 2, … at its own pace, a reader reads at another: the reader sees
    increasing values (a subsequence of the puts, nothing reordered or repeated), each one the
    newest put at the moment it is read, the last value put is never lost, and `replaced` counts
    exactly the values nobody read."""

    async def main() -> None:
        conflator: Conflator[int] = Conflator()
        newest: list[int] = []
        seen: list[int] = []

        async def write() -> None:
            for i, ticks in enumerate(writer):
                await pause(ticks)
                conflator.put(i)
                newest.append(i)
            conflator.close()

        async def read() -> None:
            step = 0
            while True:
                try:
                    value = await conflator.get()
                except Closed:
                    return
                assert value == newest[-1]  # the newest at the time of reading
                seen.append(value)
                await pause(reader[step % len(reader)])
                step += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(write)
        assert seen == sorted(set(seen))
        assert seen[-1] == len(writer) - 1
        assert conflator.replaced == len(writer) - len(seen)

    run(main)


def test_conflator_close_wakes_a_waiting_reader_and_refuses_puts() -> None:
    async def main() -> None:
        conflator: Conflator[str] = Conflator()
        outcome: list[str] = []

        async def reader() -> None:
            try:
                await conflator.get()
            except Closed:
                outcome.append("closed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            conflator.close()
        assert outcome == ["closed"]
        with pytest.raises(Closed):
            conflator.put("late")

    run(main)


def test_conflator_hands_over_a_value_held_at_close_then_reports_closed() -> None:
    async def main() -> None:
        conflator: Conflator[str] = Conflator()
        conflator.put("a")
        conflator.put("b")
        conflator.close()
        assert await conflator.get() == "b"
        with pytest.raises(Closed):
            await conflator.get()

    run(main)


# --- DropOldest -----------------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=20), st.lists(st.integers(), max_size=80))
def test_drop_oldest_keeps_the_last_maxlen_items_of_a_burst(maxlen: int, burst: list[int]) -> None:
    async def main() -> None:
        buffer: DropOldest[int] = DropOldest(maxlen)
        with trio.testing.assert_no_checkpoints():
            kept = [buffer.put(item) for item in burst]
        assert kept == [i < maxlen for i in range(len(burst))]
        assert buffer.dropped == max(0, len(burst) - maxlen)
        assert len(buffer) == min(len(burst), maxlen)
        out = []
        with trio.testing.assert_no_checkpoints():
            while len(buffer):
                out.append(await buffer.get())
        assert out == burst[-maxlen:] if burst else out == []

    run(main)


@given(
    st.integers(min_value=1, max_value=8),
    st.lists(st.one_of(st.just("get"), st.integers()), max_size=120),
)
def test_drop_oldest_matches_a_bounded_fifo_model(maxlen: int, script: list[str | int]) -> None:
    async def main() -> None:
        buffer: DropOldest[int] = DropOldest(maxlen)
        model: deque[int] = deque()
        dropped = 0
        for step in script:
            if step == "get":
                if model:
                    assert await buffer.get() == model.popleft()
            else:
                assert isinstance(step, int)
                full = len(model) == maxlen
                if full:
                    model.popleft()
                    dropped += 1
                model.append(step)
                assert buffer.put(step) is not full
            assert buffer.dropped == dropped
            assert len(buffer) == len(model)

    run(main)


@settings(max_examples=200)
@given(maxlen=st.integers(min_value=1, max_value=6), writer=pauses, reader=pauses)
def test_drop_oldest_reader_sees_items_in_order_and_every_loss_is_counted(
    maxlen: int, writer: list[int], reader: list[int]
) -> None:
    async def main() -> None:
        buffer: DropOldest[int] = DropOldest(maxlen)
        seen: list[int] = []

        async def write() -> None:
            for i, ticks in enumerate(writer):
                await pause(ticks)
                buffer.put(i)
            buffer.close()

        async def read() -> None:
            step = 0
            while True:
                try:
                    seen.append(await buffer.get())
                except Closed:
                    return
                await pause(reader[step % len(reader)])
                step += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(write)
        assert seen == sorted(set(seen))  # in order, none twice
        assert len(seen) + buffer.dropped == len(writer)  # every item read or counted
        # What is lost is always older than what is delivered after it: the tail survives.
        tail = list(range(len(writer)))[-min(maxlen, len(writer)) :]
        assert seen[-len(tail) :] == tail

    run(main)


def test_drop_oldest_close_wakes_a_reader_drains_what_is_left_and_refuses_puts() -> None:
    async def main() -> None:
        buffer: DropOldest[str] = DropOldest(3)
        outcome: list[str] = []

        async def reader() -> None:
            try:
                await buffer.get()
            except Closed:
                outcome.append("closed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            buffer.close()
        assert outcome == ["closed"]

        full: DropOldest[str] = DropOldest(2)
        for item in "abc":
            full.put(item)
        full.close()
        with pytest.raises(Closed):
            full.put("d")
        assert [await full.get(), await full.get()] == ["b", "c"]
        with pytest.raises(Closed):
            await full.get()
        assert full.dropped == 1

    run(main)


def test_drop_oldest_needs_room_for_one_item() -> None:
    with pytest.raises(ValueError, match="at least one"):
        DropOldest(0)


# --- Backlog, keyed: a rule-based model -----------------------------------------------------------

Entry = tuple[int, int]  # (key, serial): the key function takes the first; serials are unique


class BacklogMachine(RuleBasedStateMachine):
    """Puts and takes in any order against a list model of (key, item) in line. With `keyed`
    false the buffer is a plain bounded FIFO (every item its own key)."""

    def __init__(self) -> None:
        super().__init__()
        self.capacity = 1
        self.keyed = True
        self.buffer: Backlog[Entry] = Backlog(1)
        self.line: list[Entry] = []
        self.serial = 0
        self.dropped = 0
        self.replaced = 0
        self.told: list[Entry] = []  # what on_drop was told
        self.lost: list[Entry] = []  # what the model dropped

    @initialize(capacity=st.integers(min_value=1, max_value=6), keyed=st.booleans())
    def make(self, capacity: int, keyed: bool) -> None:
        self.capacity, self.keyed = capacity, keyed
        self.buffer = Backlog(
            capacity, key=(lambda entry: entry[0]) if keyed else None, on_drop=self.told.append
        )

    @rule(key=st.integers(min_value=0, max_value=8))
    def put(self, key: int) -> None:
        self.serial += 1
        entry = (key, self.serial)
        same = [i for i, (k, _) in enumerate(self.line) if k == key] if self.keyed else []
        if same:
            del self.line[same[0]]  # the newest joins the back of the line
            self.line.append(entry)
            self.replaced += 1
            expect_kept = True
        else:
            expect_kept = len(self.line) < self.capacity
            if not expect_kept:
                self.lost.append(self.line.pop(0))
                self.dropped += 1
            self.line.append(entry)
        assert self.buffer.put(entry) is expect_kept  # synchronous: the writer never waits

    @precondition(lambda self: bool(self.line))
    @rule()
    def take(self) -> None:
        assert self.buffer.take_nowait() == self.line.pop(0)

    @precondition(lambda self: not self.line)
    @rule()
    def take_from_empty(self) -> None:
        with pytest.raises(trio.WouldBlock):
            self.buffer.take_nowait()

    @rule()
    def supersede_all(self) -> None:
        assert self.buffer.supersede_all() == self.line
        self.replaced += len(self.line)
        self.line.clear()

    @invariant()
    def never_more_than_its_capacity(self) -> None:
        assert len(self.buffer) == len(self.line) <= self.capacity
        assert self.buffer.full is (len(self.line) == self.capacity)

    @invariant()
    def counts_are_exact(self) -> None:
        assert self.buffer.dropped == self.dropped
        assert self.buffer.replaced == self.replaced
        assert self.told == self.lost  # each dropped item, oldest first

    @invariant()
    def a_key_waits_once_and_the_line_is_in_the_order_of_the_puts(self) -> None:
        serials = [serial for _, serial in self.line]
        assert serials == sorted(serials)
        if self.keyed:
            keys = [k for k, _ in self.line]
            assert len(keys) == len(set(keys))


BacklogMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60)
test_backlog_matches_its_model = BacklogMachine.TestCase


@given(
    capacity=st.integers(min_value=1, max_value=5),
    script=st.lists(st.integers(min_value=0, max_value=6), max_size=60),
)
def test_a_keyed_burst_reads_as_the_latest_item_of_each_key_in_the_order_of_the_puts(
    capacity: int, script: list[int]
) -> None:
    """Keys are orders, items their successive states: after any burst, reading it all gives each
    key at most once, with its newest state, newest puts last; what is missing was dropped at the
    cap (the keys whose latest put is oldest) or replaced, and counted."""
    backlog: Backlog[Entry] = Backlog(capacity, key=lambda entry: entry[0])
    for serial, key in enumerate(script):
        backlog.put((key, serial))
    out = []
    while backlog:
        out.append(backlog.take_nowait())
    keys = [k for k, _ in out]
    assert len(keys) == len(set(keys))
    last = {key: serial for serial, key in enumerate(script)}
    assert all(last[key] == serial for key, serial in out)
    # The keys kept are those whose latest puts are the newest.
    assert [serial for _, serial in out] == sorted(last.values())[len(last) - len(out) :]
    assert len(out) + backlog.dropped + backlog.replaced == len(script)


def test_buffers_sharing_a_lot_wake_one_reader_that_picks_by_priority() -> None:
    """An inbox's way: one parking lot, several buffers, the reader takes the most urgent."""

    async def main() -> None:
        lot = trio.lowlevel.ParkingLot()
        urgent: Backlog[str] = Backlog(4, key=lambda s: s[0], lot=lot)
        facts: DropOldest[str] = DropOldest(2, lot=lot)
        book: Conflator[str] = Conflator(lot=lot)
        got: list[str] = []

        async def reader() -> None:
            while len(got) < 5:
                for buffer in (urgent, facts, book):
                    if buffer:
                        got.append(buffer.take_nowait())
                        break
                else:
                    await lot.park()
                    continue
                await trio.sleep(0.001)  # a slow reader: the writers run ahead

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                book.put("book-1")
                await trio.testing.wait_all_tasks_blocked()  # the reader woke and took it
                for item in ("f1", "f2", "f3"):
                    facts.put(item)
                book.put("book-2")
                urgent.put("a1")
                urgent.put("a2")  # replaces a1
        assert got == ["book-1", "a2", "f2", "f3", "book-2"]
        assert (facts.dropped, urgent.replaced, book.replaced) == (1, 1, 0)

    run(main)


def test_a_backlog_needs_room_for_one_item() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Backlog(0)


# --- BoundedSet -----------------------------------------------------------------------------------


@given(
    capacity=st.integers(min_value=1, max_value=6),
    script=st.lists(
        st.one_of(st.integers(0, 9), st.tuples(st.just("discard"), st.integers(0, 9))),
        max_size=80,
    ),
)
def test_bounded_set_forgets_the_longest_unused_key_first_and_counts_it(
    capacity: int, script: list[int | tuple[str, int]]
) -> None:
    memory: BoundedSet[int] = BoundedSet(capacity)
    order: list[int] = []  # least recently added first
    forgotten = 0
    for step in script:
        if isinstance(step, tuple):
            memory.discard(step[1])
            if step[1] in order:
                order.remove(step[1])
            continue
        if step in order:
            order.remove(step)
        elif len(order) == capacity:
            order.pop(0)
            forgotten += 1
        order.append(step)
        memory.add(step)
        assert len(memory) <= capacity
    assert list(memory) == order
    assert memory.dropped == forgotten
    assert all(key in memory for key in order)


def test_bounded_set_retain_lets_go_on_purpose_uncounted() -> None:
    memory: BoundedSet[str] = BoundedSet(10)
    for key in "abcdef":
        memory.add(key)
    assert memory.retain(lambda key: key in "ace") == 3
    assert list(memory) == ["a", "c", "e"]
    assert memory.dropped == 0
    with pytest.raises(ValueError, match="at least one"):
        BoundedSet(0)
