"""`fda preflight`: check, before a job spends its allocation, everything a run needs.

Run it exactly like the job (`mpiexec -n K fda preflight [--config F] [--out DIR] KEY=VALUE...`,
or `srun fda preflight ...`). Every rank runs every check; rank 0 prints ONE table:

  mpi        an Allreduce round trip over all ranks (result and mean latency), a 4 MiB
             Allreduce (bandwidth), the library and its thread level (the failure watcher
             needs MPI_THREAD_MULTIPLE)
  rank       per rank: host, node-local rank, device, torch threads, CPU cores it may use
  binding    ranks sharing a GPU while others sit idle, or more threads than cores on a node
  kernel     the native drift-state op on the CPU (checked against the reference) and on CUDA
  gpu-mpi    gpu_aware_mpi against what the MPI library reports (and a CUDA Allreduce)
  dataset    the dataset's files on every rank, and the partition into K workers
  output     the output directory: writable by every rank and the same directory for all
             (checkpoints need a shared filesystem), free space, whether it holds a run

Exit status, the same on every rank: 0 all passed (warnings allowed), 1 a check failed,
2 bad settings.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from fda.comm import (Comm, cpu_threads_for_rank, library_version, mpi_cuda_support, same_error_everywhere,
                      thread_level, threads_may_call_mpi, world_rank, world_size)
from fda.config import ConfigError, make_config
from fda.launch import launch_problem, summation_order

OK, WARN, FAIL = "ok", "WARN", "FAIL"


def _guard(fn, *a):
    """Run a local check; an exception becomes a FAIL row instead of a dead rank."""
    try:
        return fn(*a)
    except Exception as e:  # noqa: BLE001 - any failure is a result here
        return FAIL, f"{type(e).__name__}: {e}"


# ----------------------------------------------------------------------------- checks
def _check_mpi(world: Comm) -> tuple[str, str]:
    """Collective: Allreduce results, latency and bandwidth; the library and its thread level."""
    size, rank = world.size, world.rank
    for _ in range(10):  # warm-up: connections are set up lazily
        world.allreduce_values([rank + 1.0], "sum", kind="preflight")
    n = 200
    world.barrier()
    t = time.perf_counter()
    for _ in range(n):
        out = world.allreduce_values([rank + 1.0], "sum", kind="preflight")
    latency = (time.perf_counter() - t) / n
    big = torch.full((1 << 20,), 1.0, dtype=torch.float32)  # 4 MiB
    world.barrier()
    t = time.perf_counter()
    world.allreduce_(big, "sum", kind="preflight")
    big_s = time.perf_counter() - t
    latency, big_s = world.allreduce_values([latency, big_s], "max", kind="preflight")
    expected = size * (size + 1) / 2
    if out[0] != expected or not bool(torch.all(big == size)):
        return FAIL, f"Allreduce gave {out[0]} (expected {expected}): the MPI library is broken"
    detail = (f"{size} ranks; Allreduce round trip {latency * 1e6:.1f} us (mean of {n}, slowest rank); "
              f"4 MiB Allreduce {big_s * 1e3:.1f} ms; {library_version()}; thread level {thread_level()}")
    if size > 1 and not threads_may_call_mpi():
        return FAIL, detail + ": fda's failure watcher needs MPI_THREAD_MULTIPLE (set MPI4PY_RC_THREAD_LEVEL " \
                              "or use an MPI built with thread support)"
    return OK, detail


def _rank_info(world, cfg) -> dict:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    info = {"host": world.host, "local_rank": world.local_rank, "local_size": world.local_size,
            "threads": cfg.threads or cpu_threads_for_rank(world.local_size), "cores": cores,
            "node_cores": os.cpu_count() or cores, "device": None, "gpus": 0, "error": None}
    try:
        dev = world.device_for_rank(cfg.device)
        info["device"] = str(dev)
        if dev.type == "cuda":
            info["gpus"] = torch.cuda.device_count()
            info["device"] += f" ({torch.cuda.get_device_name(dev)})"
            info["gpu_uuid"] = str(getattr(torch.cuda.get_device_properties(dev), "uuid", ""))
    except ValueError as e:
        info["error"] = str(e)
    return info


def _binding_rows(infos: list[dict]) -> list[tuple]:
    rows = []
    for i, info in enumerate(infos):
        status = FAIL if info["error"] else OK
        detail = (f"host {info['host']}, local rank {info['local_rank']}/{info['local_size']}, "
                  f"device {info['device'] or '-'}, {info['threads']} torch threads, {info['cores']} cores allowed")
        if info["error"]:
            detail += f": {info['error']}"
        rows.append(("rank", str(i), status, detail))
    problems = []
    for host in sorted({i["host"] for i in infos}):
        mine = [i for i in infos if i["host"] == host]
        problems += _shared_gpu_problems(host, mine)
        threads = sum(i["threads"] for i in mine)
        if threads > mine[0]["node_cores"]:
            problems.append(f"{host}: {threads} torch threads over {len(mine)} ranks but {mine[0]['node_cores']} "
                            "cores (oversubscribed: set threads= or --cpus-per-task)")
    rows.append(("binding", "all", WARN if problems else OK,
                 "; ".join(problems) or "one device per rank, threads within each node's cores"))
    return rows


def _shared_gpu_problems(host: str, infos: list[dict]) -> list[str]:
    """Ranks of one host that drive the same physical GPU, told apart by device UUID (with one GPU
    visible per task every rank says cuda:0, so the index alone cannot tell)."""
    on_gpu = [i for i in infos if i["device"] and i["device"].startswith("cuda")]
    if not on_gpu:
        return []
    ids = [i.get("gpu_uuid") or i["device"].split()[0] for i in on_gpu]
    distinct = len(set(ids))
    if distinct < len(on_gpu):
        return [f"{host}: {len(on_gpu)} ranks share {distinct} GPU(s) (by device UUID): each rank should "
                "have its own GPU (fine for tests, slow for training)"]
    return []


def _kernel_matches(got, ref, rtol: float) -> bool:
    """Squared norm, dot and sketch of the op against the float64 reference."""
    sq, dot, sketch = got
    ref_sq, ref_dot, ref_sketch = ref
    return bool(np.isclose(sq, ref_sq, rtol=rtol) and np.isclose(dot, ref_dot, rtol=rtol, atol=1e-3)
                and torch.allclose(sketch.float().cpu(), ref_sketch, rtol=rtol, atol=1e-4))


def _check_kernel(device: torch.device) -> tuple[str, str]:
    from fda import kernels
    from fda.kernels import reference
    backend = kernels.backend()
    g = torch.Generator().manual_seed(1)
    w, w0, xi = (torch.randn(10_000, generator=g) for _ in range(3))
    got = kernels.drift_state(w, w0, xi=xi, sketch_depth=5, sketch_width=64, seed=7)
    ref = reference.drift_state(w, w0, xi, 5, 64, 7)
    if not _kernel_matches(got, ref, rtol=1e-5):
        return FAIL, f"the {backend} drift_state op disagrees with the reference on the CPU"
    if device.type == "cuda" and not kernels.cuda_kernel_available():
        return FAIL, ("the tensors will be on CUDA but libfda_kernels has no CUDA kernel (built without nvcc "
                      "or against a CPU-only torch): rebuild on the GPU node, see docs/cluster.md, section GPU nodes")
    if backend != "native":
        return WARN, ("native op not loaded, using the pure-torch reference (slower): "
                      f"{kernels._native_state['error']}; run `make native`")
    detail = "native op loaded, CPU result matches the reference"
    if device.type == "cuda":
        got = kernels.drift_state(w.to(device), w0.to(device), xi=xi.to(device), sketch_depth=5,
                                  sketch_width=64, seed=7)
        if not _kernel_matches(got, ref, rtol=1e-4):
            return FAIL, "the CUDA drift_state op disagrees with the reference (sqnorm, dot or sketch)"
        detail += "; CUDA kernel: sqnorm, dot and sketch match"
    return OK, detail


def _check_gpu_mpi(world, cfg, device: torch.device) -> tuple[str, str]:
    supported = mpi_cuda_support()
    if cfg.gpu_aware_mpi == "true" and not supported:
        return FAIL, ("gpu_aware_mpi=true, but the MPI library does not report CUDA support "
                      "(MPIX_Query_cuda_support); use gpu_aware_mpi=auto or false")
    said = "reports CUDA support" if supported else "does not report CUDA support"
    if device.type != "cuda":
        return OK, f"MPI {said}; CPU tensors, nothing to stage"
    use = supported if cfg.gpu_aware_mpi == "auto" else cfg.gpu_aware_mpi == "true"
    world.cuda_aware = use
    return OK, f"MPI {said}; " + ("CUDA buffers go straight to MPI" if use else "staged through pinned host buffers")


def _gpu_allreduce(world, device: torch.device) -> tuple[str, str] | None:
    """Collective: every rank calls it (device types agree when the rank check passed)."""
    if device.type != "cuda":
        return None
    t = torch.full((1 << 18,), float(world.rank + 1), device=device)
    world.allreduce_(t, "sum", kind="preflight")
    expected = world.size * (world.size + 1) / 2
    ok = bool(torch.all(t == expected))
    return (OK, "a CUDA-tensor Allreduce is correct") if ok else (FAIL, "a CUDA-tensor Allreduce gave wrong values")


def _check_dataset(cfg, workers: int) -> tuple[str, str]:
    from fda.context import steps_per_epoch
    from fda.data import DatasetError, load_dataset, partition
    try:
        data = load_dataset(cfg.dataset, cfg.data_dir, seed=cfg.seed)
        parts = partition(data.labels, workers, cfg.partition, seed=cfg.seed, noniid_fraction=cfg.noniid_fraction,
                          label_value=cfg.label_value, dirichlet_alpha=cfg.dirichlet_alpha,
                          groups=data.train_groups)
    except DatasetError as e:
        return FAIL, " ".join(str(e).split())
    smallest = min(len(p) for p in parts)
    detail = (f"{data.name}: {data.num_train} train / {data.num_test} test from {data.source or 'generated'}; "
              f"{cfg.partition} over K={workers} workers (smallest shard {smallest}), "
              f"{steps_per_epoch(data.num_train, workers, cfg.batch_size)} steps/epoch")
    if smallest < cfg.batch_size:
        return WARN, detail + f"; shards smaller than batch_size={cfg.batch_size} train on the whole shard"
    return OK, detail


def _check_output(world, out: Path) -> tuple[str, str]:
    """Collective: rank 0 writes a token; every rank must see it (one shared directory) and write too."""
    from fda.checkpoint import holds_run
    problem, token = None, None
    if world.rank == 0:
        try:
            out.mkdir(parents=True, exist_ok=True)
            token = f".fda-preflight-{uuid.uuid4().hex}"
            (out / token).write_text("0")
        except OSError as e:
            problem = f"rank 0 cannot write to {out}: {e}"
    token, problem = world.bcast_object((token, problem))
    mine = None
    if problem is None:
        try:
            if not (out / token).is_file():
                mine = (f"rank {world.rank} on {world.host} does not see the files rank 0 writes in {out}: "
                        "checkpoints need a directory shared by all nodes")
            else:
                (out / f"{token}-rank{world.rank}").write_text(str(world.rank))
        except OSError as e:
            mine = f"rank {world.rank} on {world.host} cannot write to {out}: {e}"
    problems = [p for p in world.allgather_object(mine) if p]
    if world.rank == 0 and token is not None:
        for p in out.glob(f"{token}*"):
            p.unlink(missing_ok=True)
    if problem or problems:
        return FAIL, problem or "; ".join(problems)
    free = shutil.disk_usage(out).free / 1e9
    detail = f"{out.resolve()}: writable by every rank, one shared directory, {free:.1f} GB free"
    if holds_run(out):
        detail += "; holds a run already (fda train needs --resume or --overwrite)"
    return OK, detail


# ------------------------------------------------------------------------------ table
def _merge(check: str, per_rank: list[tuple[str, str]]) -> list[tuple]:
    """One row when every rank agrees, else one row per distinct result (with its ranks)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for r, res in enumerate(per_rank):
        groups.setdefault(res, []).append(r)
    if len(groups) == 1:
        (status, detail), = groups
        return [(check, "all", status, detail)]
    return [(check, _ranks(rs), status, detail) for (status, detail), rs in groups.items()]


