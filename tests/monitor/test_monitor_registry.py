"""The monitor registry: complete, and built without an import circle."""
import ast
from pathlib import Path

import pytest

import fda.config
import fda.monitor
from fda.monitor import MONITORS, make_monitor


def test_base_does_not_import_the_monitors():
    pkg = Path(fda.monitor.__file__).parent
    subclasses = {f"fda.monitor.{p.stem}" for p in pkg.glob("*.py") if p.stem not in ("__init__", "base")}
    imported = {n.module for n in ast.walk(ast.parse((pkg / "base.py").read_text())) if isinstance(n, ast.ImportFrom)}
    assert subclasses and not imported & subclasses


def test_every_configurable_monitor_is_registered():
    assert set(fda.config.MONITORS) <= set(MONITORS)


@pytest.mark.parametrize("name", sorted(MONITORS))
def test_make_monitor_builds_each(name):
    assert make_monitor(name).name == name


def test_unknown_monitor_is_refused():
    with pytest.raises(ValueError, match="unknown monitor 'ams'"):
        make_monitor("ams")
