"""The README's "Writing a strategy" example is real: its two files load and it trades."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import attrs
import pytest
import yaml

from flexbot import model
from flexbot.engine.loader import StrategySpec, load_spec
from tests.conftest import Sandbox
from tests.engine_harness import running_engine, trader, until

pytestmark = pytest.mark.anyio

README = Path(__file__).parents[1] / "README.md"


def block(language: str, first_line: str) -> str:
    for match in re.finditer(rf"```{language}\n(.*?)```", README.read_text(), re.S):
        if match[1].startswith(first_line):
            return match[1]
    raise AssertionError(f"no {language} block starting with {first_line!r} in the README")


@pytest.fixture
def example(tmp_path: Path) -> StrategySpec:
    """The two files, written where a user would put them, loaded as the daemon loads them."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "evening_buyer.py").write_text(block("python", "# strategies/evening_buyer.py"))
    config = tmp_path / "evening.yaml"
    config.write_text(block("yaml", "# config/strategies/evening.yaml"))
    return load_spec(config, yaml.safe_load(config.read_text()), code)


async def test_the_readme_strategy_loads_and_buys_in_its_hours(
    example: StrategySpec, sandbox: Sandbox
) -> None:
    spec = example
    assert spec.name == "evening"
    assert spec.params.limit_price == Decimal("0.22")
    assert spec.dry_run
    assert spec.timer is not None
    # Trade for real, in an hour the example buys in (market time is 10:00 UTC here).
    spec = attrs.evolve(spec, dry_run=False, params=attrs.evolve(spec.params, hours_utc=(10,)))
    async with trader(sandbox) as bob, running_engine(sandbox, [spec]) as h:
        window = bob.window(1)
        await bob.place(model.Side.SELL, 3000, 0.20, window)  # more than it needs
        await bob.place(model.Side.SELL, 1500, 0.20, window)
        await until(lambda: h.tracker.position(window).bought_w == 1500)
