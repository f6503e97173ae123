"""The portfolio at scale: thousands of meters and assets through a real broker, and the two
computations a pool needs, each against a baseline measured in the same run.

An aggregator runs flexbot over 10,000 meters and 1,000 assets: the daemon must hear them all on
one MQTT broker without a core to itself, lose no reading, and still have headroom for a burst
(meters catching up after an outage all report at once). Four figures:

1. **Steady load**, through mosquitto (a subprocess, `/usr/sbin/mosquitto`), with `flexbot run` as
   a subprocess against a sandbox (a subprocess, `clock: sandbox`, no strategy): `--meters`
   meters from a catalogue (`meter_catalogue`), ten a site, fed by one shared source
   (`flexbot/v1/+/+/meter`, `meter_level: -2`), and `--assets` assets (batteries and loads, one a
   site) discovered from their retained `state` (published before the daemon starts, as a running
   fleet's would be). A publisher (a subprocess) then sends each meter's reading once a minute
   and each asset's state every 30 s, spread evenly, QoS 1. After `--warm-up` seconds, for
   `--duration` seconds: the daemon's CPU (utime + stime of /proc/PID/stat over the period, as a
   share of one core; target < 10%), its RSS (VmRSS of /proc/PID/status sampled every second, the
   peak; and VmHWM, the kernel's own high-water mark since the start, which the target is judged
   on: < 300 MB), and at the end, once the store stops growing, the readings lost (published and
   acknowledged by the broker, less the rows of the store's `readings` table; target 0).
   Baseline: the same daemon idle (loaded with the same catalogue and assets, nothing published)
   for `--idle` seconds just before.
2. **Ceiling**: how fast the daemon stores readings once it has fallen behind. A backlog of
   `--ceiling` readings (cycling the meters, QoS 1) is published, as fast as one publisher goes,
   while the subscriber is stopped (SIGSTOP), so that it all waits at the broker (which queues
   without a bound here, `max_queued_messages 0`: nothing is dropped); then the subscriber resumes
   and drains it. First a bare paho subscriber (a subprocess that only counts, QoS 1 as the
   daemon's, subscribed to the same wildcard under another first level, `bare/v1/+/+/meter`, so
   that the daemon does not hear it), then the daemon. The rate is readings over the time from
   the resume to the last arrival (the bare client's last message; for the daemon, the poll of its
   store, every 50 ms, that finds the last reading stored). Draining a backlog, not racing a live
   publisher, keeps the publisher's own speed out of the figure. Target ≥ 5,000 readings/s stored,
   none lost; the ratio daemon/bare is the share of the broker's delivery rate the daemon keeps up
   with. Also the daemon's CPU per reading while draining.
3. **Metering of a pool**, in this process: a store holding `--pool-meters` meters (ten a site)
   read once a minute around one window; `Meters.metering(pool, start, end)` for the pool of every
   site, the median of `--runs` (target < 1 s). Baseline: the same meters' rows read by the same
   `Store.readings` calls in one thread (the SQL alone: no thread hop, no quarter building).
4. **Availability after a state change**, in this process: a `Fleet` of `--fleet-assets` assets
   (batteries and loads, ten a site) and some sells committed over the next windows; one asset's
   new state through `Fleet.receive`, then `deliverable` for the pool of every site over the next
   8 windows, the median of `--runs` (target < 100 ms). Also each site as its own pool
   (`site_rooms`, what `flexbot status` and the metrics show), without a target. Baseline: a bare
   sum of every asset's power range for the 8 windows (touching each asset, no energy and no
   commitments).

Without a mosquitto binary (`make broker` installs it) 1 and 2 are skipped, said so, not failed.

    .venv/bin/python bench/portfolio.py [--meters 10000] [--assets 1000] [--duration 60]
        [--ceiling 150000] [--pool-meters 1000] [--fleet-assets 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import trio
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from flexbot import logs, model
from flexbot.assets import AssetSettings, Fleet
from flexbot.engine.deliverable import deliverable, site_rooms
from flexbot.engine.orders import Intent
from flexbot.meters.pool import Meters
from flexbot.meters.source import MeterSettings, store_time
from flexbot.sandbox.launch import child_env, launched_sandbox, stop
from flexbot.store import AsyncStore, Store
from flexbot.trading import IntentState, Window

ROOT = Path(__file__).resolve().parents[1]
CPU_TARGET = 0.10  # of one core
RSS_TARGET = 300e6  # bytes
CEILING_TARGET = 5_000.0  # readings/s stored
METERING_TARGET_S = 1.0
AVAILABILITY_TARGET_S = 0.100
WINDOWS = 8
PER_SITE = 10  # meters a site, and in-process assets a site
METER_EVERY_S = 60.0
STATE_EVERY_S = 30.0
PREFIX = "flexbot/v1"  # the spec's topics; the fleet's default prefix
BARE_PREFIX = "bare/v1"
USER, PASSWORD = "alice", "alice-pw"
READY_BOUND_S = 60.0
DRAIN_BOUND_S = 30.0  # how long the store may go on growing after the publisher is done
STALL_S = 10.0  # no new row for this long: the rest is lost
CLK_TCK = os.sysconf("SC_CLK_TCK")
CEILING_BASE = datetime(2030, 1, 1, tzinfo=UTC)  # the ceiling's readings: apart from the steady's
WINDOW_START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


# --- names and messages -------------------------------------------------------------------------


def meter_id(i: int) -> str:
    return f"m{i:05d}"


def meter_site(i: int) -> str:
    return f"site-{i // PER_SITE:04d}"


def asset_topic(prefix: str, j: int, sites: int) -> str:
    kind = "bat" if j % 2 == 0 else "load"
    return f"{prefix}/site-{j % sites:04d}/{kind}-{j:04d}/state"


def asset_state(j: int, ts: datetime, step: int = 0) -> bytes:
    """Asset j's `state` at `ts`: even ones batteries, odd ones loads; `step` moves it a little
    (a battery's charge, a load's draw), so that each message is news."""
    stamp = ts.isoformat().replace("+00:00", "Z")
    if j % 2 == 0:
        body: dict[str, Any] = {
            "ts": stamp,
            "kind": "battery",
            "power_w": -500.0 if step % 3 == 2 else 0.0,
            "min_power_w": -5000.0,
            "max_power_w": 5000.0,
            "energy_wh": 4000.0 + 100.0 * ((j + step) % 40),
            "min_energy_wh": 1000.0,
            "max_energy_wh": 10000.0,
            "efficiency": 0.95,
        }
    else:
        body = {
            "ts": stamp,
            "kind": "load",
            "power_w": 2000.0 + 10.0 * ((j + step) % 50),
            "min_power_w": 500.0,
            "max_power_w": 3000.0,
            "max_reduction_s": 1800.0,
            "recovery_s": 900.0,
        }
    return orjson.dumps(body)


def reading(at: datetime, value: float) -> bytes:
    return orjson.dumps({"timestamp": at.isoformat().replace("+00:00", "Z"), "value": value})


# --- the broker, and the clients in subprocesses --------------------------------------------------


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    for path in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if found is None and Path(path).is_file():
            found = path
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def mosquitto(binary: str, directory: Path) -> Iterator[int]:
    """mosquitto on a free loopback port, queueing without a bound (see the ceiling)."""
    port = free_port()
    config = directory / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\n"
        f"user {getpass.getuser()}\n"  # as root, mosquitto would drop to `mosquitto`
    )
    with (directory / "mosquitto.log").open("wb") as log:
        process = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mosquitto did not listen") from None
                time.sleep(0.02)  # a poll interval
        yield port
    finally:
        stop(process, 5.0)


def connected_client(port: int, name: str) -> paho.Client:
    """A paho client connected (CONNACK received), without a loop thread: the caller loops."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{os.getpid()}")
    client.max_inflight_messages_set(0)  # no bound: the broker acknowledges as fast as it can
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port, keepalive=60)
    deadline = time.monotonic() + 10
    while not client.is_connected():
        client.loop(timeout=0.1)
        if time.monotonic() > deadline:
            raise RuntimeError("no CONNACK from the broker")
    return client


