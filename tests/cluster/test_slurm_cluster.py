"""The job scripts under a real SLURM (a one-node cluster started by .ci/slurm.sh), submitted as a user
would: `sbatch [options] jobscripts/SCRIPT [CONFIG] --out DIR KEY=VALUE...` on a CPU partition.

Skipped unless SLURM_CONF names a running cluster and FDA_SLURM_CLUSTER is set (.ci/slurm.sh does both).
Every scenario is submitted at once (the node declares more CPUs than the machine has) and driven by its
own thread; each test waits for its scenario and checks it. Every scenario prints one line
`slurm scenario NAME: ...` with the steps lost and the seconds from the signal to the requeued job running.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import MPIEXEC, REPO, TIMING, child_env, read_log

pytestmark = pytest.mark.skipif(not (os.environ.get("FDA_SLURM_CLUSTER") and os.environ.get("SLURM_CONF")
                                     and shutil.which("sbatch")),
                                reason="no SLURM test cluster (.ci/slurm.sh starts one)")

STEPS = 600
# the run's config file (the jobs' first argument; without one they would use configs/demo.yaml)
RUN_YAML = (f"device: cpu\ndataset: synthetic\nmodel: mlp\nthreads: 1\nmax_steps: {STEPS}\neval_every: 100\n"
            "log_flush_every: 1\nseed: 11\n")
OVERRIDES = ["checkpoint_every=100"]  # after the scripts' EXTRA (checkpoint_every=500 stall_timeout=900)
# a CPU partition: no GPU request, 2 ranks of 1 core
CPU = ["--partition=cpu", "--gpus-per-task=0", "--ntasks-per-node=2", "--cpus-per-task=1"]
SIGNAL_AFTER_ROWS = 50
JOB_TIMEOUT_S = 480
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE"}


def _env() -> dict:
    return child_env({"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})


def _run(*cmd, check=True) -> str:
    p = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=60, env=_env(), cwd=REPO)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: rc {p.returncode}: {p.stderr}")
    return p.stdout


def job_info(job: str) -> dict:
    text = _run("scontrol", "show", "job", "-o", job)
    return dict(t.split("=", 1) for t in text.split() if "=" in t)


def rank_pids(run: Path) -> list[int]:
    """The ranks of `fda train ... --out run` (not srun, not the batch shell)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "train" in args and str(run) in args and any(a.endswith("/fda") or a == "fda" for a in args[:2]) \
                and not args[0].endswith("srun"):
            pids.append(int(cmdline.parent.name))
    return pids


def signal_ranks(run: Path, sig: int) -> int:
    pids = rank_pids(run)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return len(pids)


def unmapped_mpich_segments() -> list[str]:
    """MPICH shared-memory files that no process maps (what a SIGKILLed job leaves)."""
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            mapped.update(line.split()[-1] for line in maps.read_text().splitlines() if "/dev/shm/" in line)
        except OSError:
            continue
    return sorted(str(p) for p in Path("/dev/shm").glob("mpich_shm_*") if str(p) not in mapped)


def rows_logged(run: Path) -> int:
    import h5py
    try:
        with h5py.File(run / "metrics.h5", "r") as f:
            return f["steps/step"].shape[0]
    except (OSError, KeyError):
        return 0


