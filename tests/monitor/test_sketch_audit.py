"""Issue 14's requirement for the Sketch monitor, measured with the audit (audit=true logs the
exact variance beside H): over 20 seeds of FDA with the Sketch monitor, K=3 workers, synthetic
data, MLP, theta=0.05, 300 steps, every run holds H >= Var at >= 95% of its checks and the median
run at >= 98%.

K=3 runs as one process hosting 3 workers (workers_per_rank=3): the same run as 3 ranks up to
float summation order (tests/test_virtual_workers.py); bench/sketch_audit.py under
`mpiexec -n 3` gives the same per-seed figures, without the 3 ranks' contention for 2 cores.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import MPIEXEC, REPO

SEEDS = 20


@pytest.mark.slow
def test_sketch_bound_holds_over_twenty_audited_runs(tmp_path):
    out = tmp_path / "audit.json"
    r = subprocess.run([str(MPIEXEC), "-n", "1", sys.executable, str(REPO / "bench" / "sketch_audit.py"),
                        "--seeds", f"1-{SEEDS}", "--workers-per-rank", "3", "--json", str(out)],
                       capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    runs = json.loads(out.read_text())
    holds = np.array([run["holds"] for run in runs])
    tightness = float(np.median([run["median_h_over_var"] for run in runs]))
    print(r.stdout.splitlines()[-1])  # pytest -s shows the figures: worst, median, median H/Var
    assert len(runs) == SEEDS and all(run["steps"] == 300 for run in runs)
    assert holds.min() >= 0.95, holds
    assert np.median(holds) >= 0.98, holds
    assert 1.0 < tightness < 1.15, tightness  # valid, and not bought with a vacuous bound
