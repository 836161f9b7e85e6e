"""Atomic, consistent checkpoints of a whole run, for resuming after a crash, a requeue or a
preemption, also on another layout (ranks x workers_per_rank) with the same K.

Layout:  DIR/checkpoints/step_<N>/worker_<k>.pt    (worker k's model, optimizer, data position
                                                    and compression residual; written by the
                                                    rank hosting it)
         DIR/checkpoints/step_<N>/sync.pt          (the synchronizer's state: the same on every
                                                    rank; written by rank 0)
         DIR/checkpoints/step_<N>/rng_rank_<r>.pt  (rank r's RNG states)
         DIR/checkpoints/step_<N>/meta.json        (step, K, the layout that wrote it)
         DIR/checkpoints/LATEST                    (the step of the newest complete set)

Stored per worker, not per rank, so the K workers can continue on any ranks x workers_per_rank
= K (8x1 -> 4x2 -> 2x4); the RNG states are per rank and are restored only on the same layout
(they matter for dropout-like layers; the data order is per worker and always restored).
Every file is written to a temporary name and renamed; LATEST is rewritten by rank 0
only after a barrier, so it never points at a partial set. The two newest sets are kept.
Files are loaded to the CPU (map_location="cpu") and their tensors copied to the device by
the modules' and optimizers' load_state_dict: so Adam's `step` counters stay on the CPU as
torch keeps them (on the GPU they would cost a device sync per parameter per step).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fda.config import Config, ConfigError, config_from_json

KEEP = 2
FORMAT = 2  # 1: one file per rank (before resumes on another layout)


@dataclass
class Checkpoint:
    """This rank's part of a checkpoint: its hosted workers' states, the synchronizer's, and its
    RNG states when the layout is the one that wrote them (else None)."""
    step: int
    meta: dict
    workers: list[dict]
    sync: dict
    rng: dict | None


def _dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def _atomic_write(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        if isinstance(obj, (bytes, str)):
            f.write(obj.encode() if isinstance(obj, str) else obj)
        else:
            torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _layout(ctx) -> str:
    return f"{ctx.world_size} ranks x {ctx.workers_per_rank} per rank"


def save(out: Path, ctx, sync, models, optimizers, loaders, *, finished: bool = False) -> None:
    """Write every worker's and rank's part of step `sync.step_count`, then LATEST (collective).
    finished: the run ended here before its budget (it reached target_acc); a resume has nothing to do."""
    step = sync.step_count
    where = _dir(out) / f"step_{step}"
    if ctx.is_root:
        where.mkdir(parents=True, exist_ok=True)
    ctx.world.barrier()
    for j, (k, model, opt, loader) in enumerate(zip(ctx.worker_ids(), models, optimizers, loaders)):
        _atomic_write({"worker": k, "model": model.state_dict(), "optimizer": opt.state_dict(),
                       "loader": loader.state_dict(), "sync": sync.worker_state_dict(j)}, where / f"worker_{k}.pt")
    _atomic_write({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                   "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                  where / f"rng_rank_{ctx.rank}.pt")
    if ctx.is_root:
        _atomic_write(sync.state_dict(), where / "sync.pt")
        _atomic_write(json.dumps({"format": FORMAT, "step": step, "workers": ctx.workers,
                                  "world_size": ctx.world_size, "workers_per_rank": ctx.workers_per_rank,
                                  "finished": finished}),
                      where / "meta.json")
    sync.flush_log(durable=True)
    ctx.world.barrier()
    if ctx.is_root:
        latest = _dir(out) / "LATEST"
        tmp = latest.with_name("LATEST.tmp")
        tmp.write_text(str(step))
        os.replace(tmp, latest)
        steps = sorted(int(p.name.split("_")[1]) for p in _dir(out).glob("step_*") if p.is_dir())
        for old in steps[:-KEEP]:
            shutil.rmtree(_dir(out) / f"step_{old}", ignore_errors=True)


def saved_layout(out: Path) -> dict | None:
    """The newest complete checkpoint's meta.json (step, workers = K, world_size, workers_per_rank),
    or None when there is none. Raises ConfigError for an unreadable one. Any process can call it."""
    latest = _dir(out) / "LATEST"
    if not latest.is_file():
        return None
    try:
        step = int(latest.read_text().strip())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {latest}: {e}") from None
    meta_path = _dir(out) / f"step_{step}" / "meta.json"
    if not meta_path.is_file():
        if (_dir(out) / f"step_{step}" / "rank_0.pt").is_file():
            raise ConfigError(f"the checkpoint in {meta_path.parent} is in the per-rank format of an older fda; "
                              "resume it with that version")
        raise ConfigError(f"the checkpoint of step {step} is incomplete (no {meta_path})")
    try:
        return json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {meta_path}: {e}") from None


def find_latest(out: Path, ctx) -> Checkpoint | None:
    """This rank's part of the newest complete checkpoint set, or None (collective). The set must
    hold K = ctx.workers workers; any layout of them will do."""
    meta, problem = None, None
    if ctx.is_root:
        try:
            meta = saved_layout(out)
        except ConfigError as e:
            problem = str(e)
    meta, problem = ctx.world.bcast_object((meta, problem))
    _raise_if(problem)
    if meta is None:
        return None
    if meta["workers"] != ctx.workers:
        raise ConfigError(
            f"the checkpoint of step {meta['step']} holds K={meta['workers']} workers ({meta['world_size']} ranks x "
            f"{meta['workers_per_rank']} per rank), this job has K={ctx.workers} ({_layout(ctx)}): resume with "
            f"ranks x workers_per_rank = {meta['workers']}")
    where = _dir(out) / f"step_{meta['step']}"
    same_layout = meta["world_size"] == ctx.world_size
    ckpt = None
    try:
        load = lambda name: torch.load(where / name, map_location="cpu", weights_only=False)  # noqa: E731
        workers = [load(f"worker_{k}.pt") for k in ctx.worker_ids()]
        ckpt = Checkpoint(step=int(meta["step"]), meta=meta, workers=workers, sync=load("sync.pt"),
                          rng=load(f"rng_rank_{ctx.rank}.pt") if same_layout else None)
    except (OSError, RuntimeError, EOFError, KeyError, ValueError) as e:
        problem = f"cannot read the checkpoint in {where}: {e}"
    _raise_any_rank(ctx, problem)
    return ckpt


def restore(ckpt: Checkpoint, sync, models, optimizers, loaders) -> None:
    """Load a checkpoint into the run's objects; tensors move to their device here (see the module doc)."""
    sync.load_state_dict(ckpt.sync)
    for j, (model, opt, loader, state) in enumerate(zip(models, optimizers, loaders, ckpt.workers)):
        sync.load_worker_state_dict(j, state["sync"])
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
    if ckpt.rng is not None:
        torch.set_rng_state(ckpt.rng["torch"])
        np.random.set_state(ckpt.rng["numpy"])
        random.setstate(ckpt.rng["python"])
        if ckpt.rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt.rng["cuda"])


