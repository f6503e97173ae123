"""`GroupCommit`: writes that many tasks make at once go in few transactions, and none of them
returns before its own item is committed, in a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.lowlevel

from flexbot.store import AsyncStore, GroupCommit, Outcome, Store

pytestmark = pytest.mark.anyio


def outbox_of(store: Store, count: int) -> None:
    store.enqueue_many([(f"o-{i}", "metering", "{}") for i in range(count)], 0.0)


def acked(store: Store) -> set[str]:
    return {row.order_id for row in store.outbox() if row.state == "acked"}


async def test_outcomes_added_together_are_committed_together_and_each_waits_for_its_own(
    tmp_path: Path,
) -> None:
    store = AsyncStore(Store.open(tmp_path / "flexbot.db"))
    outbox_of(store.sync, 50)
    group: GroupCommit[Outcome] = GroupCommit(store, Store.outcomes)
    seen_committed: list[bool] = []

    async def settle(i: int) -> None:
        await group.add(Outcome(f"o-{i}", "metering", "acked", 1.0))
        seen_committed.append(f"o-{i}" in acked(store.sync))  # on disk when add returns

    async with trio.open_nursery() as nursery:
        await nursery.start(group.run)
        async with trio.open_nursery() as senders:
            for i in range(50):
                senders.start_soon(settle, i)
        nursery.cancel_scope.cancel()
    assert seen_committed == [True] * 50
    assert acked(store.sync) == {f"o-{i}" for i in range(50)}
    assert group.commits < 10  # not one a submission
    store.sync.close()


async def test_without_its_writer_each_add_commits_by_itself(tmp_path: Path) -> None:
    store = AsyncStore(Store.open(tmp_path / "flexbot.db"))
    outbox_of(store.sync, 3)
    group: GroupCommit[Outcome] = GroupCommit(store, Store.outcomes)
    for i in range(3):
        await group.add(Outcome(f"o-{i}", "metering", "failed", 1.0, "refused"))
    assert group.commits == 3
    assert {row.state for row in store.sync.outbox()} == {"failed"}
    store.sync.close()


async def test_items_that_come_as_the_writer_ends_are_still_written(
    tmp_path: Path,
) -> None:
    store = AsyncStore(Store.open(tmp_path / "flexbot.db"))
    outbox_of(store.sync, 2)
    group: GroupCommit[Outcome] = GroupCommit(store, Store.outcomes)
    async with trio.open_nursery() as outer:
        writer = trio.CancelScope()

        async def run_writer() -> None:
            with writer:
                await group.run()

        outer.start_soon(run_writer)
        while not group._running:
            await trio.lowlevel.checkpoint()
        writer.cancel()  # ends before it takes what comes next (a shutdown)
        outer.start_soon(group.add, Outcome("o-0", "metering", "acked", 1.0))
        outer.start_soon(group.add, Outcome("o-1", "metering", "acked", 1.0))
    assert acked(store.sync) == {"o-0", "o-1"}
    store.sync.close()


async def test_a_stop_that_cancels_the_writer_and_its_waiters_together_loses_no_item(
    tmp_path: Path,
) -> None:
    """The owner's nursery is cancelled while outcomes wait for their commit (a daemon's stop):
    the writer writes them on its way out, so no acknowledged submission is sent again."""
    store = AsyncStore(Store.open(tmp_path / "flexbot.db"))
    outbox_of(store.sync, 20)
    group: GroupCommit[Outcome] = GroupCommit(store, Store.outcomes)
    async with trio.open_nursery() as nursery:
        await nursery.start(group.run)
        for i in range(20):
            nursery.start_soon(group.add, Outcome(f"o-{i}", "metering", "acked", 1.0))
        await trio.lowlevel.checkpoint()  # the adds are queued, most still waiting for a commit
        nursery.cancel_scope.cancel()
    assert acked(store.sync) == {f"o-{i}" for i in range(20)}
    store.sync.close()
