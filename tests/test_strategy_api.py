"""The strategy API as a strategy author meets it: one import, params named once, power and price
by name, windows that go into a saved state and come back."""

from __future__ import annotations

import ast
import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, TypeVar

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import flexbot.strategy as api
from flexbot.clock import MarketClock
from flexbot.engine.engine import Engine
from flexbot.engine.loader import StrategySpec, strategy_class
from flexbot.engine.orders import OrderTracker
from flexbot.engine.settings import EngineSettings
from flexbot.problems import Invalid
from flexbot.strategy import IntentState, Location, NoParams, Side, Strategy, Window
from tests import strategies_model as sm

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
STRATEGY_FILES = sorted(
    [*(REPO / "strategies").glob("*.py"), *(REPO / "bench/strategies").glob("*.py")]
)


def flexbot_imports(source: str) -> set[str]:
    """The flexbot modules that `source` imports (`from flexbot import model`: flexbot.model)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "flexbot"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "flexbot":
                found |= {f"flexbot.{a.name}" for a in node.names}
            elif node.module.startswith("flexbot."):
                found.add(node.module)
    return found


def readme_strategy() -> str:
    for match in re.finditer(r"```python\n(.*?)```", README.read_text(), re.S):
        if match[1].startswith("# strategies/"):
            return match[1]
    raise AssertionError("no strategy example in the README")


# --- one import -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", STRATEGY_FILES, ids=lambda p: p.name)
def test_an_example_strategy_imports_nothing_of_flexbot_but_the_strategy_api(path: Path) -> None:
    assert flexbot_imports(path.read_text(encoding="utf-8")) <= {"flexbot.strategy"}


def test_the_readme_strategy_imports_nothing_of_flexbot_but_the_strategy_api() -> None:
    assert flexbot_imports(readme_strategy()) == {"flexbot.strategy"}


def test_the_checker_sees_every_form_of_import() -> None:
    source = "import flexbot.model\nfrom flexbot import rules\nfrom flexbot.schedule import Timer\n"
    assert flexbot_imports(source) == {"flexbot.model", "flexbot.rules", "flexbot.schedule"}


def test_everything_in_all_is_there_and_the_api_has_a_version() -> None:
    assert len(set(api.__all__)) == len(api.__all__)
    missing = [name for name in api.__all__ if not hasattr(api, name)]
    assert missing == []
    assert isinstance(api.API_VERSION, int)
    assert api.API_VERSION >= 2
    for name in (
        "Side",
        "OrderBook",
        "BookEntry",
        "Ticker",
        "ExpiredOrder",
        "Contract",
        "Location",
    ):
        assert name in api.__all__
    for name in ("MeterReading", "Timer", "Invalid", "positive", "asks_in", "bids_in"):
        assert name in api.__all__


def test_the_validators_say_where_a_param_is_wrong() -> None:
    @attrs.frozen
    class Limits:
        price: Decimal = attrs.field(validator=api.positive)
        floor: Decimal = attrs.field(default=Decimal(0), validator=api.non_negative)

    Limits(Decimal("0.1"))
    with pytest.raises(Invalid, match=r"\$\.price: must be greater than 0"):
        Limits(Decimal(0))
    with pytest.raises(Invalid, match=r"\$\.floor: must be 0 or more"):
        Limits(Decimal(1), Decimal(-1))


# --- params named once ----------------------------------------------------------------------------


@attrs.frozen
class OneParams:
    x: int = 1


@attrs.frozen
class OtherParams:
    y: int = 2


P = TypeVar("P")


def test_the_params_class_is_taken_from_the_type_argument() -> None:
    class Inferred(Strategy[OneParams]):
        pass

    assert Inferred.Params is OneParams
    assert Inferred(Inferred.Params()).params == OneParams()


def test_the_params_class_may_be_set_in_the_body_instead() -> None:
    class Declared(Strategy[Any]):
        Params = OneParams

    class Both(Strategy[OneParams]):
        Params = OneParams

    assert Declared.Params is OneParams
    assert Both.Params is OneParams


def test_two_different_params_classes_are_refused() -> None:
    with pytest.raises(TypeError, match="name the params class once"):

        class Confused(Strategy[OneParams]):
            Params = OtherParams


def test_a_strategy_without_params_class_is_refused_with_what_to_write() -> None:
    with pytest.raises(TypeError, match=r"Strategy\[MyParams\].*Strategy\[NoParams\]"):

        class Bare(Strategy):  # type: ignore[type-arg]
            pass


def test_a_generic_base_stays_generic_and_its_subclasses_name_their_params() -> None:
    class Base(Strategy[P], Generic[P]):
        version = "base"

    class Concrete(Base[OtherParams]):
        pass

    class Refined(Concrete):  # inherits its parent's params
        pass

    class Quiet(Strategy[NoParams]):
        pass

    assert not hasattr(Base, "Params")
    assert Concrete.Params is OtherParams
    assert Refined.Params is OtherParams
    assert Quiet.Params is NoParams
    module = type(pytest)("generic_strategies")
    module.Base = Base  # type: ignore[attr-defined]
    module.Refined = Refined  # type: ignore[attr-defined]
    with pytest.raises(Invalid, match=r"\$\.class: Base is generic in its params"):
        strategy_class(module, "Base")
    assert strategy_class(module, "Refined") is Refined  # type: ignore[comparison-overlap]


# --- power and price by name ----------------------------------------------------------------------


class Idle(Strategy[NoParams]):
    pass


async def test_place_takes_power_and_price_by_name_only() -> None:
    spec = StrategySpec(
        name="idle",
        path=Path("idle.yaml"),
        cls=Idle,
        params=NoParams(),
        location=Location(location_id=("site-1",), country_code="DE"),
    )
    engine = Engine(
        EngineSettings(dry_run=True),
        [spec],
        clock=MarketClock(),
        tracker=OrderTracker(None),
        broker=None,
    )
    ctx = engine.runners["idle"].context
    window = Window.upcoming(ctx.now, 2, lead_s=900)[1]
    with pytest.raises(TypeError):
        await ctx.place(Side.BUY, Decimal(1000), Decimal("0.2"), window)  # type: ignore[misc, call-arg, arg-type]
    placed = await ctx.place(Side.BUY, window, power_w=Decimal(1000), price=Decimal("0.2"))
    assert placed.state is IntentState.OPEN
    assert (placed.power_w, placed.price) == (Decimal(1000), Decimal("0.2"))


# --- windows as text ------------------------------------------------------------------------------


@given(start=sm.utc_datetimes(microseconds=False), quarters=st.integers(1, 96))
def test_a_window_reads_back_from_its_iso_interval(start: Any, quarters: int) -> None:
    window = Window(start, start + timedelta(minutes=15 * quarters))
    assert Window.fromisoformat(window.isoformat()) == window


@pytest.mark.parametrize(
    "text",
    ["", "2026-11-23T10:00:00Z", "2026-11-23T10:15:00Z/2026-11-23T10:00:00Z", "a/b"],
)
def test_a_malformed_window_interval_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"interval|timestamp|before it starts"):
        Window.fromisoformat(text)
