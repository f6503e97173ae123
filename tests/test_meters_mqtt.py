"""The MQTT meter source against a real broker: Debian's `mosquitto`, one per module.

The broker runs as a subprocess on a free loopback port; readiness is polled under a deadline.
Publishing uses paho's own `publish` helpers (blocking, so in a worker thread). Whether the meter
is subscribed yet is learned by publishing probes (bare numbers) until one arrives, so nothing
sleeps a fixed time. Without a mosquitto binary (`make broker` installs it) the tests skip.
"""

from __future__ import annotations

import getpass
import random
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from paho.mqtt import publish
from structlog.testing import capture_logs

from flexbot.clock import ManualWall, MarketClock
from flexbot.meters.hub import MeterHub
from flexbot.meters.mqtt import MqttMeter
from flexbot.meters.source import MeterSettings, MqttSettings, Reading, Route
from flexbot.store import AsyncStore, Store
from tests.processes import free_port

pytestmark = pytest.mark.anyio

PROBE = Decimal(-999)  # a bare-number reading the tests publish to learn the meter is subscribed
USER, PASSWORD = "meter", "meter-pw"


def mosquitto_binary(name: str) -> str | None:
    """`name` on PATH, or where Debian puts it (/usr/sbin is not on every user's PATH)."""
    found = shutil.which(name)
    for path in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}"):
        if found is None and Path(path).is_file():
            found = path
    return found


class Broker:
    """A mosquitto subprocess on a fixed loopback port, which can be stopped and started again."""

    def __init__(self, binary: str, directory: Path, *, passwords: Path | None = None) -> None:
        self.port = free_port()
        self.config = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        auth = f"allow_anonymous false\npassword_file {passwords}\n" if passwords else ""
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + (auth or "allow_anonymous true\n")
            + "persistence false\n"
            f"user {getpass.getuser()}\n"  # as root, mosquitto would drop to `mosquitto`
        )
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"mosquitto did not listen:\n{self.log.read_text()[-2000:]}")
                time.sleep(0.02)  # a poll interval, not a synchronisation
            else:
                return

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def mosquitto() -> str:
    binary = mosquitto_binary("mosquitto")
    if binary is None:
        pytest.skip("no mosquitto binary: `make broker` (apt-get install mosquitto) installs it")
    return binary


