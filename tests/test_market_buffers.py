"""Property tests of the delivery buffers (flexbot.market.buffers), the rules of ARCHITECTURE.md:

- `Conflator` (order books): the writer never waits, a reader gets the newest value, never a
  backlog, never an older value after a newer one, and `replaced` counts what it skipped;
- `DropOldest` (ticker, expired orders): the writer never waits, items come out in order, and on
  overflow exactly the oldest are dropped and counted.

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

from flexbot.market.buffers import Closed, Conflator, DropOldest


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
