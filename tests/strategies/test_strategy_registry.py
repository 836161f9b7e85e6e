"""The strategy registry: complete, and built without an import circle."""
import ast
from pathlib import Path

import pytest

import fda.config
import fda.strategies
from fda.config import make_config
from fda.strategies import STRATEGIES, make_strategy


def test_base_does_not_import_the_strategies():
    pkg = Path(fda.strategies.__file__).parent
    others = {f"fda.strategies.{p.stem}" for p in pkg.glob("*.py") if p.stem not in ("__init__", "base")}
    imported = {n.module for n in ast.walk(ast.parse((pkg / "base.py").read_text())) if isinstance(n, ast.ImportFrom)}
    assert others and not imported & others


def test_every_configurable_strategy_is_registered():
    assert set(fda.config.STRATEGIES) == set(STRATEGIES)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_make_strategy_builds_each(name):
    assert make_strategy(make_config({"strategy": name}), num_params=10, steps_per_epoch=5).name == name
