"""`fda train`: the training loop, built on the public API (fda.init, fda.Synchronizer).

    w0 <- rank 0's initial model, broadcast;  w_k <- w0
    for each step:
        every hosted worker k: one optimizer step on its own mini-batch (lr: lr_schedule)
        sync.step(losses): at a check, the state from the drift (native kernel), ONE small
                           Allreduce (kamp: and a MAX of the state),
                           H(mean state) > theta  ->  ONE Allreduce of the flat models
        every eval_every steps: test accuracy of the averaged model (>= target_acc: stop)
        every checkpoint_every steps: an atomic checkpoint
        a rank got SIGTERM/SIGUSR1 (every rank agrees on the step): checkpoint, stop
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import fda
import fda.kernels
from fda import checkpoint, preemption
from fda.collectives import check_compression
from fda.comm import same_error_everywhere
from fda.config import Config, ConfigError
from fda.context import Context, steps_per_epoch
from fda.data import DatasetError, ShardLoader, load_dataset, partition
from fda.h5log import open_log
from fda.models import ModelError, build_model
from fda.monitor import bound_audit
from fda.synchronizer import CollectiveError, Synchronizer


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The local (inner) optimizer: `optimizer` (adam; adamw for strategy=diloco) and its settings."""
    params = [p for p in model.parameters() if p.requires_grad]
    kind, weight_decay = cfg.resolved("optimizer"), cfg.resolved("weight_decay")
    if kind == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=weight_decay)


def local_lr(cfg: Config, step: int, total_steps: int) -> float:
    """The local optimizers' learning rate at `step` (1-based): `lr`, or with lr_schedule=cosine
    lr/2 (1 + cos(pi (step-1) / total_steps)), from lr down towards 0 at the budget's end. A
    function of the step alone, so a resumed run continues the same schedule."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * (step - 1) / total_steps))


def set_lr(optimizers: list[torch.optim.Optimizer], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr


def deterministic_cuda() -> None:
    """Same config, same K -> same metrics on a GPU too: cuDNN and cuBLAS in their deterministic modes
    (an op with no deterministic CUDA version raises rather than silently varying)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True)


def local_step(model: torch.nn.Module, opt: torch.optim.Optimizer, loader: ShardLoader) -> torch.Tensor:
    """One optimizer step of one worker on its next mini-batch; returns the loss as a detached
    tensor (not read on the host: on a GPU the step's only device->host copy is the Synchronizer's)."""
    xb, yb = loader.next_batch()
    loss = F.cross_entropy(model(xb), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


STALL_SLEEP_S = 3600.0  # fail_mode=stall: how long the data loader "hangs"
EVAL_CHUNK = 250  # test samples per forward pass; fixed, so the result does not depend on the ranks


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: Context,
             chunk: int = EVAL_CHUNK) -> tuple[float, float]:
    """Test accuracy and loss per prediction (per sample, or per position for text targets), the
    same bits on every rank and for any number of ranks.

    The test set is cut into fixed chunks; rank r scores chunks r, r+P, ...; each chunk's counts
    go to its own slots of ONE Allreduce (the other ranks add zeros: exact), then the slots are
    added in chunk order."""
    was_training = model.training
    model.eval()
    n = x.shape[0]
    starts = range(0, n, chunk)
    per_chunk = np.zeros((2, len(starts)))
    for c in range(ctx.rank, len(starts), ctx.world_size):
        xb, yb = x[starts[c]:starts[c] + chunk].to(ctx.device), y[starts[c]:starts[c] + chunk].to(ctx.device)
        out = model(xb)
        per_chunk[0, c] = float((out.argmax(1) == yb).sum())
        per_chunk[1, c] = float(F.cross_entropy(out, yb, reduction="sum"))
    model.train(was_training)
    totals = ctx.fda_comm.allreduce_values(per_chunk.ravel(), "sum", kind="eval").reshape(2, -1)
    return float(totals[0].sum()) / y.numel(), float(totals[1].sum()) / y.numel()


