"""Strategy files (`config/strategies/*.yaml`) → `StrategySpec`s, every problem located.

    module: seller            # strategies/seller.py (or an importable dotted module)
    class: FlexSeller
    enabled: true
    dry_run: false            # paper trading for this strategy alone
    location: {location_id: [site-1], country_code: DE}
    timer: {interval_s: 60}   # or {cron: "*/15 * * * *", timezone: Europe/Berlin}
    params: {...}             # the class's params (`Strategy[Params]`)
    risk: {...}               # this strategy's own limits (flexbot.engine.risk.RiskLimits)

A strategy's name is its file's stem. Importing a module runs its code: strategy files are trusted
code, like the config itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
from attrs import frozen

from flexbot import model, wire
from flexbot.engine.risk import RiskLimits, TradingState
from flexbot.problems import Invalid, Problem
from flexbot.schedule import Timer, check_timer
from flexbot.strategy import Strategy

wire.register_enum(TradingState)


@frozen
class StrategyFile:
    """The schema of a strategy file. `params` is checked apart, against the class's params."""

    module: str
    class_: str = attrs.field(metadata={"key": "class"})  # `class` is a Python keyword
    params: Mapping[str, Any] | None = None
    enabled: bool = True
    dry_run: bool = False
    location: model.Location = model.Location()
    timer: Timer | None = None
    risk: RiskLimits = attrs.field(factory=RiskLimits)


@frozen
class StrategySpec:
    name: str
    path: Path
    cls: type[Strategy[Any]]
    params: Any
    enabled: bool = True
    dry_run: bool = False
    location: model.Location = model.Location()
    timer: Timer | None = None
    risk: RiskLimits = RiskLimits()

    @property
    def version(self) -> str:
        return self.cls.version


def load_spec(path: Path, document: Any, code_dir: Path) -> StrategySpec:
    """Build the spec from a parsed strategy file; `Invalid` lists every located problem."""
    if not isinstance(document, dict):
        kind = "an empty file" if document is None else type(document).__name__
        raise Invalid.single((), f"expected a mapping of module, class, params…, got {kind}")
    problems: list[Problem] = []
    spec_file: StrategyFile | None = None
    try:
        spec_file = wire.structure(document, StrategyFile, converter=wire.STRICT_CONVERTER)
    except Invalid as exc:
        problems += exc.problems
    # Every problem at once: what the schema could not hold back is checked from the raw
    # document too (the timer's values, the module and its params).
    timer = spec_file.timer if spec_file is not None else _raw_timer(document.get("timer"))
    if timer is not None:
        problems += [p.under(("timer",)) for p in check_timer(timer)]
    raw_params = document.get("params", {})
    if raw_params is None:
        raw_params = {}
    if not isinstance(raw_params, dict):
        raw_params = None  # the schema reported it
    module_name, class_name = document.get("module"), document.get("class")
    for key, value in (("module", module_name), ("class", class_name)):
        if value == "":
            problems.append(Problem((key,), "must not be empty"))
    cls: type[Strategy[Any]] | None = None
    if isinstance(module_name, str) and module_name:
        try:
            module = import_strategy_module(module_name, code_dir)
        except Invalid as exc:
            problems += exc.problems
        else:
            if isinstance(class_name, str) and class_name:
                try:
                    cls = strategy_class(module, class_name)
                except Invalid as exc:
                    problems += exc.problems
    params: Any = None
    if cls is not None and raw_params is not None:
        try:
            params = wire.structure(
                raw_params, cls.Params, loc=("params",), converter=wire.STRICT_CONVERTER
            )
        except Invalid as exc:
            problems += exc.problems
    if problems or cls is None or spec_file is None:
        raise Invalid(problems or [Problem((), "not a usable strategy file")])
    return StrategySpec(
        name=path.stem,
        path=path,
        cls=cls,
        params=params,
        enabled=spec_file.enabled,
        dry_run=spec_file.dry_run,
        location=spec_file.location,
        timer=spec_file.timer if spec_file.timer is not None else cls.timer,
        risk=spec_file.risk,
    )


def _raw_timer(value: Any) -> Timer | None:
    try:
        return wire.structure(value, Timer, converter=wire.STRICT_CONVERTER)
    except Invalid:
        return None  # its shape is wrong: the schema reported it


def import_strategy_module(name: str, code_dir: Path) -> ModuleType:
    """`name` as a file in `code_dir` (`seller` → `seller.py`), else as an importable module."""
    file = code_dir / f"{name.replace('.', '/')}.py"
    try:
        if file.is_file():
            module_name = f"flexbot_strategies.{name}"
            spec = importlib.util.spec_from_file_location(module_name, file)
            assert spec is not None
            assert spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            # attrs and cattrs resolve a class's annotations through sys.modules.
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise Invalid.single(
                ("module",), f"no strategy module {name!r}: neither {file} nor an installed module"
            ) from None
        raise Invalid.single(("module",), f"cannot import {name!r}: {exc}") from None
    except Exception as exc:  # the module's own code failed: show where, not a traceback
        where = ""
        if isinstance(exc, SyntaxError):
            where = f" (line {exc.lineno})"
        message = f"cannot import {name!r}{where}: {type(exc).__name__}: {exc}"
        raise Invalid.single(("module",), message) from None


def strategy_class(module: ModuleType, class_name: str) -> type[Strategy[Any]]:
    found = getattr(module, class_name, None)
    if found is None:
        raise Invalid.single(("class",), f"{module.__name__} has no class {class_name!r}")
    if not (isinstance(found, type) and issubclass(found, Strategy)):
        raise Invalid.single(("class",), f"{class_name} is not a flexbot.strategy.Strategy")
    params = getattr(found, "Params", None)  # absent from a base still generic in its params
    if params is None:
        message = f"{class_name} is generic in its params: name them, Strategy[MyParams]"
        raise Invalid.single(("class",), message)
    if not attrs.has(params):
        raise Invalid.single(
            ("class",), f"{class_name}'s params class {params.__qualname__} must be an attrs class"
        )
    return found