def _ranks(rs: list[int]) -> str:
    return ",".join(map(str, rs)) if len(rs) <= 6 else f"{rs[0]}..{rs[-1]} ({len(rs)})"


def format_table(rows: list[tuple]) -> str:
    header = ("CHECK", "RANKS", "STATUS", "DETAIL")
    w = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    line = lambda r: f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}"  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * x for x in w) + "  " + "-" * 6, *map(line, rows)])


def _settings(args):
    """The run's settings, or the same ConfigError on every rank (collective). A launch mistake
    (e.g. srun without --mpi) is reported first: the same on every rank of a world."""
    with same_error_everywhere(ConfigError):
        if problem := launch_problem(world_size()):
            raise ConfigError(problem)
        return make_config(file=args.config, overrides=args.settings)


def main(args) -> int:
    try:
        cfg = _settings(args)
    except ConfigError as e:
        if world_rank() == 0:
            print(f"fda: error: {e}", file=sys.stderr, flush=True)
        return 2
    out = Path(args.out or f"runs/{cfg.strategy}-{cfg.dataset}-seed{cfg.seed}")

    world = Comm(gpu_aware="false")  # the gpu-mpi check judges cfg.gpu_aware_mpi itself
    world.set_stall_timeout(cfg.stall_timeout)  # a rank stuck in a check is named, as in fda train
    if threads_may_call_mpi():  # else the mpi check fails, saying so
        world.watch_failures()
    try:
        return _run_checks(world, cfg, out)
    finally:
        world.stop_watching()


