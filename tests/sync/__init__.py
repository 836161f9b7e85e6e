"""Tests of fda.sync, one module per room (a package, so that its conftest does not shadow tests/conftest.py)."""
