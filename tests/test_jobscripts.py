"""The SLURM job scripts' control flow, with stand-ins for srun and scontrol: the early-warning signal
makes the run checkpoint and exit 75, the script requeues the job, and the requeued job resumes."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from conftest import MPIEXEC, REPO

# srun: skip the preflight; run `fda train` on 2 ranks and, in the first job, send SIGUSR1 to the
# ranks once the log has 5 steps, as `#SBATCH --signal=USR1@...` does before the time limit
FAKE_SRUN = f"""#!/bin/bash
while [[ "$1" != fda ]]; do shift; done
shift
[[ "$1" == preflight ]] && exit 0
{MPIEXEC} -n 2 {sys.executable} -m fda "$@" &
pid=$!
if [[ -n "$SIGNAL_AFTER_STEPS" ]]; then
    until {sys.executable} -c "import h5py, sys; sys.exit(h5py.File('$OUT_DIR/metrics.h5', 'r')['steps/step'].shape[0] < 5)" 2>/dev/null; do
        kill -0 $pid 2>/dev/null || break
        sleep 0.1
    done
    kill -USR1 $pid
fi
wait $pid
"""
FAKE_SCONTROL = """#!/bin/bash
echo "$@" >> "$SCONTROL_LOG"
"""


def _script(name: str, out: Path, tmp: Path) -> Path:
    """The job script with its edit-me lines pointed at a tiny run in `out`."""
    text = (REPO / "jobscripts" / name).read_text()
    lines = []
    for line in text.splitlines():
        if line.startswith("ENV_ACTIVATE="):
            line = "ENV_ACTIVATE=true"
        elif line.startswith("OUT="):
            line = f"OUT={out}"
        elif line.startswith("EXTRA="):
            line = ('EXTRA="dataset=synthetic model=mlp threads=1 max_steps=200 eval_every=50 log_flush_every=1 '
                    'stall_timeout=120"')
        lines.append(line)
    path = tmp / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _tools(tmp: Path) -> Path:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _control_flow(name: str) -> list[str]:
    """The script's lines after its preflight, with its srun invocation generalised."""
    text = (REPO / "jobscripts" / name).read_text().replace('"${SRUN[@]}"', "srun")
    return text[text.index("TRAIN=("):].splitlines()


def test_both_slurm_scripts_warn_requeue_and_resume_alike():
    assert _control_flow("slurm_single_node.sbatch") == _control_flow("slurm_multi_node.sbatch")
    for name in ("slurm_single_node.sbatch", "slurm_multi_node.sbatch"):
        assert "#SBATCH --signal=USR1@" in (REPO / "jobscripts" / name).read_text()


@pytest.mark.slow
def test_time_limit_warning_checkpoints_requeues_and_resumes(tmp_path):
    name = "slurm_multi_node.sbatch"  # the single-node script runs the same lines (test above)
    out = tmp_path / "run"
    script, bin_dir = _script(name, out, tmp_path), _tools(tmp_path)
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SLURM_SUBMIT_DIR": str(REPO), "SLURM_JOB_ID": "4242", "SLURM_NTASKS_PER_NODE": "2",
           "SLURM_CPUS_PER_TASK": "1", "SLURM_JOB_NUM_NODES": "1", "SCONTROL_LOG": str(tmp_path / "scontrol.log"),
           "OUT_DIR": str(out), "PYTHONUNBUFFERED": "1"}

    first = subprocess.run(["bash", str(script)], env={**env, "SIGNAL_AFTER_STEPS": "5"}, capture_output=True,
                           text=True, timeout=300, cwd=REPO)
    assert first.returncode == 75, first.stdout[-2000:] + first.stderr[-3000:]
    assert "requeueing job 4242" in first.stdout
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    with h5py.File(out / "metrics.h5", "r") as f:
        stopped = int(f.attrs["stopped_at_step"])
        assert f.attrs["status"] == "interrupted" and 5 <= stopped < 200

    again = subprocess.run(["bash", str(script)], env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True,
                           text=True, timeout=300, cwd=REPO)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert f"resuming {out} from step {stopped}" in again.stdout
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]  # not requeued again
    with h5py.File(out / "metrics.h5", "r") as f:
        assert f.attrs["status"] == "completed" and f["steps/step"].shape == (200,)
