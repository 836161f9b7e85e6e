"""Where one training step's time goes: local compute, state kernel, state Allreduce, and the
full-sync Allreduce amortised; plus the full sync's bandwidth against a bare mpi4py Allreduce
of the same bytes in the same MPI job, and FDA's step time against a run with no communication.

    .venv/bin/python bench/step.py            # LeNet-5 and VGG16*, 2 and 4 ranks, a few minutes
    .venv/bin/python bench/step.py --quick    # LeNet-5 only

Each (model, ranks) is ONE `mpiexec -n P` job that trains short runs on Fashion-MNIST with
the same context (threads=1 per rank, no evaluation; nocomm and fda twice, interleaved):
  nocomm       strategy=fedavg with tau > max_steps: never syncs, and makes no collective
               between syncs (the loss is reduced at evaluations only); that is the floor.
  fda          strategy=fda monitor=sketch (LeNet-5 theta=0.5; VGG16* theta=auto)
  synchronous  a full-model Allreduce every step
The split is read from the HDF5 step arrays (time_compute, time_monitor, time_comm):
  state Allreduce = fda's time_comm on steps without a sync (it includes waiting for the
                    slowest rank: it is the step's only synchronisation point)
Then, in the same job, after a Barrier each: a bare `comm.Allreduce(IN_PLACE, float32[n])` of
the model's flat buffer size (and of the int16 / int8 fields' bytes as 64-bit words), and
`Synchronizer.step()` with each of SYNC_ARMS (syncing at every step) and with a twin that
never syncs; a sync = the difference (medians).
Last, in this process (one thread), the float32 sync's epilogue alone (what follows its Allreduce:
divide by K, refresh w0, and for the Linear monitor xi's direction) as the native one-pass op
`fda.kernels.mean_epilogue_` against the same work as separate torch ops (its reference).
Results: bench/results/step.md (+ step.json).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

WARMUP = 5  # steps dropped from every statistic (allocator, first Allreduces)
# Syncing at every step: plain averaging with no w0 kept (synchronous), and FDA's case, which
# refreshes w0 at the sync, in float32 and compressed. Each is timed against a never-syncing twin.
SYNC_ARMS = {
    "synchronous": dict(strategy="synchronous"),
    "fda float32": dict(strategy="fda", monitor="naive", theta=0.0),
    "fda int16": dict(strategy="fda", monitor="naive", theta=0.0, sync_compression="int16"),
    "fda int8": dict(strategy="fda", monitor="naive", theta=0.0, sync_compression="int8"),
}
MODELS = {
    "lenet5": {"steps": 200, "fda": {"theta": 0.5}},
    "vgg16star": {"steps": 15, "fda": {"theta": "auto", "theta_profile": "balanced"}},
}


EPILOGUE_CASES = {"sketch or naive monitor: w0": ("ref",), "Linear monitor: w0 and xi": ("ref", "drift")}


def epilogue_timings(d: int, reps: int = 50) -> dict:
    """ms (median) of the float32 sync's epilogue at size d: the native op vs the torch ops."""
    import torch
    from fda import kernels
    from fda.kernels import reference
    torch.set_num_threads(1)
    total, ref, drift = torch.randn(d), torch.randn(d), torch.empty(d)
    out = {}
    for case, parts in EPILOGUE_CASES.items():
        kw = {"ref": ref, "drift": drift if "drift" in parts else None}
        arms = {"native": lambda: kernels.mean_epilogue_(total, 2, **kw),
                "torch ops": lambda: reference.mean_epilogue_(total, 2, kw["ref"], kw["drift"], [])}
        times = {name: [] for name in arms}
        for _ in range(reps):
            for name, f in arms.items():
                t = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t)
        out[case] = {name: float(np.median(ts)) for name, ts in times.items()}
    return out


