"""`fda preflight` under mpiexec: passes on this machine, fails (naming the check) on a missing dataset."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from conftest import MPIEXEC, child_env  # noqa: E402
ENV = child_env()
CHECKS = ("mpi", "rank", "binding", "kernel", "gpu-mpi", "dataset", "output")


def _preflight(tmp_path, *settings):
    return subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-m", "fda", "preflight", "threads=1",
                           *settings, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=ENV)


def _rows(stdout: str) -> dict:
    rows = {}
    for line in stdout.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 3 and parts[0] in CHECKS:
            rows.setdefault(parts[0], []).append((parts[1], parts[2], parts[3] if len(parts) > 3 else ""))
    return rows


def test_preflight_passes_here(tmp_path):
    p = _preflight(tmp_path, "dataset=synthetic")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("CHECK") == 1  # one table, from rank 0 only
    rows = _rows(p.stdout)
    assert set(rows) == set(CHECKS)
    assert [r[0] for r in rows["rank"]] == ["0", "1"]  # rank -> host -> device, one row per rank
    assert all(status in ("ok", "WARN") for rs in rows.values() for _, status, _ in rs), p.stdout
    assert rows["mpi"][0][1] == "ok" and "Allreduce round trip" in rows["mpi"][0][2]
    assert "all checks passed" in p.stdout
    assert not list((tmp_path / "out").glob(".fda-preflight*"))  # its probe files are cleaned up


def test_preflight_fails_on_a_missing_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    p = _preflight(tmp_path, "dataset=cifar10", f"data_dir={tmp_path / 'empty'}")
    assert p.returncode == 1, p.stdout + p.stderr
    rows = _rows(p.stdout)
    assert rows["dataset"][0][1] == "FAIL" and "not found" in rows["dataset"][0][2]
    assert rows["mpi"][0][1] == "ok"
    assert "1 check(s) FAILED" in p.stdout
    assert "Traceback" not in p.stderr


def test_preflight_bad_setting_exits_2(tmp_path):
    p = _preflight(tmp_path, "dataset=synthetic", "batch_sise=3")
    assert p.returncode == 2
    assert p.stderr.count("did you mean 'batch_size'?") == 1


def _gpu_rank(uuid: str) -> dict:
    return {"device": "cuda:0 (NVIDIA H100)", "gpu_uuid": uuid, "gpus": 1}


def test_ranks_sharing_a_gpu_are_found_by_uuid_not_by_index():
    from fda.preflight import _shared_gpu_problems
    # one GPU visible per task: every rank says cuda:0, only the UUID tells them apart
    assert _shared_gpu_problems("node1", [_gpu_rank("GPU-a"), _gpu_rank("GPU-b")]) == []
    problems = _shared_gpu_problems("node1", [_gpu_rank("GPU-a"), _gpu_rank("GPU-a"), _gpu_rank("GPU-b")])
    assert len(problems) == 1 and "3 ranks share 2 GPU(s)" in problems[0]
    assert _shared_gpu_problems("node1", [{"device": "cpu", "gpus": 0}] * 4) == []


def test_kernel_check_compares_sqnorm_dot_and_sketch():
    import torch
    from fda import kernels
    from fda.kernels import reference
    from fda.preflight import _kernel_matches
    g = torch.Generator().manual_seed(0)
    w, w0, xi = (torch.randn(5000, generator=g) for _ in range(3))
    ref = reference.drift_state(w, w0, xi, 5, 64, 7)
    got = kernels.drift_state(w, w0, xi=xi, sketch_depth=5, sketch_width=64, seed=7)
    assert _kernel_matches(got, ref, rtol=1e-5)
    bad_sketch = got.sketch.clone()
    bad_sketch[2, 3] += 1.0  # a wrong bucket or sign shows only in the sketch
    assert not _kernel_matches((got.sqnorm, got.dot, bad_sketch), ref, rtol=1e-5)
    assert not _kernel_matches((got.sqnorm, got.dot * 1.01 + 0.1, got.sketch), ref, rtol=1e-5)


def test_kernel_check_fails_for_cuda_tensors_without_the_cuda_kernel(monkeypatch):
    import torch
    from fda import kernels
    from fda.preflight import FAIL, _check_kernel
    monkeypatch.setattr(kernels, "cuda_kernel_available", lambda: False)
    status, detail = _check_kernel(torch.device("cuda"))
    assert status == FAIL and "no CUDA kernel" in detail
