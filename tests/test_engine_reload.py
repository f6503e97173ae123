"""A config reload (SIGHUP) applies changed params and limits, and nothing else, to the strategy
code already running."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import yaml
from structlog.testing import capture_logs

from flexbot.clock import MarketClock
from flexbot.engine.engine import Engine
from flexbot.engine.loader import StrategySpec, load_spec
from flexbot.engine.orders import OrderTracker
from flexbot.engine.risk import RiskLimits
from flexbot.engine.settings import EngineSettings

ROOT = Path(__file__).parents[1]


def buyer(**params: Any) -> StrategySpec:
    path = ROOT / "config" / "strategies" / "buyer.yaml"
    document = yaml.safe_load(path.read_text())
    document["params"].update(params)
    return load_spec(path, document, ROOT / "strategies")  # imports the module afresh


def engine_with(spec: StrategySpec) -> Engine:
    return Engine(
        EngineSettings(dry_run=True),
        [spec],
        clock=MarketClock(),
        tracker=OrderTracker(None),
        broker=None,
    )


def test_an_unchanged_config_reloads_nothing() -> None:
    engine = engine_with(buyer())
    with capture_logs() as logs:
        engine.reload([buyer()], RiskLimits())
    assert [e["event"] for e in logs] == []
    assert engine.runners["buyer"].inbox.pending() == 0


def test_changed_params_reach_the_running_class_and_the_rest_waits_for_a_restart() -> None:
    engine = engine_with(buyer())
    runner = engine.runners["buyer"]
    running_class = runner.spec.cls
    changed = attrs.evolve(buyer(limit_price=0.2), dry_run=True)
    with capture_logs() as logs:
        engine.reload([changed], RiskLimits(max_open_orders=3))
    events = [(e["event"], e.get("why")) for e in logs]
    assert ("config.reload_needs_restart", ["dry_run"]) in events
    assert ("config.reloaded", None) in events
    assert runner.spec.cls is running_class  # the code in use did not change
    assert isinstance(runner.strategy.params, running_class.Params)
    assert runner.strategy.params.limit_price == Decimal("0.2")
    assert runner.spec.dry_run is False  # applied at the next start only
    assert engine.desk.limits.max_open_orders == 3