def _run_checks(world: Comm, cfg, out: Path) -> int:
    workers = world.size * cfg.workers_per_rank
    mpi_result = _check_mpi(world)
    info = _rank_info(world, cfg)
    device = torch.device(info["device"].split()[0]) if info["device"] else torch.device("cpu")
    local = {
        "kernel": _guard(_check_kernel, device),
        "gpu-mpi": _guard(_check_gpu_mpi, world, cfg, device),
        "dataset": _guard(_check_dataset, cfg, workers),
    }
    # collective checks: a CUDA Allreduce only when every rank has a CUDA device
    all_cuda = world.allreduce_values([float(device.type == "cuda")], "min", kind="preflight")[0] == 1.0
    gpu_reduce = _gpu_allreduce(world, device) if all_cuda else None
    if gpu_reduce is not None and local["gpu-mpi"][0] == OK and gpu_reduce[0] != OK:
        local["gpu-mpi"] = gpu_reduce
    output = _check_output(world, out)
    sum_order = summation_order(world)  # what bit-identical resume on another layout relies on

    gathered = world.gather_object({"info": info, **local}, root=0)
    failed = False
    if world.rank == 0:
        failed = _print_report(world, cfg, out, workers, mpi_result, gathered, output, sum_order)
    failed = world.bcast_object(failed, root=0)
    return 1 if failed else 0


def _print_report(world: Comm, cfg, out: Path, workers: int, mpi_result, gathered: list[dict], output,
                  sum_order: tuple[bool, str]) -> bool:
    """Rank 0: the table; returns whether a check failed."""
    rows = [("mpi", "all", *mpi_result)]
    rows += _binding_rows([g["info"] for g in gathered])
    for check in ("kernel", "gpu-mpi", "dataset"):
        rows += _merge(check, [g[check] for g in gathered])
    rows.append(("output", "all", *output))
    rows.append(("sum-order", "all", OK if sum_order[0] else WARN, sum_order[1]))
    failed = any(r[2] == FAIL for r in rows)
    hosts = len({g["info"]["host"] for g in gathered})
    print(f"fda preflight: {world.size} ranks on {hosts} host(s), K={workers} workers, "
          f"dataset={cfg.dataset}, device={cfg.device}, out={out}")
    print(format_table(rows))
    n_fail = sum(r[2] == FAIL for r in rows)
    print(f"fda preflight: {n_fail} check(s) FAILED" if failed else "fda preflight: all checks passed",
          flush=True)
    return failed