class Scenario(threading.Thread):
    """Submits one job and drives it; `facts` holds what the test checks."""

    def __init__(self, name: str, base: Path, config: Path, script: str = "slurm_single_node.sbatch", sbatch=(),
                 run=OVERRIDES):
        super().__init__(daemon=True, name=name)
        self.base = base / name
        self.base.mkdir(parents=True)
        self.out, self.script, self.sbatch = self.base / "run", script, list(sbatch)
        self.run_settings = [str(config), *run]
        self.facts: dict = {"name": name}
        self.error: BaseException | None = None

    def submit(self, *extra_sbatch) -> str:
        output = self.base / "%x-%j.out"
        job = _run("sbatch", "--parsable", f"--job-name=fda-{self.name}", f"--output={output}", *CPU, *self.sbatch,
                   *extra_sbatch, self.script_path(), "--out", self.out, *self.run_settings).strip().split(";")[0]
        self.facts.setdefault("jobs", []).append(job)
        return job

    def script_path(self) -> Path:
        return REPO / "jobscripts" / self.script

    def output(self) -> str:
        return "".join(p.read_text() for p in sorted(self.base.glob("*.out")))

    def wait(self, job: str, until, what: str, timeout=JOB_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = job_info(job)
            if until(info):
                return info
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: job {job} not {what} within {timeout} s: {job_info(job)}\n"
                             f"{self.output()[-3000:]}")

    def wait_rows(self, job: str, rows: int) -> None:
        self.wait(job, lambda i: rows_logged(self.out) >= rows or i["JobState"] in ENDED, f"at {rows} rows")
        assert rows_logged(self.out) >= rows, f"{self.name}: the job ended before {rows} steps\n{self.output()}"

    def wait_end(self, job: str, restarts: int = 0) -> dict:
        return self.wait(job, lambda i: i["JobState"] in ENDED and int(i["Restarts"]) >= restarts, "ended")

    def record_stop(self) -> None:
        """What the stopped job left: its status, rows logged and the checkpoint (steps lost)."""
        log = read_log(self.out)
        latest = self.out / "checkpoints" / "LATEST"
        checkpoint = int(latest.read_text()) if latest.exists() else 0
        rows = len(log["steps"]["step"])
        self.facts.update(status=str(log["attrs"]["status"]), rows=rows, checkpoint=checkpoint,
                          steps_lost=rows - checkpoint)

    def run(self) -> None:
        try:
            self.drive()
        except BaseException as e:  # reported by the test
            self.error = e

    def drive(self) -> None:
        raise NotImplementedError

    def result(self, timeout=JOB_TIMEOUT_S + 120) -> dict:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} still running"
        if self.error:
            raise self.error
        shown = {k: v for k, v in self.facts.items() if k in ("first_state", "steps_lost", "signal_to_running_s", "double_sigterm", "stale_segments", "state",
                                                      "status")}
        print(f"\nslurm scenario {self.name}: " + ", ".join(f"{k}={v}" for k, v in shown.items()), flush=True)
        return self.facts


class Completes(Scenario):
    def drive(self):
        job = self.submit()
        self.facts.update(state=self.wait_end(job)["JobState"], status=str(read_log(self.out)["attrs"]["status"]))


class SignalRequeueResume(Scenario):
    """`scancel --signal=USR1` (the early warning): exit 75, the script requeues, the job resumes."""

    def drive(self):
        job = self.submit()
        self.wait_rows(job, SIGNAL_AFTER_ROWS)
        _run("scancel", "--signal=USR1", job)
        sent = time.monotonic()
        self.wait(job, lambda i: int(i["Restarts"]) >= 1, "requeued")
        self.record_stop()
        self.wait(job, lambda i: int(i["Restarts"]) >= 1 and i["JobState"] == "RUNNING", "running again")
        self.facts["signal_to_running_s"] = round(time.monotonic() - sent, 1)
        self.facts["state"] = self.wait_end(job, restarts=1)["JobState"]


class TimeLimit(Scenario):
    """A real time limit (--time=1) and no early warning: slurmd's SIGTERM (twice, ms apart). The ranks
    are paused (SIGSTOP) once they have logged some steps, so the minute costs no CPU; at the limit SLURM
    sends SIGCONT and SIGTERM. Then `sbatch` again resumes the run."""

    def script_path(self) -> Path:  # the script as shipped without its early warning
        path = self.base / self.script
        path.write_text("".join(line for line in self.script_path_shipped().read_text().splitlines(True)
                                if not line.startswith("#SBATCH --signal=")))
        return path

    def script_path_shipped(self) -> Path:
        return REPO / "jobscripts" / self.script

    def drive(self):
        job = self.submit("--time=1")
        self.wait_rows(job, SIGNAL_AFTER_ROWS)
        assert signal_ranks(self.out, signal.SIGSTOP) == 2, f"{self.name}: no ranks to pause"
        info = self.wait(job, lambda i: i["JobState"] in ENDED, "timed out", timeout=240)
        self.facts["first_state"] = info["JobState"]
        self.record_stop()
        self.facts["double_sigterm"] = len(re.findall(r"got SIGTERM again within", self.output()))
        again = self.submit("--time=10")
        self.facts["state"] = self.wait_end(again)["JobState"]


class Cancelled(Scenario):
    def drive(self):
        job = self.submit()
        self.wait_rows(job, SIGNAL_AFTER_ROWS)
        _run("scancel", job)
        self.facts["state"] = self.wait_end(job)["JobState"]
        self.record_stop()


