"""Atomic, consistent checkpoints of a whole run, for resuming after a crash or a requeue.

Layout:  DIR/checkpoints/step_<N>/rank_<r>.pt   (each rank: its workers' models,
optimizers, data positions, RNG states, and the synchronizer's state)
         DIR/checkpoints/LATEST                 (the step of the newest complete set)

Every file is written to a temporary name and renamed; LATEST is rewritten by rank 0
only after a barrier, so it never points at a partial set. The two newest sets are kept.
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


@dataclass
class Checkpoint:
    step: int
    state: dict


def _dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def _atomic_write(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(out: Path, ctx, sync, models, optimizers, loaders) -> None:
    step = sync.step_count
    where = _dir(out) / f"step_{step}"
    if ctx.is_root:
        where.mkdir(parents=True, exist_ok=True)
    ctx.world.barrier()
    state = {
        "step": step, "rank": ctx.rank, "world_size": ctx.world_size,
        "workers_per_rank": ctx.workers_per_rank,
        "sync": sync.state_dict(),
        "models": [m.state_dict() for m in models],
        "optimizers": [o.state_dict() for o in optimizers],
        "loaders": [ld.state_dict() for ld in loaders],
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }
    _atomic_write(state, where / f"rank_{ctx.rank}.pt")
    if sync.log is not None:
        sync.log.flush(durable=True)
    ctx.world.barrier()
    if ctx.is_root:
        latest = _dir(out) / "LATEST"
        tmp = latest.with_name("LATEST.tmp")
        tmp.write_text(str(step))
        os.replace(tmp, latest)
        steps = sorted(int(p.name.split("_")[1]) for p in _dir(out).glob("step_*") if p.is_dir())
        for old in steps[:-KEEP]:
            shutil.rmtree(_dir(out) / f"step_{old}", ignore_errors=True)


def find_latest(out: Path, ctx) -> Checkpoint | None:
    """This rank's part of the newest complete checkpoint set, or None."""
    problem, step = None, None
    if ctx.is_root:
        latest = _dir(out) / "LATEST"
        try:
            if latest.is_file():
                step = int(latest.read_text().strip())
        except (OSError, ValueError) as e:
            problem = f"cannot read {latest}: {e}"
    step, problem = ctx.world.bcast_object((step, problem))
    if problem:
        raise ConfigError(problem)
    if step is None:
        return None
    path = _dir(out) / f"step_{step}" / f"rank_{ctx.rank}.pt"
    state = None
    try:
        state = torch.load(path, map_location=ctx.device, weights_only=False)
        if state["world_size"] != ctx.world_size or state["workers_per_rank"] != ctx.workers_per_rank:
            problem = (f"the checkpoint was written by {state['world_size']} ranks x "
                       f"{state['workers_per_rank']} workers; resume with the same layout")
    except (OSError, RuntimeError, EOFError, KeyError) as e:
        problem = f"cannot read checkpoint {path}: {e}"
    problems = [p for p in ctx.world.allgather_object(problem) if p]
    if problems:
        raise ConfigError(problems[0])
    return Checkpoint(step=step, state=state)


def restore(ckpt: Checkpoint, sync, models, optimizers, loaders) -> None:
    s = ckpt.state
    sync.load_state_dict(s["sync"])
    for m, st in zip(models, s["models"]):
        m.load_state_dict(st)
    for o, st in zip(optimizers, s["optimizers"]):
        o.load_state_dict(st)
    for ld, st in zip(loaders, s["loaders"]):
        ld.load_state_dict(st)
    rng = s["rng"]
    # the file was loaded with map_location=device; RNG states must be CPU byte tensors
    torch.set_rng_state(rng["torch"].cpu())
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in rng["cuda"]])


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
    problem = ctx.world.bcast_object(problem)
    if problem:
        raise ConfigError(problem)


def clear(out: Path) -> None:
    shutil.rmtree(_dir(out), ignore_errors=True)
    for name in ("metrics.h5", "config.json"):
        (Path(out) / name).unlink(missing_ok=True)
