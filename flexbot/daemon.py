"""`flexbot run`: one trio nursery that owns the whole trading daemon.

Start-up order is explicit: the config is valid and the store open before anything connects; then
the login, market time, the order tracker restored from the journal, the token refresher, the
meters, the streams (whose `/trade` connect reconciles the journal's open orders), the engine with
its strategies, and the verification outbox (which resumes what a previous run left pending).

Signals: SIGTERM or SIGINT stop gracefully (strategies stopped, open orders cancelled when
`engine.cancel_on_shutdown`, sockets closed, exit 0); a second SIGINT stops at once. SIGHUP reloads
the config: valid changes to strategy params and risk limits apply at once, an invalid config is
reported and the running one kept. SIGUSR1 engages the kill switch (a latch in the store, released
with `flexbot kill-switch release`).
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import trio

from flexbot import config, logs, wire
from flexbot.clock import MarketClock
from flexbot.engine.engine import Engine, EngineSettings
from flexbot.engine.killswitch import KillSwitch
from flexbot.engine.orders import OrderTracker
from flexbot.engine.recording import Recorder
from flexbot.market.session import MarketSession, connect
from flexbot.meters.hub import MeterHub, sold_power
from flexbot.store import AsyncStore, Store
from flexbot.verification import VerificationSettings, Verifier

log = logs.get_logger("flexbot.daemon")

SHUTDOWN_TIMEOUT_S = 20.0  # systemd's default stop timeout is 90 s: stay well inside it


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


@asynccontextmanager
async def open_store(loaded: config.LoadedConfig) -> AsyncIterator[AsyncStore]:
    store = Store.open(loaded.store_path)
    try:
        yield AsyncStore(store)
    finally:
        store.close()


async def run(loaded: config.LoadedConfig) -> int:
    """Run until a stop signal; returns the exit status."""
    cfg = loaded.config
    async with open_store(loaded) as store, connect(loaded.connection, login=False) as market:
        await market.tokens.login()
        try:
            clock = await market_clock(market, cfg.market.clock)
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            log.error("clock.sync_failed", reason=str(exc))
            return 1
        tracker = await OrderTracker.restore(store)
        recorder = (
            Recorder(loaded.record_path, clock.now) if loaded.record_path is not None else None
        )
        feed = market.feed(orders=tracker, recorder=recorder)
        hub = MeterHub(
            loaded.meters,
            store,
            clock=clock,
            base=loaded.path.parent,
            secrets=loaded.meter_secrets,
            delivering=sold_power(tracker),
        )
        checks = cfg.verification
        verifier = Verifier(
            VerificationSettings(
                settle_delay_s=checks.settle_delay_s,
                max_wait_s=checks.max_wait_s,
                max_gap_s=checks.max_gap_s,
            ),
            tracker=tracker,
            store=store,
            client=market.client,
            clock=clock,
            meters={m.location_id: m for m in loaded.meters},
        )
        engine = Engine(
            EngineSettings.from_config(cfg.engine),
            loaded.strategies,
            clock=clock,
            tracker=tracker,
            broker=market.client,
            limits=cfg.risk,
            kill_switch=KillSwitch(
                configured=cfg.kill_switch.engaged, file=loaded.kill_switch_file, store=store
            ),
            observers=[verifier.observe],
        )
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(market.tokens.run)
                await nursery.start(hub.run)
                await nursery.start(feed.run)
                await nursery.start(engine.run, feed)
                await nursery.start(verifier.run)
                log.info(
                    "daemon.ready", strategies=len(engine.runners), restored=len(tracker.live())
                )
                await _handle_signals(loaded, engine, verifier, nursery.cancel_scope)
        finally:
            if recorder is not None:
                recorder.close()
    log.info("daemon.stopped")
    return 0


async def _handle_signals(
    loaded: config.LoadedConfig, engine: Engine, verifier: Verifier, scope: trio.CancelScope
) -> None:
    wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
    with trio.open_signal_receiver(*wanted) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                _reload(loaded, engine)
            elif signum == signal.SIGUSR1:
                await engine.engage_kill_switch("SIGUSR1")
            else:
                log.info("daemon.stopping", signal=signal.Signals(signum).name)
                break
        # Graceful stop, bounded; a second SIGINT (or SIGTERM) cuts it short.
        async with trio.open_nursery() as stopper:

            async def stop_at_second_signal() -> None:
                async for signum in signals:
                    if signum in (signal.SIGINT, signal.SIGTERM):
                        log.warning("daemon.stop_now")
                        stopper.cancel_scope.cancel()

            stopper.start_soon(stop_at_second_signal)
            with trio.move_on_after(SHUTDOWN_TIMEOUT_S) as bounded:
                await engine.shutdown()
                pending = await verifier.drain()  # what is due goes out now; the rest waits
                log.info("verification.drained", pending=pending)
            if bounded.cancelled_caught:
                log.warning("daemon.shutdown_timeout", timeout_s=SHUTDOWN_TIMEOUT_S)
            stopper.cancel_scope.cancel()
    scope.cancel()


def _reload(loaded: config.LoadedConfig, engine: Engine) -> None:
    try:
        new = config.load(loaded.path)
    except config.ConfigError as exc:
        log.error("config.reload_failed", problems=exc.lines[:20], kept="the running config")
        return
    engine.reload(new.strategies, new.config.risk)
    log.info("config.reload_done", path=str(loaded.path))