@pytest.fixture(scope="module")
def broker(mosquitto: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    running = Broker(mosquitto, tmp_path_factory.mktemp("mosquitto"))
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def secured_broker(mosquitto: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    tool = mosquitto_binary("mosquitto_passwd")
    if tool is None:
        pytest.skip("no mosquitto_passwd binary (Debian's mosquitto package has it)")
    directory = tmp_path_factory.mktemp("mosquitto-secured")
    passwords = directory / "passwords"
    subprocess.run([tool, "-b", "-c", str(passwords), USER, PASSWORD], check=True)
    running = Broker(mosquitto, directory, passwords=passwords)
    running.start()
    yield running
    running.stop()


class QuickRandom(random.Random):
    """Backoff delays of at most 50 ms, so a reconnect in a test takes no time; counts retries."""

    def __init__(self) -> None:
        super().__init__(0)
        self.retries = 0
        self.retried_thrice = trio.Event()

    def uniform(self, a: float, b: float) -> float:
        self.retries += 1
        if self.retries >= 3:
            self.retried_thrice.set()
        return min(b, 0.05)


class Collected:
    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[Reading](1000)

    async def emit(self, batch: Any) -> None:
        for reading in batch:
            await self.send.send(reading)

    async def next(self, *, probes: bool = False) -> Reading:
        """The next reading (probes skipped unless asked for)."""
        while True:
            reading = await self.receive.receive()
            if probes or reading.value != PROBE:
                return reading


async def send(broker: Broker, topic: str, *payloads: str, auth: Any = None) -> None:
    messages = [{"topic": topic, "payload": p, "qos": 1} for p in payloads]
    publisher = partial(
        publish.multiple, messages, hostname="127.0.0.1", port=broker.port, auth=auth
    )
    await trio.to_thread.run_sync(publisher)


async def subscribed(
    broker: Broker, topic: str, got: Collected, *, auth: Any = None, probe: str = str(PROBE)
) -> None:
    """Publish probes until one arrives: from then on the meter hears the topic."""
    with trio.fail_after(5):
        while True:
            await send(broker, topic, probe, auth=auth)
            with trio.move_on_after(0.2):
                await got.next(probes=True)
                return


@asynccontextmanager
async def running(meter: MqttMeter) -> AsyncIterator[Collected]:
    got = Collected()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(meter.run, got.emit)
        yield got
        nursery.cancel_scope.cancel()


def meter_on(
    broker: Broker,
    topic: str,
    *,
    password: str | None = None,
    rng: random.Random | None = None,
    **settings: Any,
) -> MqttMeter:
    mqtt = MqttSettings(topic=topic, port=broker.port, **settings)
    return MqttMeter(Route.own("m1"), mqtt, password=password, rng=rng or QuickRandom())


async def test_json_readings_arrive_with_their_time_and_exact_value(broker: Broker) -> None:
    async with running(meter_on(broker, "site/a/power")) as got:
        await subscribed(broker, "site/a/power", got)
        await send(
            broker,
            "site/a/power",
            '{"timestamp": "2026-11-23T11:00:00+01:00", "value": 1234.5}',
            '[{"timestamp": "2026-11-23T10:00:01Z", "value": 0.1},'
            ' {"timestamp": "2026-11-23T10:00:02.5Z", "value": 7}]',
        )
        with trio.fail_after(5):
            readings = [await got.next() for _ in range(3)]
    at = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert readings == [
        Reading("m1", at, Decimal("1234.5")),
        Reading("m1", at.replace(second=1), Decimal("0.1")),
        Reading("m1", at.replace(second=2, microsecond=500000), Decimal(7)),
    ]
    assert readings[1].value.as_tuple() == Decimal("0.1").as_tuple()  # no float on the way


async def test_a_bare_number_is_stamped_on_arrival(broker: Broker) -> None:
    async with running(meter_on(broker, "site/b/power")) as got:
        await subscribed(broker, "site/b/power", got)
        before = datetime.now(UTC)
        await send(broker, "site/b/power", "4200.25")
        with trio.fail_after(5):
            reading = await got.next()
        after = datetime.now(UTC)
    assert reading.meter_id == "m1"
    assert reading.value == Decimal("4200.25")
    assert reading.at.tzinfo == UTC
    assert before <= reading.at <= after


async def test_a_bad_message_is_logged_and_skipped(broker: Broker) -> None:
    bad = ["not json", '{"value": 5}', '{"timestamp": "2026-11-23T10:00:00", "value": 5}', "true"]
    good = '{"timestamp": "2026-11-23T10:15:00Z", "value": 42}'
    with capture_logs() as logs:
        async with running(meter_on(broker, "site/c/power")) as got:
            await subscribed(broker, "site/c/power", got)
            await send(broker, "site/c/power", *bad, "x" * 1000, good)
            with trio.fail_after(5):
                reading = await got.next()
    assert reading == Reading("m1", datetime(2026, 11, 23, 10, 15, tzinfo=UTC), Decimal(42))
    rejected = [e for e in logs if e["event"] == "meter.bad_message"]
    assert [e["payload"] for e in rejected] == [*bad, "x" * 200]
    assert all(e["meter"] == "m1" and e["topic"] == "site/c/power" for e in rejected)


async def test_it_reconnects_and_resubscribes_after_the_broker_restarts(broker: Broker) -> None:
    retries = QuickRandom()
    with capture_logs() as logs:
        async with running(meter_on(broker, "site/d/power", rng=retries)) as got:
            await subscribed(broker, "site/d/power", got)
            await trio.to_thread.run_sync(broker.stop)
            with trio.fail_after(5):
                await retries.retried_thrice.wait()  # lost, then refused twice
            await trio.to_thread.run_sync(broker.start)  # the same port
            await subscribed(broker, "site/d/power", got)  # after a reconnect and a subscribe
            await send(broker, "site/d/power", '{"timestamp": "2026-11-23T10:30:00Z", "value": 3}')
            with trio.fail_after(5):
                reading = await got.next()
    assert reading.value == 3
    warnings = [(e["event"], e["reason"]) for e in logs if e["log_level"] == "warning"]
    assert warnings[0] == ("meter.disconnected", "The connection was lost.")
    assert [event for event, _ in warnings[1:]] == ["meter.connect_failed"] * (len(warnings) - 1)
    assert all("refused" in reason.lower() for _, reason in warnings[1:]), warnings
    assert [e["event"] for e in logs].count("meter.connected") == 2


async def test_a_wrong_password_is_logged_and_retried(secured_broker: Broker) -> None:
    auth = {"username": USER, "password": PASSWORD}
    retries = QuickRandom()
    wrong = meter_on(
        secured_broker, "site/e/power", username=USER, password="wrong-pw", rng=retries
    )
    right = meter_on(secured_broker, "site/e/power", username=USER, password=PASSWORD)
    with capture_logs() as logs:
        async with running(wrong) as refused, running(right) as got:
            await subscribed(secured_broker, "site/e/power", got, auth=auth)
            with trio.fail_after(5):
                await retries.retried_thrice.wait()  # and still running: it retries for ever
    failures = [e for e in logs if e["event"] == "meter.connect_failed"]
    assert len(failures) >= 3
    assert all("not authori" in e["reason"].lower() for e in failures), failures
    assert refused.receive.statistics().current_buffer_used == 0  # it never heard a probe
    assert "wrong-pw" not in repr(logs)


# --- one wildcard source, many meters -------------------------------------------------------------

SPEC_TOPIC = "flexbot/v1/+/+/meter"  # flexbot/v1/<site>/<meter>/meter: the meter at level -2


def shared_on(broker: Broker, topic: str, **settings: Any) -> MqttMeter:
    mqtt = MqttSettings(topic=topic, port=broker.port, **settings)
    return MqttMeter(Route.of_source("meter_sources[0]"), mqtt, rng=QuickRandom())


async def test_a_wildcard_source_feeds_each_meter_its_topic_names(broker: Broker) -> None:
    with capture_logs() as logs:
        async with running(shared_on(broker, SPEC_TOPIC, meter_level=-2)) as got:
            await subscribed(broker, "flexbot/v1/probe/probe/meter", got)
            await send(
                broker,
                "flexbot/v1/site-a/m1/meter",
                '{"timestamp": "2026-11-23T10:00:00Z", "value": 1}',
            )
            await send(broker, "flexbot/v1/site-a/m2/meter", "2.5")  # stamped on arrival
            await send(
                broker,
                "flexbot/v1/site-b/m3/meter",
                '{"meter_id": "m1", "timestamp": "2026-11-23T10:00:00Z", "value": 9}',  # disagrees
                '[{"meter_id": "m3", "timestamp": "2026-11-23T10:00:00Z", "value": 3}]',
            )
            await send(broker, "flexbot/v1/site-b/m4/other", "4")  # not the filter's
            with trio.fail_after(5):
                readings = [await got.next() for _ in range(3)]
    assert [(r.meter_id, r.value) for r in readings] == [
        ("m1", Decimal(1)),
        ("m2", Decimal("2.5")),
        ("m3", Decimal(3)),
    ]
    [bad] = [e for e in logs if e["event"] == "meter.bad_message"]
    assert bad["source"] == "meter_sources[0]"
    assert "not the topic's meter 'm3'" in bad["reason"]
    assert [e["source"] for e in logs if e["event"] == "meter.connected"] == ["meter_sources[0]"]


async def test_a_gateways_topic_feeds_the_meters_its_payload_names(broker: Broker) -> None:
    probe = '{"meter_id": "probe", "timestamp": "2026-11-23T10:00:00Z", "value": -999}'
    with capture_logs() as logs:
        async with running(shared_on(broker, "gateway/+/readings")) as got:
            await subscribed(broker, "gateway/g1/readings", got, probe=probe)
            await send(
                broker,
                "gateway/g1/readings",
                '[{"meter_id": "m4", "timestamp": "2026-11-23T10:00:00Z", "value": 4},'
                ' {"meter_id": 5, "timestamp": "2026-11-23T10:00:00Z", "value": 5}]',
                "6",  # a bare number names no meter: bad
                '[{"meter_id": "m6", "timestamp": "2026-11-23T10:00:00Z", "value": 6},'
                ' {"timestamp": "2026-11-23T10:00:00Z", "value": 7}]',  # skipped whole
                '{"meter_id": "m8", "timestamp": "2026-11-23T10:00:00Z", "value": 8}',
            )
            with trio.fail_after(5):
                readings = [await got.next() for _ in range(3)]
    assert [(r.meter_id, r.value) for r in readings] == [
        ("m4", Decimal(4)),
        ("5", Decimal(5)),
        ("m8", Decimal(8)),
    ]
    bad = [e for e in logs if e["event"] == "meter.bad_message"]
    assert [e["payload"][:3] for e in bad] == ["6", '[{"']
    assert all("no meter_id" in e["reason"] for e in bad)


async def test_the_hub_runs_a_wildcard_source_and_drops_unknown_meters(
    broker: Broker, tmp_path: Path
) -> None:
    store = AsyncStore(Store.open(tmp_path / "f.db"))
    meters = [MeterSettings(f"m{i}", "site-a") for i in range(1, 4)]  # fed by the shared source
    clock = MarketClock(1.0, wall=ManualWall(), start=datetime(2026, 11, 23, tzinfo=UTC))
    sources = [MqttSettings(topic=SPEC_TOPIC, port=broker.port, meter_level=-2)]
    hub = MeterHub(meters, store, clock=clock, base=tmp_path, sources=sources)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            with trio.fail_after(5):
                while not hub.unknown_readings:  # probes of an unknown meter: dropped, counted
                    await send(broker, "flexbot/v1/site-a/probe/meter", str(PROBE))
                    await trio.sleep(0.05)
            for i in range(1, 4):
                message = f'{{"timestamp": "2026-11-23T10:00:0{i}Z", "value": {i}}}'
                await send(broker, f"flexbot/v1/site-a/m{i}/meter", message)
            with trio.fail_after(5):
                while hub.readings < 3:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert set(hub.last_reading) == {"m1", "m2", "m3"}
    assert store.sync.last_reading_at("probe") is None
    assert [e["meter"] for e in logs if e["event"] == "meter.unknown"] == ["probe"]


async def test_a_meters_own_topic_is_all_its_own_unless_a_level_names_the_meter(
    broker: Broker,
) -> None:
    """A device may call itself anything in its payload (a serial): its meter's own topic is the
    meter's. With `meter_level`, an own source of a wildcard takes its meter's topics only."""
    reading = '{"meter_id": "serial-9", "timestamp": "2026-11-23T10:00:00Z", "value": 1}'
    async with running(meter_on(broker, "site/g/power")) as got:
        await subscribed(broker, "site/g/power", got)
        await send(broker, "site/g/power", reading)
        with trio.fail_after(5):
            assert (await got.next()).meter_id == "m1"
    with capture_logs() as logs:
        async with running(meter_on(broker, "levels/+/power", meter_level=1)) as got:
            await subscribed(broker, "levels/m1/power", got)
            await send(broker, "levels/m2/power", "2")  # another meter's: skipped, quietly
            await send(broker, "levels/m1/power", "3")
            with trio.fail_after(5):
                mine = await got.next()
    assert (mine.meter_id, mine.value) == ("m1", Decimal(3))
    assert not [e for e in logs if e["event"] == "meter.bad_message"]


# --- a broker that does not answer ----------------------------------------------------------------


@asynccontextmanager
async def unanswering_broker() -> AsyncIterator[trio.socket.SocketType]:
    """A listener whose accept queue is full (backlog 0, one connection waiting in it): the
    kernel drops further SYNs, so a connect to it hangs, as to a broker behind a dead route,
    until the queue has room again."""
    server = trio.socket.socket()
    with server:
        await server.bind(("127.0.0.1", 0))
        server.listen(0)
        filler = trio.socket.socket()
        with filler:
            await filler.connect(server.getsockname())
            yield server


async def test_a_cancel_during_a_connect_that_hangs_ends_the_source_at_once() -> None:
    """paho's connect blocks (up to its 5 s timeout): the cancel abandons it, and the client is
    closed once that connect returns, so no connection outlives the source."""
    async with unanswering_broker() as server:
        port = server.getsockname()[1]
        meter = MqttMeter(
            Route.own("m1"), MqttSettings(topic="site/f/power", port=port), rng=QuickRandom()
        )
        # The test holds the client, so that no garbage collection closes its socket for it.
        clients: list[Any] = []
        make_client = meter.link._new_client
        meter.link._new_client = lambda: clients.append(make_client()) or clients[-1]  # type: ignore[method-assign]
        started = trio.current_time()
        with trio.move_on_after(0.3):  # by then the meter waits in its connect
            await meter.run(Collected().emit)
        assert trio.current_time() - started < 1.0  # not paho's connect timeout (5 s)
        # Room in the queue: the abandoned connect now completes (at its next SYN)...
        waiting, _ = await server.accept()
        waiting.close()
        with trio.fail_after(10):
            connection, _ = await server.accept()
            with connection:
                received = b""
                while chunk := await connection.recv(1024):
                    received += chunk
        # ... and is closed by its thread: its CONNECT (if it got that far), then the end.
        assert received[:1] in (b"", b"\x10")
