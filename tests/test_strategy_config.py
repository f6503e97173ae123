"""Strategy files (`config/strategies/*.yaml`): the shipped examples load with their values, and
every kind of broken file is refused by `flexbot check-config` with one located line per problem,
all of them in one run, never a traceback."""

from __future__ import annotations

import copy
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from flexbot import config, model
from flexbot.engine.loader import load_spec
from flexbot.engine.risk import RiskLimits
from flexbot.problems import Invalid, Loc
from flexbot.schedule import Timer

REPO = Path(__file__).resolve().parents[1]
CODE_DIR = REPO / "strategies"
EXAMPLES = REPO / "config" / "strategies"
SELLER = yaml.safe_load((EXAMPLES / "seller.yaml").read_text(encoding="utf-8"))


def check_config(
    config_path: Path | str, *, pythonpath: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "FLEXBOT_PASSWORD": "demo"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-m", "flexbot.cli", "check-config", "--config", str(config_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=30,
        check=False,
    )


def seller(**changes: Any) -> dict[str, Any]:
    """The shipped seller document with top-level `changes` (None removes a key)."""
    document = copy.deepcopy(SELLER)
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return document


def seller_params(**changes: Any) -> dict[str, Any]:
    return seller(params={**SELLER["params"], **changes})


# --- the shipped examples -----------------------------------------------------------------------


def test_check_config_accepts_the_shipped_strategies() -> None:
    done = check_config("config/flexbot.yaml")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert "  strategy seller: FlexSeller v1" in lines
    assert "  strategy buyer: FlexBuyer v1" in lines
    assert "  strategy spread: MarketMaker v1 (disabled, dry run)" in lines
    assert any(line.startswith("3 strategies, 2 enabled; store ") for line in lines), lines


@pytest.mark.parametrize(
    ("name", "cls_name", "expected"),
    [
        (
            "seller",
            "FlexSeller",
            {
                "floor_price": Decimal("0.15"),
                "ask_price": Decimal("0.30"),
                "capacity_w": Decimal(5000),
                "baseline_w": None,
                "windows_ahead": 4,
                "lead_s": 900,
            },
        ),
        (
            "buyer",
            "FlexBuyer",
            {
                "limit_price": Decimal("0.28"),
                "power_w": Decimal(4000),
                "windows_ahead": 4,
                "lead_s": 900,
                "hours_utc": (),
                "country": "",
            },
        ),
        (
            "spread",
            "MarketMaker",
            {
                "fair_price": Decimal("0.25"),
                "half_spread": Decimal("0.02"),
                "quote_w": Decimal(2000),
                "max_net_w": Decimal(6000),
                "windows_ahead": 2,
                "requote_threshold": Decimal("0.01"),  # a default: not in the file
            },
        ),
    ],
)
def test_load_spec_builds_the_classes_params_from_each_example(
    name: str, cls_name: str, expected: dict[str, Any]
) -> None:
    path = EXAMPLES / f"{name}.yaml"
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    spec = load_spec(path, document, CODE_DIR)
    assert spec.name == name
    assert spec.path == path
    assert spec.cls.__name__ == cls_name
    assert type(spec.params) is spec.cls.Params
    for field, value in expected.items():
        actual = getattr(spec.params, field)
        assert actual == value, (field, actual)
        assert type(actual) is type(value), (field, actual)


def test_the_seller_example_carries_its_schedule_timer_location_and_limits() -> None:
    path = EXAMPLES / "seller.yaml"
    spec = load_spec(path, yaml.safe_load(path.read_text(encoding="utf-8")), CODE_DIR)
    [slot] = spec.params.schedule
    assert (slot.from_hour, slot.to_hour, slot.power_w) == (17, 20, Decimal(2000))
    assert spec.timer == Timer(interval_s=60)
    assert spec.location == model.Location(location_id=("site-1",), country_code="DE")
    assert spec.risk == RiskLimits(
        max_order_power_w=Decimal(10000), max_window_power_w=Decimal(10000), max_open_orders=8
    )
    assert (spec.enabled, spec.dry_run) == (True, False)


def test_the_class_timer_applies_unless_the_file_sets_one() -> None:
    buyer = EXAMPLES / "buyer.yaml"
    spec = load_spec(buyer, yaml.safe_load(buyer.read_text(encoding="utf-8")), CODE_DIR)
    assert spec.timer == spec.cls.timer == Timer(interval_s=60)
    spread = EXAMPLES / "spread.yaml"
    spec = load_spec(spread, yaml.safe_load(spread.read_text(encoding="utf-8")), CODE_DIR)
    assert spec.timer is None
    assert (spec.enabled, spec.dry_run) == (False, True)
    cron = seller(timer={"cron": "*/15 * * * *", "timezone": "Europe/Berlin"})
    spec = load_spec(Path("cron.yaml"), cron, CODE_DIR)
    assert spec.timer == Timer(cron="*/15 * * * *", timezone="Europe/Berlin")