def run(cfg: Config, out: str | Path, *, resume: bool = False, overwrite: bool = False,
        ctx: Context | None = None, progress: bool = True) -> dict:
    """Train (or continue, resume=True) the run in `out`; returns its summary, with "interrupted"
    when a signal stopped it (then its last step is checkpointed: resume it)."""
    ctx = ctx or fda.init(seed=cfg.seed, device=cfg.device, threads=cfg.threads,
                          workers_per_rank=cfg.workers_per_rank, gpu_aware_mpi=cfg.gpu_aware_mpi)
    preemption.install(f"rank {ctx.rank}")
    if ctx.device.type == "cuda":
        deterministic_cuda()
    ctx.fda_comm.set_stall_timeout(cfg.stall_timeout)  # also for the set-up's collectives
    try:
        return _run(cfg, Path(out), ctx, resume=resume, overwrite=overwrite, progress=progress)
    finally:
        preemption.uninstall()


def _run(cfg: Config, out: Path, ctx: Context, *, resume: bool, overwrite: bool, progress: bool) -> dict:
    checkpoint.prepare_out_dir(out, ctx, resume=resume, overwrite=overwrite)
    ckpt = checkpoint.find_latest(out, ctx) if resume else None
    if resume and ckpt is None:
        raise ConfigError(f"--resume: no checkpoint in {out}/checkpoints (set checkpoint_every)")

    with same_error_everywhere((ConfigError, DatasetError, ModelError), ConfigError, ctx.fda_comm):
        data = load_dataset(cfg.dataset, cfg.data_dir, seed=cfg.seed)
        parts = partition(data.labels, ctx.workers, cfg.partition, seed=cfg.seed,
                          noniid_fraction=cfg.noniid_fraction, label_value=cfg.label_value,
                          dirichlet_alpha=cfg.dirichlet_alpha, groups=data.train_groups)
        models = []
        for _ in ctx.worker_ids():
            torch.manual_seed(cfg.seed)
            models.append(build_model(cfg.model, data.input_shape, data.num_classes).to(ctx.device))
    spe = steps_per_epoch(data.num_train, ctx.workers, cfg.batch_size)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * spe))
    # e.g. a requeued job that had finished (its budget, or at target_acc)
    if ckpt is not None and (ckpt.step >= total_steps or ckpt.meta.get("finished")):
        return {"already_complete": True, "steps": ckpt.step, "out": str(out)}
    x_train, y_train = data.x_train.to(ctx.device), data.y_train.to(ctx.device)
    loaders = [ShardLoader(x_train, y_train, parts[k], cfg.batch_size, seed=cfg.seed, worker=k)
               for k in ctx.worker_ids()]
    optimizers = [make_optimizer(cfg, m) for m in models]

    sync = Synchronizer(models, ctx, config=cfg, optimizer=optimizers, log=out, steps_per_epoch=spe,
                        resume_step=ckpt.step if ckpt else None, overwrite=overwrite)
    if ckpt is not None:
        checkpoint.restore(ckpt, sync, models, optimizers, loaders)
    if ctx.is_root:  # on a resume: its layout (workers_per_rank, ...) may be new
        checkpoint.write_config(out, cfg)

    if ctx.is_root and progress:
        print(f"fda: K={ctx.workers} workers ({ctx.world_size} ranks x {ctx.workers_per_rank}), "
              f"{cfg.model} d={sync.d:,}, {cfg.dataset} {cfg.partition}, {total_steps} steps "
              f"({spe}/epoch), {sync.describe()}, theta {sync.theta_rule()}, "
              f"state kernel {fda.kernels.backend()}, device {ctx.device}", file=sys.stderr, flush=True)
    bar = tqdm(total=total_steps, initial=sync.step_count, disable=not (progress and ctx.is_root),
               unit="step", dynamic_ncols=True, file=sys.stderr, mininterval=1.0)
    reached_target = False
    try:
        for step in range(sync.step_count + 1, total_steps + 1):
            if cfg.fail_mode == "stall" and cfg.fail_at_step == step and cfg.fail_rank == ctx.rank:
                time.sleep(STALL_SLEEP_S)  # testing aid: a data loader that hangs (see stall_timeout)
            if cfg.lr_schedule != "constant":
                set_lr(optimizers, local_lr(cfg, step, total_steps))
            losses = [local_step(m, o, ld) for m, o, ld in zip(models, optimizers, loaders)]
            if cfg.fail_mode == "nan" and cfg.fail_at_step == step and cfg.fail_rank == ctx.rank:
                losses = [math.nan] * len(losses)  # testing aid: this rank diverges
            if cfg.step_jitter_ms:
                time.sleep(step_jitter_s(cfg.seed, ctx.rank, step, cfg.step_jitter_ms))
            sync.step(losses)

            if sync.should_evaluate() or step == total_steps:
                acc, test_loss = evaluate(sync.averaged_model(), data.x_test, data.y_test, ctx)
                sync.log_eval(acc, test_loss)
                # acc is an Allreduced value: every rank takes the same decision
                reached_target = cfg.target_acc is not None and acc >= cfg.target_acc
                if not bar.disable:
                    bar.write(f"step {step:6d}  epoch {sync.epoch:5.2f}  test_acc {acc:.4f}  "
                              f"syncs {sync.syncs}  {sync.comm_bytes / 1e9:.4f} GB")
            saved = bool(cfg.checkpoint_every) and (step % cfg.checkpoint_every == 0 or step == total_steps
                                                    or reached_target)
            if saved:
                checkpoint.save(out, ctx, sync, models, optimizers, loaders, finished=reached_target)
            if reached_target:
                break
            bar.set_postfix(loss=f"{sync.mean_loss:.3f}", syncs=sync.syncs,
                            GB=f"{sync.comm_bytes / 1e9:.3f}", refresh=False)
            bar.update(1)
            if sync.stop_requested and step < total_steps:
                if not saved:
                    checkpoint.save(out, ctx, sync, models, optimizers, loaders)
                bar.close()
                summary = sync.close("interrupted", f"a rank got SIGTERM or SIGUSR1; stopped after step {step} "
                                                    "with a checkpoint: continue with fda train --resume DIR")
                # no rank exits before rank 0 has closed the log: a launcher may kill the others
                # at the first non-zero exit (srun --kill-on-bad-exit)
                ctx.fda_comm.barrier()
                return {**summary, "interrupted": True, "out": str(out)}
    except CollectiveError as e:
        bar.close()
        sync.close("failed", str(e))
        raise
    bar.close()
    summary = sync.close(extra={"reached_target_step": sync.step_count} if reached_target else None)
    summary["final_test_acc"], summary["final_test_loss"] = sync.last_eval
    summary["out"] = str(out)
    if cfg.audit and ctx.is_root:  # from the log: it holds every step, also those before a resume
        with open_log(out) as f:
            summary.update(bound_audit(f["steps"]["var_bound"][()], f["steps"]["var_exact"][()]))
    return summary


