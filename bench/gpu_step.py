"""Step time on a GPU: FDA (sketch, linear) against no communication and Synchronous.

    mpiexec -n 2 python bench/gpu_step.py --out bench/results/gpu_step.md   # ranks share the GPU(s)

For each model (VGG16* on 1x28x28 inputs, DenseNet121 on 3x32x32; random data, batch 32 per
worker, SGD) and each strategy, every rank trains `--steps` steps through the public API
(`fda.Synchronizer`) and times, per step, with a device synchronisation at the boundaries that
only this benchmark adds:
  compute  forward + backward + optimizer step (`fda.train.local_step`)
  step     `Synchronizer.step()`: drift-state kernel, the state Allreduce (its one device->host
           copy), the decision, and the full-model Allreduce when it syncs
  monitor  the drift-state kernel alone (`fda.kernels.drift_state_out` on this model's flat
           parameters, l=5 m=250 for sketch, with xi for linear), timed with CUDA events
  comm     step - monitor
Medians over the steps after `--warmup`. Strategies: nocomm = fedavg with tau beyond the run
(the Synchronizer still Allreduces its 3-float head each step), fda-sketch and fda-linear
(theta=auto), synchronous (a full sync every step).
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MODELS = {"vgg16star": ((1, 28, 28), 10), "densenet121": ((3, 32, 32), 10)}
STRATEGIES = {
    "nocomm": {"strategy": "fedavg", "tau": 10 ** 9},
    "fda-sketch": {"strategy": "fda", "monitor": "sketch", "theta": "auto"},
    "fda-linear": {"strategy": "fda", "monitor": "linear", "theta": "auto"},
    "synchronous": {"strategy": "synchronous"},
}


class RandomBatches:
    """`ShardLoader`'s interface over fixed random batches already on the device."""

    def __init__(self, shape, classes: int, batch: int, device, seed: int, n: int = 8):
        g = torch.Generator().manual_seed(seed)
        self.batches = [(torch.randn(batch, *shape, generator=g).to(device),
                         torch.randint(classes, (batch,), generator=g).to(device)) for _ in range(n)]
        self.i = 0

    def next_batch(self):
        self.i += 1
        return self.batches[self.i % len(self.batches)]


def kernel_ms(sync, reps: int = 50) -> float:
    """The drift-state kernel alone on this model's flat parameters (CUDA events, median)."""
    from fda import kernels
    mon, ref = sync.monitor, sync.reference
    out = mon.kernel_output(ref.params.device)
    w = sync.worker_params(0)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        kernels.drift_state_out(w, ref.params, out, xi=ref.xi if mon.uses_xi else None,
                                sketch_depth=mon.sketch_depth, sketch_width=mon.sketch_width, seed=0)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times[5:])


def run_one(ctx, model_name: str, strategy: str, steps: int, warmup: int) -> dict:
    import fda
    from fda.models import build_model
    from fda.train import local_step

    shape, classes = MODELS[model_name]
    torch.manual_seed(0)
    model = build_model(model_name, shape, classes).to(ctx.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sync = fda.Synchronizer(model, ctx, optimizer=opt, steps_per_epoch=1000, **STRATEGIES[strategy])
    data = RandomBatches(shape, classes, 32, ctx.device, seed=ctx.rank)
    compute, step = [], []
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = local_step(model, opt, data)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        sync.step(loss)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        compute.append(t1 - t0)
        step.append(t2 - t1)
    row = {"model": model_name, "strategy": strategy, "d": sync.d, "syncs": sync.syncs,
           "compute_ms": 1e3 * statistics.median(compute[warmup:]),
           "step_ms": 1e3 * statistics.median(step[warmup:])}
    row["monitor_ms"] = kernel_ms(sync) if sync.monitor is not None else 0.0
    row["comm_ms"] = row["step_ms"] - row["monitor_ms"]
    row["total_ms"] = row["compute_ms"] + row["step_ms"]
    sync.close()
    return row


def table(rows: list[dict]) -> list[str]:
    lines = ["| model | d | strategy | syncs | compute ms | monitor ms | comm ms | step total ms | "
             "vs nocomm | monitor % of step |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = {r["model"]: r["total_ms"] for r in rows if r["strategy"] == "nocomm"}
    for r in rows:
        lines.append(f"| {r['model']} | {r['d']:,} | {r['strategy']} | {r['syncs']} | {r['compute_ms']:.2f} | "
                     f"{r['monitor_ms']:.3f} | {r['comm_ms']:.2f} | {r['total_ms']:.2f} | "
                     f"{r['total_ms'] / base[r['model']]:.3f}x | {100 * r['monitor_ms'] / r['total_ms']:.2f}% |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--models", default="vgg16star,densenet121")
    p.add_argument("--out", default=str(ROOT / "bench/results/gpu_step.md"))
    args = p.parse_args()
    import fda
    ctx = fda.init(seed=0, device="cuda")
    rows = [run_one(ctx, m, s, args.steps, args.warmup) for m in args.models.split(",") for s in STRATEGIES]
    if ctx.rank != 0:
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip() or "unknown"
    props = torch.cuda.get_device_properties(ctx.device)
    lines = [f"# GPU step time ({datetime.date.today()}, commit {commit})", "",
             f"Device: {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
             f"CUDA {torch.version.cuda}; {ctx.world_size} ranks sharing it, batch 32 per worker, "
             f"median of {args.steps - args.warmup} steps after {args.warmup} warm-up. "
             f"Command: `mpiexec -n {ctx.world_size} python bench/gpu_step.py`.", "", *table(rows), ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
