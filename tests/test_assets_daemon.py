"""The portfolio end to end: `flexbot run` (a subprocess) hears its assets on a real MQTT broker
(mosquitto) with no per-asset configuration, offers what they can deliver on a sandbox market
(a subprocess), logs a bad state message, and leaves the fleet in its store for `flexbot status`."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from paho.mqtt import publish

from flexbot import wire
from tests.processes import ROOT, Market, child_env, logged_in, sandbox_process
from tests.test_assets_engine import battery_state
from tests.test_daemon_run import STOP_S, Daemon
from tests.test_meters_mqtt import (  # noqa: F401 - the broker's fixtures
    Broker,
    broker,
    mosquitto,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    with sandbox_process(tmp_path_factory.mktemp("sandbox"), "--rate-limit", "off") as running:
        yield running


def market_now(market: Market) -> str:
    now: str = logged_in(market, "bob").get("/sandbox/clock").json()["now"]
    return now


def announce(mqtt: Broker, topic: str, body: dict[str, Any] | bytes) -> None:
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    publish.single(topic, payload, qos=1, retain=True, hostname="127.0.0.1", port=mqtt.port)


def write_config(root: Path, market: Market, mqtt: Broker, prefix: str) -> Path:
    (root / "strategies").mkdir()
    config = {
        "market": {
            "url": market.url,
            "username": "alice",
            "password": "${FLEXBOT_PASSWORD}",
            "clock": "sandbox",
        },
        "store": {"path": "flexbot.db"},
        "strategies": {"config_dir": "strategies", "code_dir": str(ROOT / "strategies")},
        "logging": {"format": "json"},
        "engine": {"cancel_on_shutdown": False},  # its offers stay, for `status` to count
        "assets": {"mqtt": {"host": "127.0.0.1", "port": mqtt.port, "prefix": prefix}},
    }
    (root / "flexbot.yaml").write_text(yaml.safe_dump(config))
    seller = {
        "module": "seller",
        "class": "FlexSeller",
        "location": {"location_id": ["site-1"], "country_code": "DE"},
        "params": {
            "floor_price": 0.1,
            "ask_price": 0.3,
            "capacity_w": None,
            "baseline_w": 10000,
            "windows_ahead": 3,
            "lead_s": 0,
        },
    }
    (root / "strategies" / "seller.yaml").write_text(yaml.safe_dump(seller))
    return root / "flexbot.yaml"


def test_the_daemon_discovers_its_assets_on_the_broker_and_offers_what_they_can_deliver(
    market: Market,
    broker: Broker,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    prefix = f"test/{tmp_path.name}"  # retained messages of other tests stay apart
    now = market_now(market)
    # 4000 W of reduction, 1500 Wh above its floor.
    announce(broker, f"{prefix}/site-1/bat-1/state", battery_state(wire.parse_datetime(now)))
    announce(broker, f"{prefix}/site-1/broken/state", b'{"ts": "soon", "kind": "battery"}')
    config = write_config(tmp_path, market, broker, prefix)
    daemon = Daemon(config, tmp_path / "daemon.log")
    try:
        daemon.wait_event("asset.discovered", asset="site-1/bat-1", kind="battery")
        daemon.wait_event("asset.bad_message", asset="site-1/broken")
        daemon.wait_event("daemon.ready")
        # 4000 W for a quarter hour takes 1000 of the 1500 Wh; 2000 W more in the next one.
        daemon.wait_for(lambda e: e.get("event") == "order.placed" and e["power_w"] == 2000.0)
        placed = [e["power_w"] for e in daemon.events() if e.get("event") == "order.placed"]
        assert placed == [4000.0, 2000.0]
        # The assets are read at start: a reload says so rather than ignoring a change.
        document = yaml.safe_load(config.read_text())
        document["assets"]["staleness_s"] = 60
        config.write_text(yaml.safe_dump(document))
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_event("config.restart_needed", sections=["assets"])
    finally:
        daemon.process.send_signal(signal.SIGTERM)
        daemon.process.wait(timeout=STOP_S)
    assert daemon.process.returncode == 0
    status = subprocess.run(
        [sys.executable, "-m", "flexbot.cli", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        check=True,
    ).stdout
    lines = status.splitlines()
    site = lines.index("  site-1")
    assert lines[site + 1].split()[:5] == ["asset", "bat-1", "battery", "0", "W,"]
    assert "2500 Wh" in lines[site + 1]
    # The next windows: 4 kW deliverable in each; the offers' windows show them committed
    # (a window that began since is no longer shown).
    offers = {
        wire.parse_datetime(e["delivery_start"]).strftime("%H:%M"): e["power_w"] / 1000
        for e in daemon.events()
        if e.get("event") == "order.placed"
    }
    shown = {w[0]: (float(w[1]), float(w[4])) for w in map(str.split, lines[site + 2 : site + 6])}
    assert all(deliverable == 4.0 for deliverable, _ in shown.values()), status
    assert {at: committed for at, (_, committed) in shown.items() if at in offers} == {
        at: power for at, power in offers.items() if at in shown
    }, status
    assert any(at in shown for at in offers), status
    assert "broken" not in status  # never read: never an asset
