"""Baselines and metering, submitted automatically through a durable outbox.

What is submitted, and when:
- **baseline**: a sell order placed without one (its strategy gave none) waits for it before the
  market matches it; it is built at once from the location's meter history by the meter's
  baseline method, and submitted.
- **metering**: a sell order with a contract, once market time has passed the window's end plus
  `settle_delay_s` (late meter data may still arrive); built from the stored readings. If a quarter
  is still flagged (a gap, data missing), it waits up to `max_wait_s` after the window's end, then
  sends what it has and logs `metering.incomplete`: late is acceptable, never silent.

The outbox (SQLite, committed before anything is sent) holds each submission under (order id,
measurement type): enqueued once, its exact body stored and resent unchanged, retried with capped
jittered backoff until the market acknowledges (any 2xx), and resumed after a restart. Writes are
group-committed: a scan enqueues all it found due in one transaction, and the outcomes of
submissions sent together are committed together (`GroupCommit`: one fsync for many, none sent
before its enqueue committed, none reported before its outcome did). A 409 that
says the data was already received counts as done; a baseline refused because its order was
cancelled or matched meanwhile is obsolete (`verification.obsolete`); any other refusal is final
and logged with the market's words (`verification.failed`). Outcomes then arrive as contract
updates on `/trade`: `verification.accepted`, `verification.rejected` (with the market's reason),
`settlement.completed`.

Memory stays bounded over months. What the verifier remembers (the outbox keys it knows are held,
so that a scan does not rebuild a reading the store already has; the problems and outcomes it
logged once) is about orders the tracker holds, and is let go with them; behind that, each memory
is a `BoundedSet` of `memory_capacity` keys that forgets the oldest beyond it (counted, visible as
`flexbot_backlog_dropped_total{backlog="verifier_enqueued"}` and the `backlog_full` alarm).
Forgetting costs only work: a forgotten outbox key makes the next scan build the reading again,
and the store's `enqueue` (once per key, `INSERT OR IGNORE`) keeps the submission exactly-once; a
forgotten "logged once" may log a line again. At start only the outbox keys of the tracked orders
are read, not the whole outbox history.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal

import trio
from attrs import Attribute, field, frozen

from flexbot import logs, model, wire
from flexbot.backoff import Backoff
from flexbot.buffers import BoundedSet
from flexbot.clock import Clock
from flexbot.engine.orders import Change, Intent, OrderTracker
from flexbot.market import Conflict, MarketClient, MarketError, NotFound, Rejected
from flexbot.meters import retention
from flexbot.meters.builder import meter_reading
from flexbot.meters.pool import MeterBaselineUnavailable, Meters, Pool
from flexbot.meters.source import MeterSettings
from flexbot.problems import Invalid
from flexbot.store import AsyncStore, GroupCommit, OutboxRow, Outcome, Store
from flexbot.validators import at_least, sane_backoff, seconds

log = logs.get_logger("flexbot.verification")

BASELINE = str(model.MeasurementType.BASELINE)
METERING = str(model.MeasurementType.METERING)
SEND_AHEAD = 4  # sends started per `in_flight` place: the next ones wait ready, not in the store
Due = list[tuple[str, str, model.MeterReading]]  # (order id, measurement type, body) to enqueue


@frozen
class VerificationSettings:
    """The YAML `verification:` section reads into these, key for key (`flexbot.config`)."""

    # Market seconds after delivery end before metering is built (late readings are awaited).
    settle_delay_s: float = field(default=60.0, validator=seconds(zero=True))
    # Market seconds after delivery end: then sent even if incomplete.
    max_wait_s: float = field(default=1800.0, validator=seconds(zero=True))
    # A longer gap between readings flags the quarters it touches.
    max_gap_s: float = field(default=900.0, validator=seconds())
    # Wall seconds between scans of the orders and the outbox.
    interval_s: float = field(default=1.0, validator=seconds())
    in_flight: int = field(default=4, validator=at_least(1))
    # A 422 may be a clock skew: retried this often, then failed.
    max_attempts_refused: int = field(default=5, validator=at_least(1))
    backoff: Backoff = field(default=Backoff(base_s=1.0, cap_s=60.0), validator=sane_backoff)
    # Keys per memory (outbox keys held, lines logged once).
    memory_capacity: int = field(default=65_536, validator=at_least(1))
    # Market seconds a raw reading is kept before its quarter hour is rolled up and it is let go
    # (flexbot.meters.retention): late readings are awaited this long at most.
    raw_kept_s: float = field(default=2 * 86_400.0, validator=seconds())
    # Wall seconds between roll-ups.
    rollup_interval_s: float = field(default=3_600.0, validator=seconds())

    @raw_kept_s.validator
    def _outlives_the_wait(self, attribute: Attribute[float], value: float) -> None:
        # Metering waits up to max_wait_s for late readings: they must still be raw then.
        if value < self.max_wait_s:
            raise Invalid.single(
                (attribute.name,), f"must be at least max_wait_s ({self.max_wait_s}), got {value}"
            )


class Verifier:
    def __init__(
        self,
        settings: VerificationSettings,
        *,
        tracker: OrderTracker,
        store: AsyncStore,
        client: MarketClient,
        clock: Clock,
        meters: Sequence[MeterSettings],
        wall: Callable[[], float] = time.time,  # outbox times outlive the process: wall clock
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._tracker = tracker
        self._store = store
        self._client = client
        self._clock = clock
        self._meters = Meters(meters, store, max_gap_s=settings.max_gap_s)
        self._wall = wall
        self._rng = rng or random.Random()
        capacity = settings.memory_capacity
        # Keys known to be in the outbox: (order id, measurement type).
        self.enqueued: BoundedSet[tuple[str, str]] = BoundedSet(capacity)
        # Logged once: (order id, problem), (order id, contract id, status).
        self._warned: BoundedSet[tuple[str, str]] = BoundedSet(capacity)
        self._outcomes: BoundedSet[tuple[str, str, str]] = BoundedSet(capacity)
        self._wake = trio.Event()
        self._in_flight: set[tuple[str, str]] = set()  # a key is sent by one task at a time
        self._unsent = 0  # of those, the ones not sent yet (waiting for a place, or sending)
        # What became of sent submissions, committed together (one fsync for many).
        self._results: GroupCommit[Outcome] = GroupCommit(store, Store.outcomes)
        self.sent = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        tracked = [i.order_id for i in self._tracker if i.order_id is not None and not i.dry_run]
        for key in await self._store.run(_outbox_keys, self._store.sync, tracked):
            self.enqueued.add(key)
        async with trio.open_nursery() as nursery:
            await nursery.start(self._results.run)
            nursery.start_soon(self._scan_loop)
            nursery.start_soon(self._send_loop)
            nursery.start_soon(self._retention_loop)
            task_status.started()

    async def _retention_loop(self) -> None:
        """Roll up what no late reading may change any more, and let the raw readings go."""
        raw_kept = timedelta(seconds=self.settings.raw_kept_s)
        while True:
            # Not at once: at a start, the meter sources catch up first.
            await trio.sleep(self.settings.rollup_interval_s)
            rolled = await retention.roll_up(self._meters, self._clock.now(), raw_kept)
            if rolled.meters:
                log.info(
                    "meters.rolled_up",
                    meters=rolled.meters,
                    quarters=rolled.quarters,
                    raw_deleted=rolled.raw_deleted,
                    quarters_deleted=rolled.quarters_deleted,
                )

    # --- deciding what to submit ----------------------------------------------------------------

    async def _scan_loop(self) -> None:
        while True:
            await self.scan()
            await trio.sleep(self.settings.interval_s)

    async def scan(self) -> int:
        """Enqueue what is due, all in one transaction; returns how many were enqueued."""
        now = self._clock.now()
        due: list[tuple[str, str, model.MeterReading]] = []
        for intent in self._tracker:
            order = intent.order
            if intent.dry_run or intent.order_id is None or order is None:
                continue
            if intent.request.side is not model.Side.SELL:
                continue
            if intent.request.baseline is None and order.baseline is None and not order.is_final:
                await self._baseline(intent, intent.order_id, now, due)
            if order.contracts:
                await self._metering(intent, intent.order_id, now, due)
        added = await self._enqueue(due)
        if added:
            self._wake.set()
        self._let_go()
        return added

    def _let_go(self) -> None:
        """Forget what is about orders the tracker no longer holds (it let them go, settled and
        long past): they are not scanned again."""
        tracker = self._tracker
        self.enqueued.retain(lambda key: tracker.by_order_id(key[0]) is not None)
        self._warned.retain(lambda key: tracker.by_order_id(key[0]) is not None)
        self._outcomes.retain(lambda key: tracker.by_order_id(key[0]) is not None)

    async def _baseline(self, intent: Intent, order_id: str, now: datetime, due: Due) -> None:
        if (order_id, BASELINE) in self.enqueued:
            return
        pool = self._pool_of(intent, order_id)
        if pool is None:
            return
        start, end = intent.request.delivery_start, intent.request.delivery_end
        try:
            points = await self._meters.baseline(pool, start, end)
        except MeterBaselineUnavailable as exc:
            self._warn_once(order_id, "baseline.unavailable", meter=exc.meter, reason=exc.reason)
            return
        due.append((order_id, BASELINE, meter_reading(points, start, end, created_at=now)))

    async def _metering(self, intent: Intent, order_id: str, now: datetime, due: Due) -> None:
        if (order_id, METERING) in self.enqueued:
            return
        end = intent.request.delivery_end
        if now < end + timedelta(seconds=self.settings.settle_delay_s):
            return
        pool = self._pool_of(intent, order_id)
        if pool is None:
            return
        start = intent.request.delivery_start
        points, flagged_meters = await self._meters.metering(pool, start, end)
        flagged = [q for q in points if q.flagged]
        if flagged:
            if now < end + timedelta(seconds=self.settings.max_wait_s):
                return  # data may still come
            log.warning(
                "metering.incomplete",
                order_id=order_id,
                meter=flagged_meters[0],
                meters=flagged_meters,
                flagged=[wire.format_datetime(q.end) for q in flagged],
            )
        due.append((order_id, METERING, meter_reading(points, start, end, created_at=now)))

    def _pool_of(self, intent: Intent, order_id: str) -> Pool | None:
        """The meters of every site the order names; None (logged once) if a site has none."""
        pool = self._meters.pool(intent.request.location.location_id)
        if pool.missing or not pool.meters:
            ids = list(pool.missing) or [i for i in intent.request.location.location_id if i]
            self._warn_once(order_id, "meter.missing", location_id=ids)
            return None
        return pool

    async def _enqueue(self, due: Due) -> int:
        """Commit the due submissions together (one fsync); none is sent before its commit (the
        sender reads what the store holds)."""
        if not due:
            return 0
        rows = [(order_id, kind, wire.dumps(reading).decode()) for order_id, kind, reading in due]
        added = await self._store.run(self._store.sync.enqueue_many, rows, self._wall())
        for (order_id, kind, _), new in zip(rows, added, strict=True):
            self.enqueued.add((order_id, kind))
            if new:
                log.info("verification.enqueued", order_id=order_id, measurement_type=kind)
        return sum(added)

    def _warn_once(self, order_id: str, event: str, **fields: object) -> None:
        if (order_id, event) not in self._warned:
            self._warned.add((order_id, event))
            log.warning(event, order_id=order_id, **fields)

    @property
    def results_committed(self) -> int:
        """Transactions that committed outcomes (fewer than outcomes: they are grouped)."""
        return self._results.commits

    async def drain(self) -> int:
        """Send what is due now, once (at shutdown; the caller bounds the time). Returns how many
        submissions are still pending afterwards."""
        due = await self._store.run(self._store.sync.due, self._wall(), 256)
        limiter = trio.CapacityLimiter(self.settings.in_flight)
        async with trio.open_nursery() as nursery:
            for row in due:
                if self._claim(row):
                    nursery.start_soon(self._send_one, row, limiter)
        pending, _ = await self._store.run(self._store.sync.outbox_backlog)
        return pending

    # --- sending --------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        """Keep the `in_flight` places busy: what is due is read again when only the places' worth
        of sends are left to make (those waiting for their outcome's commit do not count), not
        after a whole batch has ended, so neither a slow send nor a commit holds up the others."""
        limiter = trio.CapacityLimiter(self.settings.in_flight)
        most = SEND_AHEAD * self.settings.in_flight  # sends not yet made, waiting for a place
        async with trio.open_nursery() as nursery:
            while True:
                room = most - self._unsent
                started = 0
                if room > 0:
                    limit = room + len(self._in_flight)  # in-flight rows are still pending
                    for row in await self._store.run(self._store.sync.due, self._wall(), limit):
                        if started < room and self._claim(row):
                            nursery.start_soon(self._send_one, row, limiter)
                            started += 1
                if started:
                    continue
                with trio.move_on_after(self.settings.interval_s):
                    await self._wake.wait()
                self._wake = trio.Event()

    def _claim(self, row: OutboxRow) -> bool:
        """Take the row for one send: the send loop and a drain may both read it as due. It is
        held until its outcome is committed (till then the store still calls it due)."""
        key = (row.order_id, row.measurement_type)
        if key in self._in_flight:
            return False
        self._in_flight.add(key)
        self._unsent += 1
        return True

    async def _send_one(self, row: OutboxRow, limiter: trio.CapacityLimiter) -> None:
        try:
            await self._send_row(row, limiter)
        finally:
            self._in_flight.discard((row.order_id, row.measurement_type))

    async def _send_row(self, row: OutboxRow, limiter: trio.CapacityLimiter) -> None:
        """Send (holding one of the `in_flight` places only for the request), then commit what
        became of it with the outcomes of the others sent meanwhile."""
        try:
            async with limiter:
                state, error = await self._submit(row)
        finally:
            self._unsent -= 1
            if self._unsent <= self.settings.in_flight:
                self._wake.set()  # only the places' worth are left to send: read more
        if state == "pending":
            await self._later(row, error or "")
        else:
            await self._finish(row, state, error)

    async def _submit(self, row: OutboxRow) -> tuple[str, str | None]:
        """(state, error): acked, obsolete, failed, or pending (to be retried)."""
        reading = wire.decode(row.body, model.MeterReading)
        kind, order_id = row.measurement_type, row.order_id
        try:
            if kind == BASELINE:
                await self._client.submit_baseline(order_id, reading)
            else:
                await self._client.submit_metering(order_id, reading)
        except Conflict as exc:
            if "already" in str(exc).lower():
                return "acked", str(exc)  # the market has it: done
            if kind == BASELINE and self._order_moved_on(order_id):
                return "obsolete", str(exc)  # cancelled or matched meanwhile: nothing left to do
            return "failed", str(exc)
        except (NotFound, Rejected) as exc:
            refused_again = row.attempts + 1 < self.settings.max_attempts_refused
            if isinstance(exc, Rejected) and refused_again:
                return "pending", str(exc)
            return "failed", str(exc)
        except MarketError as exc:
            return "pending", str(exc)
        return "acked", None

    async def _finish(self, row: OutboxRow, state: str, error: str | None) -> None:
        await self._results.add(
            Outcome(row.order_id, row.measurement_type, state, self._wall(), error)
        )
        fields = {"order_id": row.order_id, "measurement_type": row.measurement_type}
        if state == "acked" and error is not None:
            # The market holds a submission for this key that is not ours (sent by hand, or by
            # another installation): done, but worth a look.
            self.sent += 1
            log.warning("verification.already_received", **fields, reason=error)
        elif state == "acked":
            self.sent += 1
            log.info("verification.submitted", **fields, attempts=row.attempts + 1)
        elif state == "obsolete":
            log.info("verification.obsolete", **fields, reason=error)
        else:
            log.error("verification.failed", **fields, reason=error, attempts=row.attempts + 1)

    def _order_moved_on(self, order_id: str) -> bool:
        intent = self._tracker.by_order_id(order_id)
        order = intent.order if intent is not None else None
        return order is not None and (order.is_final or bool(order.contracts))

    async def _later(self, row: OutboxRow, error: str) -> None:
        delay = self.settings.backoff.delay(row.attempts, self._rng)
        retry_at = self._wall() + delay
        await self._results.add(
            Outcome(row.order_id, row.measurement_type, "pending", retry_at, error)
        )
        log.info(
            "verification.retry",
            order_id=row.order_id,
            measurement_type=row.measurement_type,
            attempt=row.attempts + 1,
            delay_s=round(delay, 2),
            reason=error[:200],
        )

    # --- outcomes -------------------------------------------------------------------------------

    def observe(self, change: Change) -> None:
        """An engine observer: log each verification and settlement outcome once."""
        contract = change.contract
        if contract is None:
            return
        key = (change.order.order_id or "", contract.contract_id, str(contract.status))
        if key in self._outcomes:
            return
        self._outcomes.add(key)
        fields = {"contract_id": contract.contract_id, "order_id": change.order.order_id}
        verification = contract.verification_result
        result = verification.result if verification else None
        if contract.status == model.ContractStatus.VERIFICATION_COMPLETED_SUCCESS:
            pct = result.delivered_percentage if result else None
            log.info("verification.accepted", **fields, delivered_pct=_num(pct))
        elif contract.status == model.ContractStatus.VERIFICATION_COMPLETED_FAILED:
            reason = verification.reason if verification else None
            log.warning("verification.rejected", **fields, reason=reason)
        elif contract.status == model.ContractStatus.SETTLEMENT_COMPLETED_SUCCESS:
            amount = contract.settlement.amount_eur if contract.settlement else None
            log.info("settlement.completed", **fields, amount_eur=_num(amount))


def _outbox_keys(store: Store, order_ids: list[str]) -> list[tuple[str, str]]:
    """The outbox keys held for these orders (one lookup each, by the outbox's primary key)."""
    return [(r.order_id, r.measurement_type) for i in order_ids for r in store.outbox(i)]


def _num(value: Decimal | None) -> float | None:
    return None if value is None else float(value)
