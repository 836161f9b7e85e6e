"""environment.yml installs what pyproject.toml declares: the same packages with the same versions."""
import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _env():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += dep["pip"]
        else:
            conda.append(dep)
    return conda, pip


def _by_name(reqs):
    out = {}
    for r in map(Requirement, reqs):
        name = canonicalize_name(r.name)
        assert name not in out, f"{name} listed twice"
        out[name] = r.specifier
    return out


def test_same_packages_and_versions():
    project = _pyproject()
    declared = _by_name(project["dependencies"] + project["optional-dependencies"]["test"])
    _, pip = _env()
    installed = _by_name([p for p in pip if not p.startswith("-")])
    optional = _by_name(sum(project["optional-dependencies"].values(), []))
    extra = set(installed) - set(declared)
    assert extra <= set(optional), f"environment.yml installs packages pyproject.toml does not declare: {extra}"
    missing = set(declared) - set(installed)
    assert not missing, f"environment.yml lacks {missing}"
    for name, spec in declared.items():
        assert installed[name] == spec, f"{name}: environment.yml has '{installed[name]}', pyproject.toml '{spec}'"


def test_python_and_the_package_itself():
    conda, pip = _env()
    pythons = [d for d in conda if re.match(r"python\b", d)]
    assert len(pythons) == 1
    version = re.match(r"python\s*=+\s*([\d.]+)", pythons[0]).group(1)
    assert version in SpecifierSet(_pyproject()["requires-python"])
    assert "-e ." in pip  # fda itself, editable


def test_the_cluster_recipe_removes_mpich_and_only_mpich():
    """The recipe for a cluster's own MPI says: delete the `- mpich` line. Deleted, the environment
    still installs everything pyproject.toml requires (mpi4py included, to be built against the
    cluster's MPI), and no MPI library of its own; the wheel is an optional extra, never required."""
    text = (REPO / "environment.yml").read_text()
    lines = text.splitlines()
    mpich = [i for i, line in enumerate(lines) if line.strip() == "- mpich"]
    assert len(mpich) == 1, "environment.yml needs exactly one `- mpich` line for the recipe to delete"
    without = yaml.safe_load("\n".join(lines[:mpich[0]] + lines[mpich[0] + 1:]))
    pip = [p for dep in without["dependencies"] if isinstance(dep, dict) for p in dep["pip"]]
    left = _by_name([p for p in pip if not p.startswith("-")])
    assert "mpich" not in left and "mpi4py" in left
    project = _pyproject()
    assert set(_by_name(project["dependencies"])) <= set(left)
    assert "mpich" not in _by_name(project["dependencies"]) and "mpich" in _by_name(project["optional-dependencies"]["mpich"])