def step_jitter_s(seed: int, rank: int, step: int, max_ms: float) -> float:
    """The step_jitter_ms testing aid's delay: uniform in [0, max_ms] ms, a function of (seed, rank, step)."""
    return float(np.random.default_rng([seed, rank, step]).uniform(0.0, max_ms)) / 1e3


def format_summary(s: dict) -> str:
    ratio = s["synchronous_gb"] / s["comm_gb"] if s["comm_gb"] > 0 else math.inf
    wall = s["wall_s"]
    as_float32 = f" ({s['comm_gb_float32']:.4f} GB as float32)" if s["comm_gb_float32"] != s["comm_gb"] else ""
    return (f"fda: {s['strategy']} | K={s['workers']} | final test_acc {s['final_test_acc']:.4f} | "
            f"steps {s['steps']} | syncs {s['syncs']} | {s['comm_gb']:.4f} GB communicated{as_float32} "
            f"(Synchronous would send {s['synchronous_gb']:.3f} GB, {ratio:.1f}x more) | "
            f"wall {wall:.1f} s: compute {s['time_compute_s']:.1f} / monitor {s['time_monitor_s']:.1f} / "
            f"comm {s['time_comm_s']:.1f} | kernel {s['state_kernel']} | log {s['out']}/metrics.h5"
            + (f" | audit: H >= Var at {100 * s['bound_holds']:.1f}% of {s['audited_checks']} checks, "
               f"median H/Var {s['median_bound_over_var']:.3f}" if "bound_holds" in s else ""))


__all__ = ["run", "local_step", "local_lr", "evaluate", "make_optimizer", "format_summary", "DatasetError"]