# --- broken files, all reported in one run ------------------------------------------------------

SYNTAX_ERROR = "import os\n\n\ndef broken(:\n    pass\n"  # line 4
NOT_A_STRATEGY = "class Helper:\n    pass\n"

# file name → (its text, the located lines it must produce: `$.path: message` prefixes)
BROKEN: dict[str, tuple[str, list[str]]] = {
    "wrong_type.yaml": (
        yaml.safe_dump(seller_params(floor_price="abc")),
        ["$.params.floor_price: expected a number, got the string 'abc'"],
    ),
    "unknown_param.yaml": (
        yaml.safe_dump(seller_params(colour="red")),
        ["$.params.colour: unknown key (expected one of: floor_price, ask_price,"],
    ),
    "ask_below_floor.yaml": (
        yaml.safe_dump(seller_params(ask_price=0.10)),
        ["$.params.ask_price: must not be below floor_price"],
    ),
    "negative_floor.yaml": (
        yaml.safe_dump(seller_params(floor_price=-1)),
        ["$.params.floor_price: must be greater than 0, got -1"],
    ),
    "no_class.yaml": (
        yaml.safe_dump(seller(**{"class": None})),
        ["$.class: required field is missing"],
    ),
    "class_not_found.yaml": (
        yaml.safe_dump(seller(**{"class": "FlexSellr"})),
        ["$.class: flexbot_strategies.seller has no class 'FlexSellr'"],
    ),
    "no_module.yaml": (
        yaml.safe_dump(seller(module="no_such_strategy_module")),
        [
            "$.module: no strategy module 'no_such_strategy_module': neither "
            f"{CODE_DIR / 'no_such_strategy_module.py'} nor an installed module"
        ],
    ),
    "syntax_error.yaml": (
        yaml.safe_dump(seller(module="flexbot_test_syntax_error", params=None)),
        ["$.module: cannot import 'flexbot_test_syntax_error' (line 4): SyntaxError:"],
    ),
    "not_a_strategy.yaml": (
        yaml.safe_dump(seller(**{"class": "Slot"})),  # seller.py's schedule entry, an attrs class
        ["$.class: Slot is not a flexbot.strategy.Strategy"],
    ),
    "not_a_strategy_either.yaml": (
        yaml.safe_dump(seller(module="flexbot_test_helper", **{"class": "Helper"})),
        ["$.class: Helper is not a flexbot.strategy.Strategy"],
    ),
    "bad_cron.yaml": (
        yaml.safe_dump(seller(timer={"cron": "every minute"})),
        ["$.timer.cron: not a valid crontab line:"],
    ),
    "top_level_typo.yaml": (
        yaml.safe_dump(seller(colour="red")),
        ["$.colour: unknown key"],
    ),
    "bad_state.yaml": (
        yaml.safe_dump(seller(risk={"state": "paused"})),
        ["$.risk.state: must be one of active, reducing, halted, got 'paused'"],
    ),
    "zero_power.yaml": (
        yaml.safe_dump(seller(risk={"max_order_power_w": 0})),
        ["$.risk.max_order_power_w: must be greater than 0, got 0"],
    ),
    "yaml_error.yaml": (
        "module: seller\nclass: [FlexSeller\nparams: {}\n",
        ["$: line 3, column 7: not valid YAML: "],
    ),
    "empty.yaml": ("", ["$: expected a mapping of module, class, params…, got an empty file"]),
    "params_list.yaml": (
        yaml.safe_dump(seller(params=[1, 2])),
        ["$.params: expected an object, got a list"],
    ),
    "two_problems.yaml": (
        yaml.safe_dump(seller(enabled="yes", params={**SELLER["params"], "lead_s": 1.5})),
        ["$.enabled: expected true or false, got the string 'yes'", "$.params.lead_s:"],
    ),
}