class KilledThenRequeued(Scenario):
    """SIGKILL to the ranks (what a node failure or the OOM killer does): no checkpoint can be written;
    `scontrol requeue` then starts it again, and it resumes from the newest checkpoint without hanging
    (MPICH's segments of the killed job, same job and step id, are gone)."""

    def drive(self):
        job = self.submit()
        self.wait_rows(job, 2 * 100 + SIGNAL_AFTER_ROWS)
        assert signal_ranks(self.out, signal.SIGKILL) == 2, f"{self.name}: no ranks to kill"
        sent = time.monotonic()
        self.facts["first_state"] = self.wait_end(job)["JobState"]
        self.facts["stale_segments"] = len(unmapped_mpich_segments())
        self.record_stop()
        _run("scontrol", "requeue", job)
        self.wait(job, lambda i: int(i["Restarts"]) >= 1 and i["JobState"] == "RUNNING", "running again")
        self.facts["signal_to_running_s"] = round(time.monotonic() - sent, 1)
        self.facts["state"] = self.wait_end(job, restarts=1)["JobState"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run, uninterrupted, under mpiexec (started before the jobs, in the background)."""
    base = tmp_path_factory.mktemp("reference")
    config, out = base / "run.yaml", base / "run"
    config.write_text(RUN_YAML)
    proc = subprocess.Popen([str(MPIEXEC), "-n", "2", sys.executable, "-m", "fda", "train", "--no-progress",
                             "--config", str(config), *OVERRIDES, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=REPO)
    return proc, out, config


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory, reference):
    base = tmp_path_factory.mktemp("slurm")
    config = reference[2]
    short = base / "short.yaml"
    short.write_text(RUN_YAML.replace(f"max_steps: {STEPS}", "max_steps: 100"))
    runs = {
        "completes": Completes("completes", base, short, run=[]),
        "usr1": SignalRequeueResume("usr1", base, config),
        "time-limit": TimeLimit("time-limit", base, config),
        "scancel": Cancelled("scancel", base, config),
        "sigkill": KilledThenRequeued("sigkill", base, config),
        "multi-node": Completes("multi-node", base, short, script="slurm_multi_node.sbatch", sbatch=["--nodes=1"],
                                run=[]),
    }
    for s in runs.values():
        s.start()
    return runs


def assert_bit_identical(run: Path, reference) -> None:
    proc, ref_out, _ = reference
    if proc.returncode is None:
        _, err = proc.communicate(timeout=JOB_TIMEOUT_S)
        assert proc.returncode == 0, err[-3000:]
    got, want = read_log(run), read_log(ref_out)
    assert got["attrs"]["status"] == "completed"
    assert np.array_equal(got["steps"]["step"], np.arange(1, STEPS + 1))
    for group in ("steps", "evals"):
        for name, values in want[group].items():
            if name not in TIMING:
                assert np.array_equal(values, got[group][name], equal_nan=True), f"{group}/{name} differs"
    assert want["steps"]["synced"].sum() > 1, "no synchronisation: the comparison would prove little"


def test_single_node_script_with_a_cpu_only_config_completes(scenarios):
    facts = scenarios["completes"].result()
    assert facts["state"] == "COMPLETED" and facts["status"] == "completed"
    assert "all checks passed" in scenarios["completes"].output()


def test_multi_node_script_on_one_node_of_a_cpu_partition_completes(scenarios):
    facts = scenarios["multi-node"].result()
    assert facts["state"] == "COMPLETED" and facts["status"] == "completed"


def test_early_warning_signal_requeues_and_resumes_bit_identical(scenarios, reference):
    s = scenarios["usr1"]
    facts = s.result()
    assert facts["status"] == "interrupted" and facts["steps_lost"] == 0, facts
    assert facts["state"] == "COMPLETED", facts
    out = s.output()  # one file over both runs of the job (--open-mode=append)
    assert "requeueing job" in out and f"resuming {s.out} from step {facts['checkpoint']}" in out, out[-3000:]
    assert_bit_identical(s.out, reference)


def test_time_limit_without_warning_checkpoints_and_resumes_bit_identical(scenarios, reference):
    s = scenarios["time-limit"]
    facts = s.result()
    assert facts["first_state"] == "TIMEOUT", facts
    assert facts["status"] == "interrupted" and facts["steps_lost"] == 0, (facts, s.output()[-3000:])
    assert facts["state"] == "COMPLETED", facts
    assert_bit_identical(s.out, reference)


def test_scancel_stops_with_a_checkpoint(scenarios):
    facts = scenarios["scancel"].result()
    assert facts["state"] == "CANCELLED", facts
    assert facts["status"] == "interrupted" and facts["steps_lost"] == 0, facts


def test_requeue_after_sigkill_resumes_without_hanging(scenarios, reference):
    s = scenarios["sigkill"]
    facts = s.result()
    assert facts["first_state"] == "FAILED" and facts["status"] == "running", facts  # no checkpoint possible
    assert facts["checkpoint"] >= 100 and 0 <= facts["steps_lost"] < 100 + SIGNAL_AFTER_ROWS, facts
    assert facts["state"] == "COMPLETED", facts
    assert_bit_identical(s.out, reference)
