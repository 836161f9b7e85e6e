"""The SLURM job scripts' control flow, with stand-ins for srun and scontrol: the early-warning signal
makes the run checkpoint and exit 75, the script requeues the job, and the requeued job resumes; the
config, run directory and overrides come from the sbatch command line. (tests/cluster submits the
same scripts to a real SLURM.)"""
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from conftest import MPIEXEC, REPO, child_env

SCRIPTS = ("slurm_single_node.sbatch", "slurm_multi_node.sbatch")
# srun: record its options; run anything but fda as is; skip the preflight; run `fda train` on 2 ranks
# and, in the first job, send SIGUSR1 to the ranks once the log has 5 steps, as
# `#SBATCH --signal=USR1@...` does before the time limit
FAKE_SRUN = f"""#!/bin/bash
echo "$@" >> "$SRUN_LOG"
while [[ "$1" == -* ]]; do shift; done
[[ "$1" != fda ]] && exec "$@"
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


# a tiny run, given on the command line as `sbatch SCRIPT [CONFIG] [--out DIR] [KEY=VALUE ...]`
TINY = ["dataset=synthetic", "model=mlp", "threads=1", "max_steps=200", "eval_every=50", "log_flush_every=1",
        "stall_timeout=120"]


def _script(name: str, tmp: Path) -> Path:
    """The job script as shipped, but run in the environment it is called from (ENV_ACTIVATE empty)."""
    lines = ["ENV_ACTIVATE=" if line.startswith("ENV_ACTIVATE=") else line
             for line in (REPO / "jobscripts" / name).read_text().splitlines()]
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


def _below_the_edit_lines(name: str) -> list[str]:
    text = (REPO / "jobscripts" / name).read_text()
    return text[text.index("# --- nothing to edit below"):].splitlines()


def test_both_slurm_scripts_warn_requeue_and_resume_alike():
    assert _below_the_edit_lines(SCRIPTS[0]) == _below_the_edit_lines(SCRIPTS[1])
    for name in SCRIPTS:
        text = (REPO / "jobscripts" / name).read_text()
        for option in ("--signal=USR1@", "--open-mode=append", "--requeue", "--gpus-per-task="):
            assert f"#SBATCH {option}" in text, (name, option)
        assert "SRUN_MPI=pmi2\n" in text and "MODULES=\"\"\n" in text, name  # what the mpich wheel needs
        # the GPU request, the PMI plugin and the modules come first, each explained
        header = text[:text.index("\n#SBATCH --")]
        edits = [header.index(f"\n#   {item} ") for item in ("--gpus-per-task", "SRUN_MPI", "MODULES", "--partition")]
        assert edits == sorted(edits), name


def _env(tmp_path: Path, bin_dir: Path, **extra) -> dict:
    return child_env({"PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
                      "SLURM_SUBMIT_DIR": str(REPO), "SLURM_JOB_ID": "4242", "SLURM_NTASKS_PER_NODE": "2",
                      "SLURM_CPUS_PER_TASK": "1", "SLURM_JOB_NUM_NODES": "1",
                      "SCONTROL_LOG": str(tmp_path / "scontrol.log"), "SRUN_LOG": str(tmp_path / "srun.log"),
                      **extra})


@pytest.mark.parametrize("name", SCRIPTS)
def test_config_run_directory_and_overrides_from_the_command_line(tmp_path, name):
    """`sbatch SCRIPT CONFIG --out DIR KEY=VALUE`: fda gets them (after the script's EXTRA); no `module`
    command and no MODULES is no error; srun gets the PMI plugin and --kill-on-bad-exit."""
    script, bin_dir = _script(name, tmp_path), _tools(tmp_path)
    (bin_dir / "srun").write_text('#!/bin/bash\necho "$@" >> "$SRUN_LOG"\n')
    config = tmp_path / "x.yaml"
    config.write_text("model: mlp\n")
    p = subprocess.run(["bash", str(script), str(config), "--out", str(tmp_path / "mine"), "seed=3", "lr=0.5"],
                       env=_env(tmp_path, bin_dir), capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 0 and "module" not in p.stdout + p.stderr, p.stdout + p.stderr
    preflight, train = (tmp_path / "srun.log").read_text().splitlines()
    options = "--mpi=pmi2 --kill-on-bad-exit=1 --cpus-per-task=1"
    assert preflight == (f"{options} fda preflight --config {config} --out {tmp_path / 'mine'} "
                         "checkpoint_every=500 stall_timeout=900 seed=3 lr=0.5")
    assert train == (f"{options} fda train --no-progress --config {config} --out {tmp_path / 'mine'} "
                     "checkpoint_every=500 stall_timeout=900 seed=3 lr=0.5")

    default = subprocess.run(["bash", str(script)], env=_env(tmp_path, bin_dir, SLURM_JOB_NAME="job"),
                             capture_output=True, text=True, timeout=60, cwd=REPO)
    assert default.returncode == 0, default.stderr
    assert (tmp_path / "srun.log").read_text().splitlines()[-1] == (
        f"{options} fda train --no-progress --config configs/demo.yaml --out runs/job "
        "checkpoint_every=500 stall_timeout=900")


def test_named_modules_without_a_module_command_are_reported_not_fatal(tmp_path):
    lines = [('MODULES="openmpi cuda"' if line.startswith("MODULES=") else line)
             for line in _script(SCRIPTS[0], tmp_path).read_text().splitlines()]
    script = tmp_path / "with_modules.sbatch"
    script.write_text("\n".join(lines) + "\n")
    bin_dir = _tools(tmp_path)
    (bin_dir / "srun").write_text("#!/bin/bash\ntrue\n")
    p = subprocess.run(["bash", str(script)], env=_env(tmp_path, bin_dir), capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert "MODULES=\"openmpi cuda\" but" in p.stdout and "has no 'module' command" in p.stdout


@pytest.mark.slow
def test_time_limit_warning_checkpoints_requeues_and_resumes(tmp_path):
    name = "slurm_multi_node.sbatch"  # the single-node script runs the same lines (test above)
    out = tmp_path / "run"
    script, bin_dir = _script(name, tmp_path), _tools(tmp_path)
    env = _env(tmp_path, bin_dir, OUT_DIR=str(out))
    args = ["bash", str(script), "--out", str(out), *TINY]

    first = subprocess.run(args, env={**env, "SIGNAL_AFTER_STEPS": "5"}, capture_output=True,
                           text=True, timeout=300, cwd=REPO)
    assert first.returncode == 75, first.stdout[-2000:] + first.stderr[-3000:]
    assert "requeueing job 4242" in first.stdout
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    with h5py.File(out / "metrics.h5", "r") as f:
        stopped = int(f.attrs["stopped_at_step"])
        assert f.attrs["status"] == "interrupted" and 5 <= stopped < 200

    again = subprocess.run(args, env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True,
                           text=True, timeout=300, cwd=REPO)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert f"resuming {out} from step {stopped}" in again.stdout
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]  # not requeued again
    with h5py.File(out / "metrics.h5", "r") as f:
        assert f.attrs["status"] == "completed" and f["steps/step"].shape == (200,)