def test_check_config_reports_every_problem_of_every_broken_strategy_file(tmp_path: Path) -> None:
    document = yaml.safe_load((REPO / "config" / "flexbot.yaml").read_text(encoding="utf-8"))
    document["strategies"]["code_dir"] = str(CODE_DIR)
    config_file = tmp_path / "flexbot.yaml"
    config_file.write_text(yaml.safe_dump(document), encoding="utf-8")
    strategies = tmp_path / "strategies"
    strategies.mkdir()
    (strategies / "fine.yaml").write_text(yaml.safe_dump(seller()), encoding="utf-8")
    for name, (text, _) in BROKEN.items():
        (strategies / name).write_text(text, encoding="utf-8")
    # Modules outside code_dir are found as importable modules (here through PYTHONPATH).
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "flexbot_test_syntax_error.py").write_text(SYNTAX_ERROR, encoding="utf-8")
    (modules / "flexbot_test_helper.py").write_text(NOT_A_STRATEGY, encoding="utf-8")

    done = check_config(config_file, pythonpath=modules)

    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    total = sum(len(expected) for _, expected in BROKEN.values())
    assert lines[-1] == f"{total} problem(s) in {config_file}"
    found: dict[str, list[str]] = {}
    for line in lines[:-1]:
        file, _, rest = line.partition(": ")
        assert Path(file).parent == strategies, line
        assert rest.startswith("$"), line
        found.setdefault(Path(file).name, []).append(rest)
    assert "fine.yaml" not in found
    assert set(found) == set(BROKEN)
    for name, (_, expected) in BROKEN.items():
        assert len(found[name]) == len(expected), (name, found[name])
        for prefix in expected:
            assert any(line.startswith(prefix) for line in found[name]), (name, found[name])


