"""CMake's CUDA checks (CMakeLists.txt), without a GPU: a torch with CUDA but no nvcc gives a loud
CPU-only warning, and an nvcc whose major version differs from torch's CUDA stops the configure
with a clear message.  torch's CUDA version is faked by an FDA_PYTHON that prints it."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
NVCC = Path(os.environ.get("FDA_TEST_NVCC", "/usr/local/cuda-13.0/bin/nvcc"))
CMAKE = shutil.which("cmake", path=str(Path(os.sys.executable).parent)) or shutil.which("cmake")

pytestmark = pytest.mark.skipif(CMAKE is None, reason="cmake not found")


def _fake_python(tmp_path: Path, cuda: str) -> Path:
    """Answers CMakeLists.txt's one question to FDA_PYTHON: torch's CMake prefix and CUDA version."""
    p = tmp_path / "python"
    p.write_text(f"#!/bin/sh\nprintf '%s\\n%s\\n' '{torch.utils.cmake_prefix_path}' '{cuda}'\n")
    p.chmod(0o755)
    return p


def _configure(tmp_path: Path, cuda: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([CMAKE, "-S", str(REPO), "-B", str(tmp_path / "build"), f"-DFDA_PYTHON={_fake_python(tmp_path, cuda)}",
                           f"-DFDA_NATIVE_DIR={tmp_path / 'out'}"], env=env, capture_output=True, text=True, timeout=600)


def _env_without_cuda() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDACXX", "CUDA_HOME", "CUDA_PATH", "CUDAToolkit_ROOT")}
    env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep)
                                  if d and not (Path(d) / "nvcc").exists())
    return env


def test_cuda_torch_without_nvcc_warns_loudly(tmp_path):
    res = _configure(tmp_path, "13.0", _env_without_cuda())
    assert res.returncode == 0, res.stderr[-3000:]
    assert "CPU-ONLY" in res.stderr and "no CUDA" in res.stderr
    assert "CUDA kernel: OFF" in res.stdout


@pytest.mark.skipif(not NVCC.exists(), reason=f"no nvcc at {NVCC} (FDA_TEST_NVCC)")
def test_nvcc_and_torch_cuda_major_versions_must_match(tmp_path):
    env = dict(_env_without_cuda(), CUDACXX=str(NVCC))
    res = _configure(tmp_path, "11.8", env)
    assert res.returncode != 0
    assert "does not match torch's CUDA 11.8" in res.stderr.replace("\n  ", " ")


def test_profiling_op_only_in_the_benchmark_build(tmp_path):
    """fda::_drift_state_profile (bench/kernel.py's breakdown) is compiled only with FDA_BENCHMARK=ON."""
    env = _env_without_cuda()
    (tmp_path / "a").mkdir()
    default = _configure(tmp_path / "a", "", env)
    assert default.returncode == 0, default.stderr[-3000:]
    assert "benchmark build: OFF" in default.stdout
    res = subprocess.run([CMAKE, "-S", str(REPO), "-B", str(tmp_path / "b/build"),
                          f"-DFDA_PYTHON={_fake_python(tmp_path, '')}", "-DFDA_BENCHMARK=ON",
                          f"-DFDA_NATIVE_DIR={tmp_path / 'b/out'}"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "benchmark build: ON" in res.stdout
    flags = (tmp_path / "b/build/build.ninja").read_text() if (tmp_path / "b/build/build.ninja").exists() else \
        "".join(p.read_text() for p in (tmp_path / "b/build").rglob("flags.make"))
    assert "FDA_PROFILING" in flags
