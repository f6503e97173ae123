"""Crash safety: `flexbot run` killed with SIGKILL at random moments, several times, while it sells
and submits baselines and metering (real subprocesses, a sandbox at 60× market time with simulated
traders). Afterwards, the sandbox is the referee: every contract of ours whose metering was due has
exactly one accepted metering submission, and exactly one accepted baseline per sell order that
needed one; no order was placed twice."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from flexbot import wire
from flexbot.store import Store
from tests.processes import READY_S, ROOT, Market, child_env, sandbox_process

pytestmark = pytest.mark.slow

KILLS = 3
SETTLE_S = 30  # verification.settle_delay_s, market seconds


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    args = [
        *("--rate-limit", "off", "--time-scale", "60", "--seed", "11"),
        *("--counterparties", "6", "--counterparty-interval", "0.2"),
        *("--settlement-delay", "60"),
    ]
    with sandbox_process(tmp_path_factory.mktemp("sandbox"), *args) as running:
        yield running


def write_config(root: Path, market: Market) -> Path:
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
        "engine": {"resolve_interval_s": 0.5, "cancel_on_shutdown": False},
        "meters": [
            {
                "id": "site-1-main",
                "location_id": "site-1",
                "source": {"type": "synthetic", "seed": 3, "noise_w": 50, "history_days": 6},
                "baseline": {"method": "mean_of_days", "days": 5},
            }
        ],
        "verification": {"settle_delay_s": SETTLE_S, "max_wait_s": 300},
        "logging": {"format": "json"},
    }
    (root / "flexbot.yaml").write_text(yaml.safe_dump(config))
    seller = {
        "module": "seller",
        "class": "FlexSeller",
        "location": {"location_id": ["site-1"]},
        "params": {
            "floor_price": 0.05,
            "ask_price": 0.25,
            "capacity_w": 500,
            "baseline_w": None,  # the meter's baseline, through the outbox
            "windows_ahead": 8,
            "lead_s": 900,
        },
    }
    (root / "strategies" / "seller.yaml").write_text(yaml.safe_dump(seller))
    return root / "flexbot.yaml"


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flexbot.cli", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(FLEXBOT_PASSWORD="alice-pw"),
            cwd=ROOT,
        )


def sandbox_state(market: Market) -> tuple[list[dict[str, Any]], dict[str, Any], Any]:
    orders = httpx.get(f"{market.url}/sandbox/orders", timeout=5).json()
    stats = httpx.get(f"{market.url}/sandbox/stats", timeout=5).json()
    now = wire.parse_datetime(httpx.get(f"{market.url}/sandbox/clock", timeout=5).json()["now"])
    return orders, stats, now


def due_contracts(market: Market) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Our sell orders with a contract whose metering is due by now (with a margin)."""
    orders, stats, now = sandbox_state(market)
    mine = [o for o in orders if o["owner"] == "alice" and o["side"] == "sell" and o["contracts"]]
    margin = SETTLE_S + 120  # market seconds: settle delay, then a couple of scans and sends
    due = [
        o for o in mine if (now - wire.parse_datetime(o["delivery_end"])).total_seconds() > margin
    ]
    return due, stats


def test_sigkill_at_random_moments_loses_and_doubles_nothing(
    market: Market, tmp_path: Path
) -> None:
    config = write_config(tmp_path, market)
    log = tmp_path / "run.log"
    rng = random.Random(7)
    for _ in range(KILLS):
        daemon = start(config, log)
        time.sleep(rng.uniform(2.0, 6.0))  # a random moment of its work: the test's subject
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)
    # The last run lives until everything due has been submitted, then stops cleanly.
    daemon = start(config, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            due, stats = due_contracts(market)
            done = stats["verification_submissions"]
            if len(due) >= 2 and all(done.get(o["order_id"], {}).get("metering") for o in due):
                break
            assert daemon.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"due {len(due)}: {log.read_text()[-3000:]}"
            time.sleep(0.5)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=READY_S) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    orders, stats, _ = sandbox_state(market)
    due, _ = due_contracts(market)
    accepted = stats["verification_submissions"]
    # Exactly one accepted metering per due contract, and no other order got a second one.
    assert all(accepted[o["order_id"]]["metering"] == 1 for o in due)
    assert all(c.get("metering", 0) <= 1 and c.get("baseline", 0) <= 1 for c in accepted.values())
    # No order placed twice: every order of ours on the market is one journalled intent.
    ours = {o["order_id"] for o in orders if o["owner"] == "alice"}
    store = Store.open(tmp_path / "flexbot.db")
    try:
        journalled = [row.order_id for row in store.orders() if row.order_id is not None]
    finally:
        store.close()
    assert sorted(journalled) == sorted(ours)
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    names = Counter(e.get("event") for e in events)
    assert names["verification.failed"] == 0
    assert names["order.untracked"] == 0
    resent = stats["verification_duplicates"]
    print(
        f"\nSIGKILL runs {KILLS}; our orders {len(ours)}, contracts due {len(due)}, "
        f"accepted meterings {sum(accepted[o['order_id']]['metering'] for o in due)}, "
        f"identical resends {sum(sum(resent.get(o, {}).values()) for o in ours)}, missing 0"
    )