# ------------------------------------------------------------------ worker side (under mpiexec)
def worker(model: str, steps: int, out: Path, result: Path, bare_reps: int) -> None:
    import torch
    from mpi4py import MPI

    import fda
    from fda import train
    from fda.config import make_config
    from fda.h5log import open_log
    from fda.flat import FlatModel
    from fda.context import steps_per_epoch
    from fda.data import ShardLoader, load_dataset, partition
    from fda.models import build_model
    from fda.synchronizer import Synchronizer

    ctx = fda.init(seed=0, threads=1)
    data = load_dataset("fashion-mnist", None, seed=0)
    parts = partition(data.y_train, ctx.workers, "iid", seed=0)
    spe = steps_per_epoch(data.num_train, ctx.workers, 32)
    base = dict(dataset="fashion-mnist", model=model, max_steps=steps, threads=1, batch_size=32,
                optimizer="adam", lr=1e-3, seed=0, log_flush_every=10**6)
    variants = {
        "nocomm": {"strategy": "fedavg", "tau": steps + 1},
        "fda": {"strategy": "fda", "monitor": "sketch", **MODELS[model]["fda"]},
        "synchronous": {"strategy": "synchronous"},
    }

    def train_short(cfg, log_dir: Path) -> None:
        """`fda train`'s loop without the evaluation (which would dominate a short run)."""
        torch.manual_seed(0)
        net = build_model(model, data.input_shape, data.num_classes)
        opt = train.make_optimizer(cfg, net)
        loader = ShardLoader(data.x_train, data.y_train, parts[ctx.rank], 32, seed=0, worker=ctx.rank)
        sync = Synchronizer(net, ctx, config=cfg, optimizer=opt, log=log_dir, steps_per_epoch=spe,
                            overwrite=True)
        for _ in range(steps):
            sync.step(train.local_step(net, opt, loader))
        sync.close()

    arrays, attrs = {}, {}
    # nocomm and fda twice, interleaved, so that a burst of load from elsewhere hits both
    for name in ("nocomm", "fda", "synchronous", "nocomm", "fda"):
        key = name if name not in arrays else f"{name}#2"
        log_dir = out / key.replace("#", "_")
        train_short(make_config({**base, **variants[name]}), log_dir)
        if ctx.is_root:
            with open_log(log_dir) as f:
                arrays[key] = {k: f["steps"][k][()].tolist() for k in f["steps"]}
                attrs[key] = {"theta": float(f.attrs["theta"]), "num_params": int(f.attrs["num_params"])}

    # The library's syncs vs a bare Allreduce of the float32 model, each after a Barrier so that
    # no rank's lateness is counted: Synchronizer.step with a strategy that syncs at every step
    # minus the same call with one that never does (same state Allreduce, same kernel).
    n = FlatModel(build_model(model, data.input_shape, data.num_classes)).flat.numel()

    def lib(**settings):
        return Synchronizer(build_model(model, data.input_shape, data.num_classes), ctx, threads=1, **settings)

    arms = {name: lib(**settings) for name, settings in SYNC_ARMS.items()}
    floors = {"floor": lib(strategy="fedavg", tau=10**9), "floor_w0": lib(strategy="fda", monitor="naive", theta=1e30)}
    bare = {"bare": np.ones(n, dtype=np.float32)}
    for width, bits in (("int16", 16), ("int8", 8)):  # the same wire bytes as the compressed syncs' fields
        bare[f"bare_{width}"] = np.zeros(-(-n * bits // 64), dtype=np.uint64)
    comm = ctx.mpi_comm

    def timed(fn) -> float:
        comm.Barrier()
        t = time.perf_counter()
        fn()
        return comm.allreduce(time.perf_counter() - t, op=MPI.MAX)

    times = {name: [] for name in [*bare, *arms, *floors]}
    moved = dict.fromkeys(arms, 0)  # each arm's own sync bytes (the arms share ctx's byte counter)
    for i in range(bare_reps + 3):
        for name, buf in bare.items():
            t_ = timed(lambda: comm.Allreduce(MPI.IN_PLACE, buf))
            if i >= 3:
                times[name].append(t_)
        for name, sync in [*arms.items(), *floors.items()]:
            before = ctx.fda_comm.bytes.get("sync")
            t_ = timed(lambda: sync.step(0.0))
            if name in moved:
                moved[name] += ctx.fda_comm.bytes.get("sync") - before
            if i >= 3:
                times[name].append(t_)
    sync_bytes = {name: moved[name] // max(1, sync.syncs) for name, sync in arms.items()}
    if ctx.is_root:
        result.write_text(json.dumps({"model": model, "ranks": ctx.world_size, "steps": steps,
                                      "flat_floats": n, "micro": times, "sync_bytes": sync_bytes,
                                      "arrays": arrays, "attrs": attrs}))
    ctx.fda_comm.stop_watching()


# ------------------------------------------------------------------------------ analysis
def _concat(arrays: dict, name: str, field: str) -> np.ndarray:
    """One field over the repeats of a variant, each without its warm-up steps."""
    parts = [np.asarray(v[field], dtype=float)[WARMUP:] for k, v in arrays.items() if k.split("#")[0] == name]
    return np.concatenate(parts)


def _step_time(arrays: dict, name: str) -> dict:
    """Per-step time (compute + monitor + comm): mean and median, averaged over the repeats."""
    per_run = []
    for k, v in arrays.items():
        if k.split("#")[0] == name:
            total = (np.asarray(v["time_compute"]) + np.asarray(v["time_monitor"]) + np.asarray(v["time_comm"]))
            per_run.append((np.mean(total[WARMUP:]), np.median(total[WARMUP:])))
    return {"mean": float(np.mean([m for m, _ in per_run])), "median": float(np.mean([m for _, m in per_run]))}


def _stats(x: np.ndarray) -> dict:
    return {"mean": float(np.mean(x)), "median": float(np.median(x))} if x.size else {"mean": np.nan, "median": np.nan}


def analyse(r: dict) -> dict:
    a = r["arrays"]
    synced = _concat(a, "fda", "synced").astype(bool)
    state_ar = _concat(a, "fda", "time_comm")[~synced]
    micro = {k: float(np.median(v)) for k, v in r["micro"].items()}
    nbytes = 4 * r["flat_floats"]
    syncs = {}
    for name in SYNC_ARMS:
        took = micro[name] - micro["floor" if name == "synchronous" else "floor_w0"]
        width = name.split()[-1]
        syncs[name] = {"s": took, "bytes": r["sync_bytes"][name], "bytes_vs_float32": nbytes * 2 * r["ranks"],
                       "bare_same_wire": micro.get(f"bare_{width}", micro["bare"]),
                       "ratio": micro["bare"] / took if took > 0 else float("nan")}
    full_sync = syncs["fda float32"]["s"]
    fda_syncs = int(synced.sum())
    step_fda, step_nocomm = _step_time(a, "fda"), _step_time(a, "nocomm")
    return {
        "model": r["model"], "ranks": r["ranks"], "steps": r["steps"], "d": r["attrs"]["fda"]["num_params"],
        "theta": r["attrs"]["fda"]["theta"], "fda_syncs_per_step": fda_syncs / max(1, synced.size),
        "compute": _stats(_concat(a, "fda", "time_compute")),
        "state_kernel": _stats(_concat(a, "fda", "time_monitor")),
        "state_allreduce": _stats(state_ar),
        "full_sync": full_sync, "full_sync_amortised": full_sync * fda_syncs / max(1, synced.size),
        "bare": micro["bare"], "bytes": nbytes, "syncs": syncs,
        "step_fda": step_fda, "step_nocomm": step_nocomm, "step_sync": _step_time(a, "synchronous"),
        "fda_over_nocomm_mean": step_fda["mean"] / step_nocomm["mean"] - 1,
        "fda_over_nocomm_median": step_fda["median"] / step_nocomm["median"] - 1,
    }


def ms(x: float) -> str:
    return f"{x * 1e3:.3f}"


def markdown(rows: list[dict], epilogues: dict, command: str, wall: float) -> str:
    from compare import commit, machine
    lines = [
        "# Step time: where one training step goes", "",
        f"- Machine: {machine()} (shared with other work while measured: expect noise)",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Commit: {commit()}",
        f"- Command: `{command}` ({wall:.0f} s)",
        "- Each row: one `mpiexec -n P` job (P ranks = P workers on 2 cores), Fashion-MNIST IID, batch 32 per rank, Adam, threads=1 per rank, "
        f"first {WARMUP} steps dropped. Times in ms per step (mean / median).", "",
        "## Split of an FDA step (sketch monitor)", "",
        "| model | d | ranks | steps x2 | FDA syncs per step | local compute | state kernel | "
        "state Allreduce (incl. waiting for the slowest rank) | full sync (when it happens: fda float32 below) | "
        "full sync amortised over FDA's steps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['d']:,} | {r['ranks']} | {r['steps']} | {r['fda_syncs_per_step']:.3f} | "
            f"{ms(r['compute']['mean'])} / {ms(r['compute']['median'])} | "
            f"{ms(r['state_kernel']['mean'])} / {ms(r['state_kernel']['median'])} | "
            f"{ms(r['state_allreduce']['mean'])} / {ms(r['state_allreduce']['median'])} | "
            f"{ms(r['full_sync'])} | {ms(r['full_sync_amortised'])} |")
    lines += [
        "", "## A sync vs a bare mpi4py Allreduce of the float32 model (same job)", "",
        "After a Barrier each, interleaved, medians of the repetitions. A sync is `Synchronizer.step()` with "
        "a strategy that syncs at every step minus the same call with one that never does (same state "
        "Allreduce and kernel), so it includes all the library does around its Allreduce: "
        "`synchronous` divides by K (plain averaging on a schedule keeps no w0); `fda` also refreshes w0 "
        "(FDA's drift origin); int16/int8 quantize the drift plus residual, agree block scales (a MAX "
        "Allreduce), sum the integer fields (one Allreduce of 64-bit words) and decode. MPI bytes per "
        "sync: `comm_bytes_mpi`'s count (2·n·P per Allreduce of n bytes over P ranks). Goal: the float32 "
        "sync at >= 85% of the bare Allreduce.", "",
        "| model | ranks | sync | MPI bytes per sync | float32 / these bytes | sync ms | bare float32 Allreduce ms | "
        "bare Allreduce of the same fields ms | bare float32 / sync |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for name, v in r["syncs"].items():
            lines.append(f"| {r['model']} | {r['ranks']} | {name} | {v['bytes']:,} | "
                         f"{v['bytes_vs_float32'] / v['bytes']:.3f}x | {ms(v['s'])} | {ms(r['bare'])} | "
                         f"{ms(v['bare_same_wire'])} | {v['ratio'] * 100:.0f}% |")
    lines += [
        "", "## FDA's time per step vs no communication", "",
        "Per-step time = time_compute + time_monitor + time_comm from the h5 arrays, averaged over "
        "two interleaved runs each. Goal: FDA at most 10% above no communication on LeNet-5.", "",
        "| model | ranks | no comm ms | FDA ms | Synchronous ms | FDA overhead (mean) | FDA overhead (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['ranks']} | {ms(r['step_nocomm']['mean'])} / {ms(r['step_nocomm']['median'])} | "
                     f"{ms(r['step_fda']['mean'])} / {ms(r['step_fda']['median'])} | "
                     f"{ms(r['step_sync']['mean'])} / {ms(r['step_sync']['median'])} | "
                     f"{r['fda_over_nocomm_mean'] * 100:+.1f}% | {r['fda_over_nocomm_median'] * 100:+.1f}% |")
    lines += [
        "", "## The float32 sync's epilogue alone (one process, one thread)", "",
        "What follows the sync's Allreduce of the summed flat model: divide by K, refresh w0 (and, "
        "with the Linear monitor, write xi's direction new w0 - old w0): the native one-pass "
        "`fda.kernels.mean_epilogue_` against the same work as separate torch ops. Medians of 50 "
        "interleaved calls.", "",
        "| model | d | case | native ms | torch ops ms | saved |",
        "|---|---|---|---|---|---|",
    ]
    for model, (d, cases) in epilogues.items():
        for case, t in cases.items():
            lines.append(f"| {model} | {d:,} | {case} | {ms(t['native'])} | {ms(t['torch ops'])} | "
                         f"{(1 - t['native'] / t['torch ops']) * 100:.0f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="LeNet-5 only")
    p.add_argument("--ranks", default="2,4")
    p.add_argument("--results", default=str(ROOT / "bench/results"))
    p.add_argument("--runs-dir", default=str(ROOT / "bench/runs/step"))
    p.add_argument("--bare-reps", type=int, default=50)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.model, args.steps, Path(args.runs_dir), Path(args.json), args.bare_reps)
        return 0

    mpiexec = Path(sys.executable).parent / "mpiexec"
    models = ["lenet5"] if args.quick else list(MODELS)
    runs_dir = Path(args.runs_dir)
    rows, t0 = [], time.perf_counter()
    for model in models:
        for ranks in (int(x) for x in args.ranks.split(",")):
            out = runs_dir / f"{model}-np{ranks}"
            out.mkdir(parents=True, exist_ok=True)
            result = out / "result.json"
            cmd = [str(mpiexec), "-n", str(ranks), sys.executable, str(Path(__file__).resolve()), "--worker",
                   "--model", model, "--steps", str(MODELS[model]["steps"]), "--runs-dir", str(out),
                   "--json", str(result), "--bare-reps", str(args.bare_reps)]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                print(f"step: {model} np={ranks} failed (exit {proc.returncode})", file=sys.stderr)
                return 1
            rows.append(analyse(json.loads(result.read_text())))
            print(f"step: {model} np={ranks} done in {time.perf_counter() - t:.0f} s", flush=True)
    epilogues = {}
    for r in rows:
        if r["model"] not in epilogues:
            epilogues[r["model"]] = (r["d"], epilogue_timings(r["d"]))
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    command = ".venv/bin/python bench/step.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    md = markdown(rows, epilogues, command, time.perf_counter() - t0)
    (results / "step.md").write_text(md)
    (results / "step.json").write_text(json.dumps({"rows": rows, "epilogue_ms": epilogues}, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
