"""`flexbot run`: one trio nursery that owns the whole trading daemon.

Start-up order is explicit: the config is valid and the store open before anything connects; then
the login, market time, the order tracker restored from the journal, the token refresher, the
meters, the streams (whose `/trade` connect reconciles the journal's open orders), the engine with
its strategies, and the verification outbox (which resumes what a previous run left pending).

Signals: SIGTERM or SIGINT stop gracefully (strategies stopped, open orders cancelled when
`engine.cancel_on_shutdown`, sockets closed, exit 0); a second SIGINT stops at once. SIGHUP reloads
the config: valid changes to strategy params and risk limits apply at once, an invalid config is
reported and the running one kept. SIGUSR1 engages the kill switch (a latch in the store, released
with `flexbot kill-switch release`). Signals are received from the first instant: during start-up a
stop abandons it (nothing trades yet), a SIGHUP waits for the engine, a SIGUSR1 latches at once.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

import httpx
import trio
from attrs import define, field

from flexbot import config, logs, safety, wire
from flexbot.alarms import AlarmBounds, watch_for_silence
from flexbot.assets import Fleet
from flexbot.assets import link as asset_link
from flexbot.assets.link import LocalBus
from flexbot.clock import MarketClock
from flexbot.engine.engine import Engine
from flexbot.engine.killswitch import KillSwitch, engage_latch
from flexbot.engine.orders import OrderTracker, sold_power
from flexbot.engine.recording import MIB, Recorder, RecorderSettings
from flexbot.engine.states import StoredStates
from flexbot.market import MarketSession, connect
from flexbot.meters.hub import MeterHub
from flexbot.mqtt import Broker
from flexbot.parts import Parts, summary_line
from flexbot.safety import SHUTDOWN_TIMEOUT_S
from flexbot.store import AsyncStore, StoreFailed, lock
from flexbot.systemd import Notifier
from flexbot.verification import Verifier

if TYPE_CHECKING:
    from flexbot.metrics import Metrics

log = logs.get_logger("flexbot.daemon")


async def market_clock(market: MarketSession, mode: str) -> MarketClock:
    """Market time: the wall's, or the sandbox's (which may run faster)."""
    if mode != "sandbox":
        return MarketClock()
    response = await market.http.get("/sandbox/clock")
    response.raise_for_status()
    body = response.json()
    clock = MarketClock(float(body["time_scale"]), start=wire.parse_datetime(body["now"]))
    log.info("clock.synced", now=body["now"], time_scale=clock.scale)
    return clock


@define
class Control:
    """What a stop or a signal acts on. It exists from the first instant of the run, so that a
    signal during start-up is never met by the default action (death, no clean stop)."""

    stop: trio.Event
    stop_now: trio.Event = field(factory=trio.Event)
    starting: trio.CancelScope | None = None  # the start-up, abandoned by a stop before the engine
    engine: Engine | None = None
    reload_pending: bool = False  # SIGHUP before the engine: applied once it runs
    reloading: trio.Lock = field(factory=trio.Lock)  # reloads one at a time, in order
    kill_wanted: trio.Event = field(factory=trio.Event)  # SIGUSR1 before the engine
    # The demo's fleet speaks on an in-process bus when no MQTT broker is at hand.
    assets_bus: LocalBus | None = None


async def run(
    loaded: config.LoadedConfig,
    *,
    clock: MarketClock | None = None,
    stop: trio.Event | None = None,
    signals: bool = True,
    started: Callable[[Parts, trio.Nursery], None] | None = None,
    finished: Callable[[Parts], Awaitable[None]] | None = None,
    notifier: Notifier | None = None,
    assets_bus: LocalBus | None = None,
) -> int:
    """Run until a stop signal (or `stop` is set); returns the exit status. The demo passes its
    own `clock`, a `stop` event, callbacks for when it has `started` and has `finished`
    (stopped, the store still open), and the bus its fleet speaks on; `flexbot run` passes
    nothing."""
    control = Control(stop if stop is not None else trio.Event(), assets_bus=assets_bus)
    with contextlib.ExitStack() as stack:
        received = None
        if signals:
            received = stack.enter_context(trio.open_signal_receiver(*HANDLED_SIGNALS))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_abandon_start_on_stop, control)
            if received is not None:
                nursery.start_soon(_handle_signals, received, loaded, control)
            status = await _run(loaded, control, clock, started, finished, notifier or Notifier())
            nursery.cancel_scope.cancel()
    return status


async def _abandon_start_on_stop(control: Control) -> None:
    """A stop before the engine runs abandons the start-up (nothing trades yet); after, the
    running daemon stops gracefully."""
    await control.stop.wait()
    if control.starting is not None:
        control.starting.cancel()


async def _run(
    loaded: config.LoadedConfig,
    control: Control,
    clock: MarketClock | None,
    started: Callable[[Parts, trio.Nursery], None] | None,
    finished: Callable[[Parts], Awaitable[None]] | None,
    notify: Notifier,
) -> int:
    # The store's lock first, for the process's life: a second daemon on this store stops here,
    # having touched nothing, and the first one's orders stay its own.
    with lock.hold(loaded.store_path) as held:
        with trio.CancelScope() as waiting:
            control.starting = waiting
            if control.stop.is_set():
                waiting.cancel()
            sync_store = await safety.usable_store(loaded.store_path, notify)
            held.stamp()  # again: a full disk at start may have kept the pid out of the lock file
        if waiting.cancelled_caught:
            log.info("daemon.stopped", during="start-up")
            return 0
        try:
            return await _run_with(
                loaded, control, AsyncStore(sync_store), clock, started, finished, notify
            )
        finally:
            sync_store.close()


async def _run_with(
    loaded: config.LoadedConfig,
    control: Control,
    store: AsyncStore,
    clock: MarketClock | None,
    started: Callable[[Parts, trio.Nursery], None] | None,
    finished: Callable[[Parts], Awaitable[None]] | None,
    notify: Notifier,
) -> int:
    # The keeper lives within the store's lifetime: a SIGUSR1 during start-up is latched there.
    async with (
        connect(loaded.connection, login=False) as market,
        trio.open_nursery() as keeper,
    ):
        keeper.start_soon(_latch_when_wanted, control, store)
        try:
            with trio.CancelScope() as starting:
                control.starting = starting
                if control.stop.is_set():
                    starting.cancel()
                return await _trade(
                    loaded, control, store, market, clock, started, finished, notify
                )
            # A stop during start-up: nothing traded yet, but orders of the last run may be live.
            if loaded.config.engine.cancel_on_shutdown:
                await safety.cancel_restored(store, market, control.stop_now)
        finally:
            keeper.cancel_scope.cancel()
    if store.failed is not None:  # met during a start-up that a stop then cut short
        raise store.failed
    log.info("daemon.stopped", during="start-up")
    return 0


async def _trade(
    loaded: config.LoadedConfig,
    control: Control,
    store: AsyncStore,
    market: MarketSession,
    clock: MarketClock | None,
    started: Callable[[Parts, trio.Nursery], None] | None,
    finished: Callable[[Parts], Awaitable[None]] | None,
    notify: Notifier,
) -> int:
    """Log in, assemble, start in order, trade until stopped, stop gracefully."""
    cfg = loaded.config
    await market.tokens.login()
    if clock is None:
        try:
            clock = await market_clock(market, cfg.market.clock)
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            log.error("clock.sync_failed", reason=str(exc))
            return 1
    parts = await _assemble(loaded, store, market, clock)
    recorder = _recorder(loaded, clock)
    if recorder is not None:
        parts.feed = market.feed(orders=parts.tracker, recorder=recorder)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(safety.raise_on_failure, store)
            if recorder is not None:  # before the feed: it writes what the feed hands it
                await nursery.start(recorder.run)
            await nursery.start(market.tokens.run)
            await nursery.start(parts.hub.run)
            if parts.fleet is not None:
                await _listen_to_assets(loaded, parts.fleet, store, clock, control, nursery)
            await nursery.start(parts.feed.run)
            await parts.feed.reconciled.wait()  # /trade up, open orders reconciled
            # From here on a stop is a graceful one: strategies may place orders.
            control.starting = None
            await nursery.start(parts.engine.run, parts.feed)
            await _apply_pending(loaded, control, parts.engine)
            await nursery.start(parts.verifier.run)
            metrics: Metrics | None = None
            if cfg.metrics.listen is not None:
                # Imported only when wanted: its web server costs start-up time.
                from flexbot.metrics import Metrics, MetricsSettings

                metrics = Metrics()
                metrics.attach(parts)
                await nursery.start(metrics.serve, MetricsSettings(cfg.metrics.listen))
                nursery.start_soon(metrics.refresh_outbox)
            on_alarms = None if metrics is None else partial(setattr, metrics, "alarms")
            nursery.start_soon(watch_for_silence, parts, notify, AlarmBounds(), on_alarms)
            if started is not None:
                started(parts, nursery)
            log.info(
                "daemon.ready",
                strategies=len(parts.engine.runners),
                restored=len(parts.tracker.live()),
            )
            notify.notify("READY=1", f"STATUS={summary_line(parts)}")
            nursery.start_soon(_heartbeat, store)
            nursery.start_soon(notify.keep_watchdog)  # from here, a stuck loop is fatal
            await control.stop.wait()
            notify.notify("STOPPING=1")
            await _graceful_stop(parts, control.stop_now)
            if finished is not None:
                await finished(parts)
            nursery.cancel_scope.cancel()
    except* StoreFailed:
        pass  # the store latched the first failure: halted below
    if store.failed is not None:
        await safety.halt(parts.tracker, parts.market, store.failed)
        raise store.failed
    log.info("daemon.stopped")
    return 0


def _recorder(loaded: config.LoadedConfig, clock: MarketClock) -> Recorder | None:
    """`engine.record`: its writer runs in the nursery (it flushes what is queued when the
    nursery is cancelled at the end), the feed hands it every frame without waiting."""
    if loaded.record_path is None:
        return None
    engine = loaded.config.engine
    settings = RecorderSettings(max_bytes=engine.record_max_mb * MIB, keep=engine.record_keep)
    return Recorder(loaded.record_path, clock.now, settings)


async def _heartbeat(store: AsyncStore) -> None:
    """READY, then a heartbeat every `HEARTBEAT_S`, in the store: `flexbot status` tells a daemon
    that runs and answers from one whose process holds the lock but is stuck."""
    at = wire.format_datetime(datetime.now(UTC))
    await store.run(store.sync.set_flag, lock.READY_FLAG, at, at)
    while True:
        at = wire.format_datetime(datetime.now(UTC))
        await store.run(store.sync.set_flag, lock.HEARTBEAT_FLAG, at, at)
        await trio.sleep(lock.HEARTBEAT_S)


async def _latch_when_wanted(control: Control, store: AsyncStore) -> None:
    """SIGUSR1 before the engine runs: the latch is set in the store at once (shielded: it is
    written even if the start-up is abandoned meanwhile), so that it holds if the daemon stops
    before trading; the engine finds it when it starts."""
    try:
        await control.kill_wanted.wait()
    finally:
        if control.kill_wanted.is_set():
            with trio.CancelScope(shield=True):
                at = wire.format_datetime(datetime.now(UTC))
                await store.run(engage_latch, store.sync, "SIGUSR1", at)
                log.warning("killswitch.latched", why="SIGUSR1", during="start-up")


async def _apply_pending(loaded: config.LoadedConfig, control: Control, engine: Engine) -> None:
    """The engine runs: signals that came during start-up take effect now."""
    control.engine = engine
    if control.kill_wanted.is_set():
        await engine.engage_kill_switch("SIGUSR1")
    if control.reload_pending:
        await _reload(loaded, engine, control.reloading)


async def _listen_to_assets(
    loaded: config.LoadedConfig,
    fleet: Fleet,
    store: AsyncStore,
    clock: MarketClock,
    control: Control,
    nursery: trio.Nursery,
) -> None:
    """The fleet hears its assets before the strategies start: on the broker, the retained
    states arrive right after the subscription is answered (waited for a few seconds at most: a
    broker that is down leaves every asset unknown, which offers nothing, until it is back)."""
    settings = fleet.settings
    if control.assets_bus is not None:
        control.assets_bus.subscribe(asset_link.topics(fleet), fleet.receive)
    elif settings.mqtt is not None:
        broker = settings.mqtt
        link = asset_link.listener(
            fleet,
            Broker(
                broker.host,
                broker.port,
                broker.username,
                loaded.asset_password,
                broker.keepalive_s,
            ),
        )
        await nursery.start(link.run)
        with trio.move_on_after(ASSETS_FIRST_WAIT_S):
            await link.subscribed.wait()
            await trio.sleep(0.2)  # the retained states, sent right after the SUBACK
    every_s = min(10.0, settings.staleness_s / 4)
    nursery.start_soon(partial(asset_link.watch_staleness, fleet, clock, every_s=every_s))
    nursery.start_soon(partial(asset_link.keep_in_store, fleet, store, clock, every_s=every_s))
    log.info("assets.listening", assets=len(fleet.assets()), sites=len(fleet.by_site))


async def _assemble(
    loaded: config.LoadedConfig, store: AsyncStore, market: MarketSession, clock: MarketClock
) -> Parts:
    cfg = loaded.config
    tracker = await OrderTracker.restore(store)
    fleet = None if cfg.assets is None else Fleet(cfg.assets, loaded.fixed_assets)
    hub = MeterHub(
        loaded.meters,
        store,
        clock=clock,
        base=loaded.path.parent,
        sources=loaded.meter_sources,
        secrets=loaded.meter_secrets,
        source_secrets=loaded.meter_source_secrets,
        delivering=sold_power(tracker),
    )
    verifier = Verifier(
        cfg.verification,
        tracker=tracker,
        store=store,
        client=market.client,
        clock=clock,
        meters=loaded.meters,
    )
    engine = Engine(
        cfg.engine,
        loaded.strategies,
        clock=clock,
        tracker=tracker,
        broker=market.client,
        limits=cfg.risk,
        kill_switch=KillSwitch(
            configured=cfg.kill_switch.engaged, file=loaded.kill_switch_file, store=store
        ),
        observers=[verifier.observe],
        states=StoredStates(store),
        fleet=fleet,
    )
    feed = market.feed(orders=tracker)
    return Parts(engine, verifier, hub, feed, tracker, store, market, clock, fleet)


# What a SIGHUP does not reload (the strategies and `risk` it does, and the kill switch is read
# as it changes): a change there takes a restart.
RESTART_SECTIONS = (
    "market",
    "store",
    "engine",
    "meters",
    "meter_sources",
    "meter_catalogue",
    "assets",
    "verification",
    "metrics",
    "logging",
)
ASSETS_FIRST_WAIT_S = 5.0  # at start, for the assets' broker to answer the subscription

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


async def _handle_signals(
    received: AsyncIterator[int], loaded: config.LoadedConfig, control: Control
) -> None:
    """One receiver for the whole run, start-up and graceful stop included: SIGHUP reloads,
    SIGUSR1 engages the kill switch, the first SIGTERM/SIGINT stops gracefully (before the engine
    runs: abandons the start-up) and the second at once."""
    async with trio.open_nursery() as nursery:
        async for signum in received:
            engine = control.engine
            if signum == signal.SIGHUP:
                if control.stop.is_set():
                    continue
                if engine is None:
                    control.reload_pending = True
                else:
                    nursery.start_soon(_reload, loaded, engine, control.reloading)
            elif signum == signal.SIGUSR1:
                if engine is None:
                    control.kill_wanted.set()
                else:
                    nursery.start_soon(engine.engage_kill_switch, "SIGUSR1")
            elif not control.stop.is_set():
                log.info("daemon.stopping", signal=signal.Signals(signum).name)
                control.stop.set()
            else:
                log.warning("daemon.stop_now")
                control.stop_now.set()


async def _graceful_stop(parts: Parts, stop_now: trio.Event) -> None:
    """Strategies stopped, orders cancelled (if configured), the outbox drained: bounded in time,
    and cut short by a second signal."""
    async with trio.open_nursery() as stopper:
        stopper.start_soon(safety.cut_short, stop_now, stopper.cancel_scope)
        with trio.move_on_after(SHUTDOWN_TIMEOUT_S) as bounded:
            await parts.engine.shutdown()
            pending = await parts.verifier.drain()  # what is due goes out now; the rest waits
            log.info("verification.drained", pending=pending)
        if bounded.cancelled_caught:
            log.warning("daemon.shutdown_timeout", timeout_s=SHUTDOWN_TIMEOUT_S)
        stopper.cancel_scope.cancel()


async def _reload(
    loaded: config.LoadedConfig, engine: Engine, turn: trio.Lock | None = None
) -> None:
    """Read the config again and apply what a reload can. The reading (YAML, secrets, strategy
    modules) runs in a worker thread, abandoned if the daemon stops meanwhile: a slow disk never
    holds the event loop. Reloads take `turn` in the order of their signals, so an older read
    never overwrites a newer one."""
    async with turn or trio.Lock():
        try:
            new = await trio.to_thread.run_sync(config.load, loaded.path, abandon_on_cancel=True)
        except config.ConfigError as exc:
            log.error("config.reload_failed", problems=exc.lines[:20], kept="the running config")
            return
        except Exception as exc:  # a SIGHUP must never end the daemon: whatever the file holds
            problem = f"cannot be read: {type(exc).__name__}"
            log.error("config.reload_failed", problems=[problem], kept="the running config")
            return
        engine.reload(new.strategies, new.config.risk)
        log.info("config.reload_done", path=str(loaded.path))
        # The rest is read at start: say what a reload left as it was, not silently.
        kept = [
            name
            for name in RESTART_SECTIONS
            if getattr(new.config, name) != getattr(loaded.config, name)
        ]
        if kept:
            log.warning("config.restart_needed", sections=kept, reloaded=["strategies", "risk"])