def write_config(out: Path, cfg: Config) -> None:
    tmp = Path(out) / "config.json.tmp"
    tmp.write_text(json.dumps(cfg.model_dump(), indent=2, sort_keys=True))
    os.replace(tmp, Path(out) / "config.json")


def read_config(out: Path) -> Config:
    path = Path(out) / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume: {out} holds no run (no config.json)")
    try:
        return config_from_json(path.read_text())
    except ConfigError as e:
        raise ConfigError(f"--resume: {path} is not a valid run configuration: {e}") from None
    except (OSError, ValueError) as e:  # unreadable or not JSON
        raise ConfigError(f"--resume: cannot read {path}: {e}") from None


def holds_run(out: Path) -> bool:
    out = Path(out)
    return any(p.exists() for p in (out / "metrics.h5", out / "config.json", _dir(out) / "LATEST"))


def prepare_out_dir(out: Path, ctx, *, resume: bool, overwrite: bool) -> None:
    """Before any data is loaded: refuse to mix two runs in one directory, clear it for --overwrite,
    and make sure rank 0 can write there. Raises the same ConfigError on every rank."""
    problem = None
    if ctx.is_root:
        out = Path(out)
        try:
            if not resume and holds_run(out):
                if not overwrite:
                    raise ConfigError(f"{out} already holds a run; pass --resume {out} to continue it "
                                      "or --overwrite to replace it")
                clear(out)  # stale checkpoints must never be resumed into the new run
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".fda-write-test-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except ConfigError as e:
            problem = str(e)
        except OSError as e:
            problem = f"cannot write to the output directory {out}: {e}"
    _raise_if(ctx.world.bcast_object(problem))


def _raise_if(problem: str | None) -> None:
    """A problem every rank holds (broadcast from rank 0) becomes the same ConfigError everywhere."""
    if problem:
        raise ConfigError(problem)


def _raise_any_rank(ctx, problem: str | None) -> None:
    """The first rank's problem (gathered from all) becomes the same ConfigError on every rank."""
    problems = [p for p in ctx.world.allgather_object(problem) if p]
    if problems:
        raise ConfigError(problems[0])


def clear(out: Path) -> None:
    shutil.rmtree(_dir(out), ignore_errors=True)
    for name in ("metrics.h5", "config.json"):
        (Path(out) / name).unlink(missing_ok=True)
