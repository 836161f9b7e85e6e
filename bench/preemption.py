"""What a SIGTERM costs: steps lost and seconds from the signal to the job's exit.

    .venv/bin/python bench/preemption.py              # 4 ranks, LeNet-5 on Fashion-MNIST, 5 trials
    .venv/bin/python bench/preemption.py --trials 2 --ranks 2

Each trial starts `mpiexec -n P fda train --config configs/demo.yaml` (no checkpoint_every: the
only checkpoint is the one the signal asks for), waits until the log shows a random step, sends
SIGTERM to mpiexec (which forwards it to every rank, as SLURM does to a job's tasks), and times
the exit. From the run directory it then reads:
  stopped at   the step the run checkpointed (log `stopped_at_step`, checkpoints/LATEST)
  lost         steps the job completed that the checkpoint does not hold: last logged step - LATEST
               (a resume repeats none of them; that the resumed run is bit-identical to an
               uninterrupted one is tests/test_preemption.py)
  checkpoint   seconds from the signal until LATEST was written (all ranks' files complete)
  stopped      seconds from the signal until rank 0 said it stopped (log closed, every rank past
               the last barrier: fda's part is done)
  exit         seconds from the signal until mpiexec returned (MPI finalized, the Python
               interpreters torn down: on a loaded machine most of the time goes there)
The run stops after the step the ranks agree on (fda.comm.stops): the step in flight on the
rank furthest ahead when rank 0 asks. Results: bench/results/preemption.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PY = Path(sys.executable)
MPIEXEC = PY.parent / "mpiexec"


def _rows(log: Path) -> int:
    try:
        with h5py.File(log, "r") as f:
            return f["steps/step"].shape[0]
    except (OSError, KeyError):
        return 0


def trial(out: Path, ranks: int, steps: int, target: int, env: dict) -> dict:
    cmd = [str(MPIEXEC), "-n", str(ranks), str(PY), "-m", "fda", "train", "--no-progress", "--config",
           "configs/demo.yaml", f"max_steps={steps}", "threads=1", "log_flush_every=1", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    said: dict = {}

    def read_stderr():
        for line in proc.stderr:
            if "fda: interrupted by a signal" in line:
                said["stopped"] = time.time()
    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    log = out / "metrics.h5"
    while _rows(log) < target:
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended (rc {proc.returncode}) before step {target}")
        time.sleep(0.01)
    seen = _rows(log)
    t_signal = time.time()
    os.kill(proc.pid, signal.SIGTERM)
    latest = out / "checkpoints" / "LATEST"
    t_checkpoint = None
    while proc.poll() is None:
        if t_checkpoint is None and latest.exists():
            t_checkpoint = time.time()
        time.sleep(0.005)
    t_exit = time.time()
    reader.join(timeout=10)
    if t_checkpoint is None and latest.exists():
        t_checkpoint = latest.stat().st_mtime
    with h5py.File(log, "r") as f:
        status, stopped = str(f.attrs["status"]), int(f.attrs["stopped_at_step"])
        last = int(f["steps/step"][-1])
    return {"rc": proc.returncode, "status": status, "seen": seen, "stopped": stopped,
            "latest": int(latest.read_text()), "lost": last - int(latest.read_text()),
            "checkpoint_s": t_checkpoint - t_signal, "stopped_s": said.get("stopped", np.nan) - t_signal,
            "exit_s": t_exit - t_signal}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="fda-bench-preemption-") as tmp:
        env["TMPDIR"] = tmp
        for i in range(args.trials):
            out = Path(tmp) / f"run{i}"
            r = trial(out, args.ranks, args.steps, rng.randint(1, args.steps // 2), env)
            rows.append(r)
            print(f"trial {i}: {r}", flush=True)

    exit_s = np.array([r["exit_s"] for r in rows])
    ckpt_s = np.array([r["checkpoint_s"] for r in rows])
    stop_s = np.array([r["stopped_s"] for r in rows])
    lines = [
        "# Preemption: what a SIGTERM costs",
        "",
        f"`{' '.join(['.venv/bin/python', 'bench/preemption.py', *sys.argv[1:]])}` on {platform.node()} "
        f"({os.cpu_count()} cores, {platform.processor() or platform.machine()}), "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, commit "
        f"{subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()}, "
        f"load average {os.getloadavg()[0]:.1f}.",
        "",
        f"{args.ranks} ranks, LeNet-5 on Fashion-MNIST (configs/demo.yaml, max_steps={args.steps}, threads=1), "
        "SIGTERM to mpiexec at a random step (forwarded to every rank).",
        "",
        "| trial | exit code | status | log showed (at the signal) | stopped at (= LATEST) | steps lost "
        "| checkpoint after (s) | stopped after (s) | exit after (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        lines.append(f"| {i} | {r['rc']} | {r['status']} | {r['seen']} | {r['stopped']} | {r['lost']} | "
                     f"{r['checkpoint_s']:.2f} | {r['stopped_s']:.2f} | {r['exit_s']:.2f} |")
    lines += ["", f"Steps lost: {max(r['lost'] for r in rows)} in every trial. Seconds from the signal to the "
              f"exit: median {np.median(exit_s):.2f}, max {exit_s.max():.2f}; the checkpoint was complete after "
              f"median {np.median(ckpt_s):.2f} s and fda had stopped (log closed) after median "
              f"{np.median(stop_s):.2f} s, max {stop_s.max():.2f}; the rest is MPI_Finalize and interpreter "
              "teardown.", ""]
    out = ROOT / "bench" / "results" / "preemption.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
