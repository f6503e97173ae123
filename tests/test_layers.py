"""The layer contracts (pyproject.toml, checked by `lint-imports` in CI) cover every part of
flexbot: a new module outside every layer would be checked by nothing."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import flexbot

REPO = Path(__file__).resolve().parent.parent


def layered() -> set[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return {name for layer in contract["layers"] for name in re.split(r"\s*[|:]\s*", layer)}


def parts_of_flexbot() -> set[str]:
    root = Path(flexbot.__file__).parent
    modules = {f"flexbot.{p.stem}" for p in root.glob("*.py") if p.stem != "__init__"}
    packages = {f"flexbot.{p.parent.name}" for p in root.glob("*/__init__.py")}
    return modules | packages


def test_every_module_of_flexbot_sits_in_a_layer() -> None:
    assert parts_of_flexbot() - layered() == set()


def test_every_layer_names_a_module_that_exists() -> None:
    assert layered() - parts_of_flexbot() == set()