class Acks:
    """Counts the broker's PUBACKs."""

    def __init__(self, client: paho.Client) -> None:
        self.count = 0
        client.on_publish = self._on_publish

    def _on_publish(self, *_: Any) -> None:
        self.count += 1

    def wait(self, client: paho.Client, published: int, bound_s: float = 30.0) -> None:
        deadline = time.monotonic() + bound_s
        while self.count < published and time.monotonic() < deadline:
            client.loop(timeout=0.05)


def publish_steady(args: argparse.Namespace) -> dict[str, Any]:
    """Each meter's reading once a minute and each asset's state every 30 s, spread evenly, for
    `duration_s`; returns what was published (and acknowledged)."""
    client = connected_client(args.port, "steady")
    acks = Acks(client)
    sites = max(1, args.meters // PER_SITE)
    meter_topics = [f"{PREFIX}/{meter_site(i)}/{meter_id(i)}/meter" for i in range(args.meters)]
    state_topics = [asset_topic(PREFIX, j, sites) for j in range(args.assets)]
    meter_gap = METER_EVERY_S / max(1, args.meters)
    state_gap = STATE_EVERY_S / max(1, args.assets)
    readings = states = 0
    started = time.monotonic()
    end = started + args.duration_s
    while (now := time.monotonic()) < end:
        elapsed = now - started
        while args.meters and readings * meter_gap <= elapsed:
            i = readings % args.meters
            client.publish(meter_topics[i], reading(datetime.now(UTC), 1000 + i % 97), qos=1)
            readings += 1
        while args.assets and states * state_gap <= elapsed:
            j = states % args.assets
            body = asset_state(j, datetime.now(UTC), states // args.assets + 1)
            client.publish(state_topics[j], body, qos=1, retain=True)
            states += 1
        next_due = min(
            readings * meter_gap if args.meters else args.duration_s,
            states * state_gap if args.assets else args.duration_s,
        )
        client.loop(timeout=max(0.0, min(next_due - (time.monotonic() - started), 0.05)))
    acks.wait(client, readings + states)
    client.disconnect()
    return {"readings": readings, "states": states, "acked": acks.count}


def publish_burst(args: argparse.Namespace) -> dict[str, Any]:
    """`count` readings as fast as this process can publish them, cycling the meters (each round
    a second later, so no reading repeats one kept)."""
    client = connected_client(args.port, "burst")
    acks = Acks(client)
    topics = [f"{args.prefix}/{meter_site(i)}/{meter_id(i)}/meter" for i in range(args.meters)]
    rounds = -(-args.count // args.meters)
    bodies = [reading(CEILING_BASE + timedelta(seconds=k), 1000 + k) for k in range(rounds)]
    started = time.monotonic()
    for n in range(args.count):
        client.publish(topics[n % args.meters], bodies[n // args.meters], qos=1)
        if n % 200 == 199:
            client.loop(timeout=0)  # read the PUBACKs, write what the socket did not take
    acks.wait(client, args.count, bound_s=120.0)
    done = time.monotonic()
    client.disconnect()
    return {"published": args.count, "acked": acks.count, "started": started, "done": done}


def subscribe_bare(args: argparse.Namespace) -> dict[str, Any]:
    """A bare paho subscriber (QoS 1, as the daemon's) that only counts; says `subscribed` on
    stdout once the broker answered, then waits for `count` messages (or `STALL_S` of silence)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bare-{os.getpid()}")
    got = {"n": 0, "last": 0.0}

    def on_message(*_: Any) -> None:
        got["n"] += 1
        got["last"] = time.monotonic()  # CLOCK_MONOTONIC: the same clock as the parent's

    def on_subscribe(*_: Any) -> None:
        print("subscribed", flush=True)

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_connect = lambda c, *_: c.subscribe(args.topic, qos=1)
    client.connect("127.0.0.1", args.port, keepalive=60)
    quiet_since, seen = time.monotonic(), 0
    while got["n"] < args.count:
        client.loop(timeout=0.1)
        if got["n"] != seen:
            seen, quiet_since = int(got["n"]), time.monotonic()
        elif time.monotonic() - quiet_since > (STALL_S if seen else 300.0):
            break
    client.disconnect()
    return {"received": got["n"], "last": got["last"]}


def role(name: str, *extra: str) -> list[str]:
    return [sys.executable, __file__, "--role", name, *extra]


def finished(process: subprocess.Popen[bytes], bound_s: float) -> dict[str, Any]:
    """The JSON a client subprocess prints last."""
    try:
        out, _ = process.communicate(timeout=bound_s)
    finally:
        stop(process, 2.0)
    if process.returncode != 0:
        raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


# --- the daemon -----------------------------------------------------------------------------------


def write_config(root: Path, url: str, port: int, n_meters: int) -> Path:
    (root / "strategies").mkdir(parents=True)
    rows = "".join(f"{meter_id(i)},{meter_site(i)}\n" for i in range(n_meters))
    (root / "meters.csv").write_text("meter_id,site\n" + rows)
    config = {
        "market": {
            "url": url,
            "username": USER,
            "password": "${FLEXBOT_PASSWORD}",
            "clock": "sandbox",
        },
        "store": {"path": "flexbot.db"},
        "strategies": {"config_dir": "strategies", "code_dir": str(ROOT / "strategies")},
        "logging": {"format": "json"},
        "meter_sources": [
            {
                "type": "mqtt",
                "topic": f"{PREFIX}/+/+/meter",
                "meter_level": -2,
                "host": "127.0.0.1",
                "port": port,
            }
        ],
        "meter_catalogue": "meters.csv",
        "assets": {
            "mqtt": {"host": "127.0.0.1", "port": port, "prefix": PREFIX},
            "staleness_s": 120,
            "horizon_windows": WINDOWS,
        },
    }
    (root / "flexbot.yaml").write_text(yaml.safe_dump(config))
    return root / "flexbot.yaml"


class Daemon:
    """`flexbot run` as a subprocess, its JSON log in a file, its /proc figures and its store."""

    def __init__(self, config: Path) -> None:
        self.log = config.parent / "daemon.log"
        self.db = config.parent / "flexbot.db"
        argv = [sys.executable, "-m", "flexbot.cli", "run", "--config", str(config)]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(FLEXBOT_PASSWORD=PASSWORD),
                cwd=ROOT,
            )
        self._reader: sqlite3.Connection | None = None

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_BOUND_S
        while not any(e.get("event") == "daemon.ready" for e in self.events()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the daemon did not get ready:\n{tail}")
            time.sleep(0.1)  # a poll interval

    def cpu_s(self) -> float:
        """utime + stime of every thread so far, in seconds."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def status(self, key: str) -> int:
        """A figure of /proc/PID/status in bytes (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def _db(self) -> sqlite3.Connection:
        if self._reader is None:
            self._reader = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        return self._reader

    def stored(self) -> int:
        (count,) = self._db().execute("SELECT count(*) FROM readings").fetchone()
        return int(count)

    def holds(self, meter: str, at: datetime) -> bool:
        row = (
            self._db()
            .execute(
                "SELECT 1 FROM readings WHERE meter_id = ? AND at = ?", (meter, store_time(at))
            )
            .fetchone()
        )
        return row is not None

    def assets_kept(self) -> int:
        (count,) = self._db().execute("SELECT count(*) FROM asset_state").fetchone()
        return int(count)

    def drain(self, expected: int) -> int:
        """Wait until the store holds `expected` readings, or stops growing; how many it holds."""
        deadline = time.monotonic() + DRAIN_BOUND_S
        count, since = self.stored(), time.monotonic()
        while count < expected and time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.stored()
            if now != count:
                count, since = now, time.monotonic()
            elif time.monotonic() - since > STALL_S:
                break
        return count

    def stop(self) -> int:
        if self._reader is not None:
            self._reader.close()
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            stop(self.process, 2.0)


# --- 1 and 2: through the broker ------------------------------------------------------------------


def retain_states(port: int, n_assets: int, sites: int) -> None:
    """Every asset's state, retained: what the broker holds for a fleet already running."""
    client = connected_client(port, "retain")
    acks = Acks(client)
    now = datetime.now(UTC)
    for j in range(n_assets):
        client.publish(asset_topic(PREFIX, j, sites), asset_state(j, now), qos=1, retain=True)
    acks.wait(client, n_assets)
    client.disconnect()


def steady(daemon: Daemon, args: argparse.Namespace, port: int) -> dict[str, Any]:
    started_cpu, started = daemon.cpu_s(), time.monotonic()
    time.sleep(args.idle)
    idle_cpu = (daemon.cpu_s() - started_cpu) / (time.monotonic() - started)
    idle_rss = daemon.status("VmRSS")
    total_s = args.warm_up + args.duration
    publisher = subprocess.Popen(
        role(
            "steady",
            *("--port", str(port), "--meters", str(args.meters), "--assets", str(args.assets)),
            *("--duration-s", str(total_s)),
        ),
        stdout=subprocess.PIPE,
        env=child_env(),
    )
    time.sleep(args.warm_up)
    cpu0, t0 = daemon.cpu_s(), time.monotonic()
    rss_peak = 0
    while (left := t0 + args.duration - time.monotonic()) > 0:
        rss_peak = max(rss_peak, daemon.status("VmRSS"))
        time.sleep(min(1.0, left))
    cpu = (daemon.cpu_s() - cpu0) / (time.monotonic() - t0)
    rss_peak = max(rss_peak, daemon.status("VmRSS"))
    sent = finished(publisher, total_s + 60)
    stored = daemon.drain(sent["readings"])
    return {
        "idle_cpu": idle_cpu,
        "idle_rss": idle_rss,
        "cpu": cpu,
        "rss_peak": rss_peak,
        "hwm": daemon.status("VmHWM"),
        "published": sent["readings"],
        "acked": sent["acked"],
        "states": sent["states"],
        "stored": stored,
    }


def start_burst(args: argparse.Namespace, port: int, prefix: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        role(
            "burst",
            *("--port", str(port), "--prefix", prefix, "--meters", str(args.meters)),
            *("--count", str(args.ceiling)),
        ),
        stdout=subprocess.PIPE,
        env=child_env(),
    )


def backlog(args: argparse.Namespace, port: int, prefix: str, paused: int) -> tuple[float, float]:
    """The burst published to the broker while process `paused` is stopped (SIGSTOP), so that it
    all waits at the broker; then `paused` resumes. Returns when it resumed (monotonic) and the
    publisher's own rate."""
    os.kill(paused, signal.SIGSTOP)
    try:
        sent = finished(start_burst(args, port, prefix), 300.0)
    finally:
        resumed = time.monotonic()
        os.kill(paused, signal.SIGCONT)
    return resumed, sent["published"] / (sent["done"] - sent["started"])


def bare_ceiling(args: argparse.Namespace, port: int) -> dict[str, Any]:
    subscriber = subprocess.Popen(
        role(
            "bare",
            *("--port", str(port), "--topic", f"{BARE_PREFIX}/+/+/meter"),
            *("--count", str(args.ceiling)),
        ),
        stdout=subprocess.PIPE,
        env=child_env(),
    )
    assert subscriber.stdout is not None
    if subscriber.stdout.readline().strip() != b"subscribed":
        stop(subscriber)
        raise RuntimeError("the bare subscriber did not subscribe")
    resumed, published = backlog(args, port, BARE_PREFIX, subscriber.pid)
    got = finished(subscriber, 300.0)
    span = got["last"] - resumed
    return {
        "rate": got["received"] / span if span > 0 else 0.0,
        "received": got["received"],
        "published": published,
    }


def daemon_ceiling(daemon: Daemon, args: argparse.Namespace, port: int) -> dict[str, Any]:
    before = daemon.stored()
    n = args.ceiling - 1
    last = (meter_id(n % args.meters), CEILING_BASE + timedelta(seconds=n // args.meters))
    resumed, published = backlog(args, port, PREFIX, daemon.process.pid)
    cpu0 = daemon.cpu_s()
    # The last reading published is the last stored (one publisher, one subscription, in order).
    done_at = None
    count = daemon.stored()
    changed = checked = time.monotonic()
    while time.monotonic() - changed < STALL_S:
        if daemon.holds(*last):
            done_at = time.monotonic()
            break
        time.sleep(0.05)
        if time.monotonic() - checked >= 1.0:  # is it still growing?
            checked = time.monotonic()
            if (now := daemon.stored()) != count:
                count, changed = now, checked
    cpu = daemon.cpu_s() - cpu0
    stored = daemon.drain(before + args.ceiling) - before
    span = (done_at if done_at is not None else changed) - resumed
    return {
        "rate": stored / span if span > 0 else 0.0,
        "stored": stored,
        "cpu_per_reading": cpu / stored if stored else 0.0,
        "published": published,
    }


def through_broker(args: argparse.Namespace) -> None:
    binary = mosquitto_binary()
    print(
        f"portfolio through mosquitto: {args.meters:,} meters ({PER_SITE} a site, a reading a "
        f"minute each), {args.assets:,} assets (a state every {STATE_EVERY_S:.0f} s), QoS 1; "
        "flexbot run a subprocess",
        flush=True,
    )
    if binary is None:
        print("  skipped: no mosquitto binary (`make broker` installs it)")
        return
    with tempfile.TemporaryDirectory(prefix="flexbot-portfolio-") as tmp:
        root = Path(tmp)
        sandbox_args = (f"--user={USER}:{PASSWORD}", "--rate-limit", "off", "--log-format", "json")
        with (
            mosquitto(binary, root) as port,
            launched_sandbox(*sandbox_args, logs=root, ready_s=30.0, stop_s=2.0, cwd=ROOT) as box,
        ):
            retain_states(port, args.assets, max(1, args.meters // PER_SITE))
            daemon = Daemon(write_config(root / "daemon", box.url, port, args.meters))
            try:
                started = time.monotonic()
                daemon.wait_ready()
                ready_s = time.monotonic() - started
                ready_rss = daemon.status("VmRSS")
                load = steady(daemon, args, port)
                assets_kept = daemon.assets_kept()
                bare = bare_ceiling(args, port)
                ceiling = daemon_ceiling(daemon, args, port)
            finally:
                status = daemon.stop()
            events = daemon.events()
    report_steady(args, load, ready_s, ready_rss, assets_kept, events)
    report_ceiling(args, bare, ceiling)
    if status != 0:
        raise RuntimeError(f"flexbot run exited with {status}")


def report_steady(
    args: argparse.Namespace,
    load: dict[str, Any],
    ready_s: float,
    ready_rss: int,
    assets_kept: int,
    events: list[dict[str, Any]],
) -> None:
    cpu, idle = load["cpu"], load["idle_cpu"]
    print(
        f"  READY after {ready_s:.1f} s at {mb(ready_rss)} RSS (catalogue, "
        f"{args.assets:,} retained states)"
    )
    print(
        f"steady load, {args.duration:.0f} s measured after {args.warm_up:.0f} s of warm-up "
        f"(baseline: the same daemon idle for {args.idle:.0f} s before):"
    )
    print(
        f"  CPU       {cpu:6.1%} of one core   idle {idle:5.1%}: "
        f"{f'{cpu / idle:.1f}x' if idle else 'n/a'}"
        f"   (target < {CPU_TARGET:.0%}: {met(cpu < CPU_TARGET)})"
    )
    peak = load["rss_peak"]
    print(
        f"  RSS       peak {mb(peak)} sampled (VmHWM {mb(load['hwm'])})   idle "
        f"{mb(load['idle_rss'])}: {peak / load['idle_rss']:.2f}x   "
        f"(target < {RSS_TARGET / 1e6:.0f} MB: {met(load['hwm'] < RSS_TARGET)})"
    )
    lost = load["published"] - load["stored"]
    print(
        f"  readings  {load['published']:,} published ({load['acked']:,} readings and states "
        f"acknowledged by the broker), {load['stored']:,} stored: lost {lost:,}"
        f"   (target 0: {met(lost == 0)})"
    )
    discovered = {e.get("asset") for e in events if e.get("event") == "asset.discovered"}
    print(
        f"  assets    {len(discovered):,} of {args.assets:,} discovered, {assets_kept:,} in the "
        f"store; {load['states']:,} states published"
    )
    noisy = Counter(
        str(e.get("event")) for e in events if e.get("level") in ("warning", "error", "critical")
    )
    if noisy:
        listed = ", ".join(f"{name} x{n}" for name, n in noisy.most_common(6))
        print(f"  the daemon's warnings and errors: {listed}")


def report_ceiling(args: argparse.Namespace, bare: dict[str, Any], ceiling: dict[str, Any]) -> None:
    rate, base = ceiling["rate"], bare["rate"]
    print(
        f"ceiling: a backlog of {args.ceiling:,} readings (QoS 1) drained from the broker "
        f"(published at {bare['published']:,.0f}/s and {ceiling['published']:,.0f}/s while the "
        "subscriber was stopped):"
    )
    print(
        f"  bare paho subscriber  {base:>9,.0f} readings/s received "
        f"({bare['received']:,} of {args.ceiling:,})"
    )
    lost = args.ceiling - ceiling["stored"]
    print(
        f"  daemon                {rate:>9,.0f} readings/s stored   "
        f"{rate / base if base else 0:.2f} of bare, "
        f"{ceiling['cpu_per_reading'] * 1e6:.0f} µs of CPU a reading, lost {lost:,}"
        f"   (target ≥ {CEILING_TARGET:,.0f}/s: {met(rate >= CEILING_TARGET and lost == 0)})"
    )


# --- 3: metering of a pool ----------------------------------------------------------------------


async def metering(n_meters: int, runs: int, directory: Path) -> dict[str, Any]:
    start, end = WINDOW_START, WINDOW_START + timedelta(minutes=15)
    meters = [MeterSettings(meter_id(i), meter_site(i)) for i in range(n_meters)]
    store = AsyncStore(Store.open(directory / "metering.db"))
    rows = [
        (m.id, store_time(start + timedelta(minutes=k)), str(1000 + (i + k) % 97))
        for i, m in enumerate(meters)
        for k in range(-15, 31)  # the window, and a quarter hour on each side
    ]
    store.sync.add_readings(rows)
    pool_of = Meters(meters, store, max_gap_s=900.0)
    pool = pool_of.pool(dict.fromkeys(m.location_id for m in meters))
    assert len(pool.meters) == n_meters
    timed, floor = [], []
    quarters: list[Any] = []
    flagged: list[str] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        quarters, flagged = await pool_of.metering(pool, start, end)
        timed.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for m in meters:
            store.sync.readings(m.id, store_time(start), store_time(end))
        floor.append(time.perf_counter() - t0)
    store.sync.close()
    return {
        "s": statistics.median(timed),
        "max_s": max(timed),
        "floor_s": statistics.median(floor),
        "kwh": sum(q.energy_kwh for q in quarters),
        "flagged": len(flagged),
        "rows": len(rows),
    }


def report_metering(args: argparse.Namespace, result: dict[str, Any]) -> None:
    s, floor = result["s"], result["floor_s"]
    sites = -(-args.pool_meters // PER_SITE)
    print(
        f"metering of a {args.pool_meters:,}-meter pool ({sites:,} sites), one window "
        f"({result['rows']:,} readings in the store, a reading a minute):"
    )
    print(
        f"  Meters.metering  {s * 1000:8.1f} ms median of {args.runs} (max "
        f"{result['max_s'] * 1000:.1f} ms), {result['kwh']:,.1f} kWh, {result['flagged']} meters "
        f"flagged   (target < {METERING_TARGET_S:.0f} s: {met(s < METERING_TARGET_S)})"
    )
    print(
        f"  the same rows by the same Store.readings calls, in one thread: {floor * 1000:.1f} ms"
        f"   ratio {s / floor:.1f}x"
    )


# --- 4: availability after a state change ---------------------------------------------------------


def commitments(sites: list[str], windows: list[Window], now: datetime) -> list[Intent]:
    """A few sells in each window, each naming a handful of sites, some open, some filled."""
    out = []
    for k, window in enumerate(windows):
        for n in range(5):
            named = tuple(sites[(k * 5 + n + step) % len(sites)] for step in range(0, 30, 10))
            request = model.OrderRequest(
                side=model.Side.SELL,
                power=Decimal(2000 + 500 * n),
                price=Decimal("0.2"),
                delivery_start=window.start,
                delivery_end=window.end,
                expiry_time=window.start - timedelta(seconds=60),
                location=model.Location(location_id=named),
            )
            out.append(
                Intent(
                    client_id=f"bench-{k}-{n}",
                    strategy="bench",
                    version="1",
                    request=request,
                    state=IntentState.OPEN,
                    created_at=now,
                )
            )
    return out


def availability(n_assets: int, runs: int) -> dict[str, Any]:
    now = WINDOW_START + timedelta(minutes=5)
    sites = [f"site-{s:04d}" for s in range(max(1, -(-n_assets // PER_SITE)))]
    fleet = Fleet(AssetSettings(staleness_s=120.0, horizon_windows=WINDOWS))
    topics = [asset_topic(PREFIX, j, len(sites)) for j in range(n_assets)]
    for j, topic in enumerate(topics):
        fleet.receive(topic, asset_state(j, now))
    assert len(fleet.assets()) == n_assets
    windows = Window.upcoming(now, WINDOWS)
    intents = commitments(sites, windows, now)
    ratio = Decimal(1)
    timed, naive, per_site = [], [], []
    results: list[Any] = []
    for run in range(runs):
        j = run * 7919 % n_assets
        body = asset_state(j, now, run + 1)
        t0 = time.perf_counter()
        fleet.receive(topics[j], body)
        results = deliverable(fleet, intents, sites, windows, now=now, ratio=ratio)
        timed.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in windows:
            total = 0.0
            for asset in fleet.assets(sites):
                state = asset.state
                if state is not None:
                    total += max(0.0, state.power_w - state.min_power_w)
        naive.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        site_rooms(fleet, intents, sites, windows, now=now)
        per_site.append(time.perf_counter() - t0)
    return {
        "s": statistics.median(timed),
        "max_s": max(timed),
        "naive_s": statistics.median(naive),
        "per_site_s": statistics.median(per_site),
        "sites": len(sites),
        "intents": len(intents),
        "available_w": [int(d.available_w) for d in results],
    }


def report_availability(args: argparse.Namespace, result: dict[str, Any]) -> None:
    s, naive = result["s"], result["naive_s"]
    print(
        f"availability of {args.fleet_assets:,} assets (batteries and loads, {result['sites']:,} "
        f"sites) for the next {WINDOWS} windows, {result['intents']} sells committed, after one "
        "state change:"
    )
    print(
        f"  receive + deliverable, the pool of every site  {s * 1000:7.2f} ms median of "
        f"{args.runs} (max {result['max_s'] * 1000:.2f} ms)   (target < "
        f"{AVAILABILITY_TARGET_S * 1000:.0f} ms: {met(s < AVAILABILITY_TARGET_S)})"
    )
    print(
        f"  a bare sum of every asset's power range, {WINDOWS} windows: {naive * 1000:.2f} ms"
        f"   ratio {s / naive:.0f}x"
    )
    available = result["available_w"]
    print(
        f"  each site its own pool (site_rooms, {result['sites']:,} sites): "
        f"{result['per_site_s'] * 1000:.1f} ms; the pool's available reduction "
        f"{min(available):,}-{max(available):,} W a window"
    )


# --- main ---------------------------------------------------------------------------------------


def roles(args: argparse.Namespace) -> None:
    """This file as one of the clients of the broker, in its own process."""
    run: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
        "steady": publish_steady,
        "burst": publish_burst,
        "bare": subscribe_bare,
    }
    print(json.dumps(run[args.role](args)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=10_000)
    parser.add_argument("--assets", type=int, default=1_000)
    parser.add_argument("--duration", type=float, default=60.0, help="s of steady load measured")
    parser.add_argument("--warm-up", type=float, default=5.0, help="s of load before measuring")
    parser.add_argument("--idle", type=float, default=5.0, help="s of the idle daemon measured")
    parser.add_argument("--ceiling", type=int, default=150_000, help="readings of the burst")
    parser.add_argument("--pool-meters", type=int, default=1_000)
    parser.add_argument("--fleet-assets", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=5, help="of each in-process measurement")
    parser.add_argument("--no-broker", action="store_true", help="only the in-process figures")
    parser.add_argument("--role", choices=("steady", "burst", "bare"), help=argparse.SUPPRESS)
    for name in ("--port", "--count"):
        parser.add_argument(name, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--duration-s", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role is not None:
        roles(args)
        return
    logs.configure(level="warning")
    started = time.monotonic()
    if not args.no_broker:
        through_broker(args)
    with tempfile.TemporaryDirectory(prefix="flexbot-metering-") as tmp:
        report_metering(args, trio.run(metering, args.pool_meters, args.runs, Path(tmp)))
    report_availability(args, availability(args.fleet_assets, args.runs))
    print(f"portfolio: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