def test_load_strategies_locates_problems_by_file_in_process(tmp_path: Path) -> None:
    """The same, in-process, for the module and class problems of files in code_dir."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "broken.py").write_text(SYNTAX_ERROR, encoding="utf-8")
    (code / "helper.py").write_text(NOT_A_STRATEGY, encoding="utf-8")
    (code / "needs_dep.py").write_text("import flexbot_no_such_dependency\n", encoding="utf-8")
    (code / "raises.py").write_text("x = 1\nraise RuntimeError('boom')\n", encoding="utf-8")
    files = tmp_path / "strategies"
    files.mkdir()
    cases = {
        "a.yaml": (seller(module="broken"), "$.module: cannot import 'broken' (line 4): Syntax"),
        "b.yaml": (
            seller(module="helper", **{"class": "Helper"}),
            "$.class: Helper is not a flexbot.strategy.Strategy",
        ),
        "c.yaml": (
            seller(module="needs_dep"),
            "$.module: cannot import 'needs_dep': No module named 'flexbot_no_such_dependency'",
        ),
        "d.yaml": (seller(module="raises"), "$.module: cannot import 'raises': RuntimeError: boom"),
    }
    for name, (document, _) in cases.items():
        (files / name).write_text(yaml.safe_dump(document), encoding="utf-8")
    specs, problems = config.load_strategies(files, code)
    assert specs == []
    lines = {path.name: str(problem) for path, problem in problems}
    assert len(problems) == len(cases), problems
    for name, (_, prefix) in cases.items():
        assert lines[name].startswith(prefix), lines[name]


def test_read_strategy_lists_every_problem_of_one_file(tmp_path: Path) -> None:
    path = tmp_path / "peak.yaml"
    document = seller(
        colour="red",
        location={"location_id": "site-1"},
        params={"floor_price": "abc", "ask_price": 0.3, "capacity_w": [1]},
    )
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    with pytest.raises(config.ConfigError) as caught:
        config.read_strategy(path, CODE_DIR)
    lines = sorted(line.removeprefix(f"{path}: ") for line in caught.value.lines)
    assert len(lines) == 4, lines
    assert lines[0].startswith("$.colour: unknown key (expected one of: ")
    assert lines[1:] == [
        "$.location.location_id: expected a list, got the string 'site-1'",
        "$.params.capacity_w: expected a number, got a list",
        "$.params.floor_price: expected a number, got the string 'abc'",
    ]


# --- every problem at once, and hints that name every key ---------------------------------------


def test_a_bad_timer_is_reported_alongside_another_field_problem() -> None:
    """A bad `timer.cron` is not hidden by a problem of another field: the user learns of both
    in one run."""
    document = seller(enabled="yes", timer={"cron": "every minute"})
    with pytest.raises(Invalid) as caught:
        load_spec(Path("peak.yaml"), document, CODE_DIR)
    locs = sorted(problem.loc for problem in caught.value.problems)
    assert locs == [("enabled",), ("timer", "cron")]


def test_the_unknown_key_hint_names_class_and_params() -> None:
    """A typo of `class` is told the keys it may use, `class` and `params` among them."""
    document = seller(clas="FlexSeller", **{"class": None})
    with pytest.raises(Invalid) as caught:
        load_spec(Path("peak.yaml"), document, CODE_DIR)
    [hint] = [str(p) for p in caught.value.problems if p.loc == ("clas",)]
    expected = hint.partition("(expected one of: ")[2].rstrip(")").split(", ")
    assert "class" in expected, hint
    assert "params" in expected, hint


# --- generated bad documents --------------------------------------------------------------------

_lists = st.lists(st.integers(), max_size=2)
_dicts = st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
_texts = st.text(max_size=5)
_non_integral = st.floats().filter(lambda f: not f.is_integer())
# A value of a type the field does not take (None aside: several fields take it).
WRONG: dict[str, st.SearchStrategy[Any]] = {
    "str": st.integers() | st.booleans() | st.floats(allow_nan=False) | _lists | _dicts,
    "bool": _texts | st.integers() | st.floats(allow_nan=False) | _lists | _dicts,
    "number": _texts | st.booleans() | _lists | _dicts,
    "int": _texts | st.booleans() | _non_integral | _lists | _dicts,
    "list": _texts | st.integers() | st.booleans() | _dicts,
    "object": _texts | st.integers() | st.booleans() | _lists,
    "enum": st.integers() | st.booleans() | _lists | _dicts,
}
# Every field of the seller document (some absent from the shipped file), with its kind.
FIELDS: list[tuple[Loc, str]] = [
    (("module",), "str"),
    (("class",), "str"),
    (("enabled",), "bool"),
    (("dry_run",), "bool"),
    (("location",), "object"),
    (("location", "location_id"), "list"),
    (("location", "location_id", 0), "str"),
    (("location", "country_code"), "str"),
    (("timer",), "object"),
    (("timer", "interval_s"), "number"),
    (("timer", "timezone"), "str"),
    (("params",), "object"),
    (("params", "floor_price"), "number"),
    (("params", "ask_price"), "number"),
    (("params", "capacity_w"), "number"),
    (("params", "schedule"), "list"),
    (("params", "schedule", 0), "object"),
    (("params", "schedule", 0, "from_hour"), "int"),
    (("params", "schedule", 0, "to_hour"), "int"),
    (("params", "schedule", 0, "power_w"), "number"),
    (("params", "baseline_w"), "number"),
    (("params", "windows_ahead"), "int"),
    (("params", "lead_s"), "int"),
    (("risk",), "object"),
    (("risk", "state"), "enum"),
    (("risk", "max_price"), "number"),
    (("risk", "max_order_power_w"), "number"),
    (("risk", "max_window_power_w"), "number"),
    (("risk", "max_open_orders"), "int"),
    (("risk", "countries"), "list"),
]
MAPPINGS: list[Loc] = [
    (),
    ("location",),
    ("timer",),
    ("params",),
    ("params", "schedule", 0),
    ("risk",),
]


@st.composite
def mutations(draw: st.DrawFn) -> tuple[Loc, Any]:
    """(the mutated path, the value put there): a wrong type, or an unknown key."""
    if draw(st.booleans()):
        loc, kind = draw(st.sampled_from(FIELDS))
        return loc, draw(WRONG[kind])
    parent = draw(st.sampled_from(MAPPINGS))
    key = "zz_" + draw(st.text("abcxyz_", max_size=4))
    return (*parent, key), draw(st.integers() | _texts | _lists)


def put(document: Any, loc: Loc, value: Any) -> None:
    node = document
    for part in loc[:-1]:
        node = node[part]
    node[loc[-1]] = value


@settings(max_examples=150, deadline=None)
@given(mutation=mutations())
def test_generated_bad_seller_documents_are_refused_at_the_mutated_path(
    mutation: tuple[Loc, Any],
) -> None:
    loc, value = mutation
    document = copy.deepcopy(SELLER)
    put(document, loc, value)
    with pytest.raises(Invalid) as caught:
        load_spec(Path("peak.yaml"), document, CODE_DIR)
    problems = caught.value.problems
    assert problems
    for problem in problems:
        assert problem.loc, problem
        assert problem.loc == loc[: len(problem.loc)], (loc, value, problem)


def test_the_shipped_seller_document_itself_loads() -> None:
    """The property's starting point is valid: every problem above is the mutation's."""
    spec = load_spec(Path("peak.yaml"), copy.deepcopy(SELLER), CODE_DIR)
    assert spec.params.floor_price == Decimal("0.15")
