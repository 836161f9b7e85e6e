"""`fda.Synchronizer`: decides when the K workers average their models, and does it.

Call `step()` after every local optimizer step. Per step it computes this rank's drift
state with the native kernel, Allreduces it with the mean loss (ONE small Allreduce),
evaluates the strategy's rule on the reduced values (the same on every rank) and, when
it says so, averages the models with ONE Allreduce of a contiguous flat buffer (float32,
or quantized: fda.collectives) and applies the outer update (fda.outer) to the result.
"""
from __future__ import annotations

import copy
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from fda import kernels, preemption
from fda.collectives import CollectiveError, check_compression, make_averaging, mean_of_tensors_
from fda.config import Config, ConfigError, make_config, run_json
from fda.context import Context
from fda.flat import FlatModel, local_sum, pairwise_sum_
from fda.h5log import LOG_NAME, H5Log
from fda.outer import make_outer
from fda.strategies import make_strategy

FLOAT_BYTES = 4  # the paper's accounting counts float32 values
_HEAD = 4  # the per-step Allreduce starts with [loss sum, non-finite flag, worker count, stop flag]
DEFAULT_EVAL_EVERY = 100  # should_evaluate() when neither eval_every, steps_per_epoch nor fda.shard tells


class InjectedFailure(RuntimeError):
    """Raised by the fail_at_step / fail_rank testing aid."""


class Synchronizer:
    """Drop-in FDA (or a baseline) for an existing PyTorch training loop.

    model: a module, or a list of `ctx.workers_per_rank` modules (one per hosted worker).
    optimizer: the optimizer(s), needed only for sync_optimizer_state=reset|average.
    log: a run directory; rank 0 writes `metrics.h5` there (see fda.h5log). It must not hold a
        run already unless overwrite=True, or resume_step is given (then the log keeps its
        rows up to that step and continues; restore the rest with `load_state_dict`).
    steps_per_epoch: needed by fedopt / fda_opt and for the default eval_every.
    Every other keyword is a setting with the CLI's name and validation (fda.config.Config).
    """

    def __init__(self, model, ctx: Context, strategy: str | None = None, *, optimizer=None,
                 log: str | Path | None = None, steps_per_epoch: int | None = None,
                 config: Config | None = None, resume_step: int | None = None, overwrite: bool = False,
                 **settings):
        if config is None:
            config = make_config({**settings, **({"strategy": strategy} if strategy else {})})
        elif settings or strategy:
            config = make_config({**config.model_dump(), **settings, **({"strategy": strategy} if strategy else {})})
        self.cfg = cfg = config
        self.ctx = ctx
        self.world = ctx.world
        models = list(model) if isinstance(model, (list, tuple)) else [model]
        if len(models) != ctx.workers_per_rank:
            raise ValueError(f"got {len(models)} model(s) for workers_per_rank={ctx.workers_per_rank}")
        if cfg.workers_per_rank != ctx.workers_per_rank:
            raise ConfigError(f"workers_per_rank={cfg.workers_per_rank} in the settings but "
                              f"fda.init(workers_per_rank={ctx.workers_per_rank})")
        self.optimizers = (list(optimizer) if isinstance(optimizer, (list, tuple)) else
                           [optimizer] * (1 if optimizer is not None else 0))
        if cfg.sync_optimizer_state != "keep" and len(self.optimizers) != len(models):
            raise ValueError(f"sync_optimizer_state={cfg.sync_optimizer_state} needs the optimizer(s): "
                             "pass optimizer=... to Synchronizer")
        self.K = ctx.workers
        check_compression(cfg.sync_compression, self.K)
        self.workers = [FlatModel(m) for m in models]
        self.averaging = make_averaging(cfg.sync_compression, self.world, self.K, self.workers)
        for w in self.workers[1:]:
            if w.layout != self.workers[0].layout:
                raise ValueError("the models of one rank must have the same architecture")
        self._bytes_base = dict(self.world.bytes.by_kind)  # this run's bytes only, also on a shared ctx
        self._broadcast_initial_state()
        self.d = self.workers[0].num_params
        self.steps_per_epoch = steps_per_epoch
        self.eval_every = cfg.eval_every or steps_per_epoch
        self.strategy = make_strategy(cfg, num_params=self.d, steps_per_epoch=steps_per_epoch)
        self.monitor = self.strategy.monitor
        self.outer = make_outer(cfg.resolved("server_optimizer"), lr=cfg.resolved("server_lr"),
                                momentum=cfg.server_momentum)
        # the last global flat model: the drift's origin, the outer step's and compression's reference;
        # plain averaging on a schedule needs none (and skips refreshing it at every sync)
        needs_ref = self.monitor is not None or self.outer is not None or cfg.sync_compression != "none"
        self.ref = self.workers[0].flat.detach().clone() if needs_ref else None
        self.w0 = self.ref[:self.d] if needs_ref else None
        self.xi = self._initial_xi() if (self.monitor is not None and self.monitor.uses_xi) else None
        self._packed_buffers: dict[int, torch.Tensor] = {}  # the per-step Allreduce buffer, by state size
        self._kernel_out = (torch.empty(kernels.packed_size(self.monitor.sketch_depth, self.monitor.sketch_width),
                                        dtype=torch.float64, device=self.workers[0].device)
                            if self.monitor is not None else None)

        self.step_count = 0
        self.syncs = 0
        self.comm_bytes = 0          # the paper's accounting (FDA.md section 5), at the width really sent
        self.comm_bytes_float32 = 0  # the same with float32 syncs
        self.last_bound = math.nan
        self.last_synced = False
        self.stop_requested = False  # some rank got SIGTERM/SIGUSR1 (fda.preemption): stop after this step
        self.totals = defaultdict(float)  # seconds: compute, monitor, comm
        self._eval_flat: FlatModel | None = None
        self.last_eval = (math.nan, math.nan)
        self._t_start = time.perf_counter()
        self._t_last = self._t_start
        self.log = self._open_log(log, resume_step=resume_step, overwrite=overwrite) if log is not None else None
        self.world.set_failure_callback(self._record_remote_failure)
        self.world.set_stall_timeout(cfg.stall_timeout)

    # ------------------------------------------------------------------ set-up
    def _broadcast_initial_state(self) -> None:
        """Every worker starts from rank 0's first model (its full state_dict, frozen parts too):
        ONE broadcast of the flat buffer, plus one per dtype for whatever lives outside it."""
        first = self.workers[0]
        self.world.bcast_(first.flat, root=0, kind="setup")
        flat_storage = first.flat.untyped_storage().data_ptr()
        src = first.module.state_dict()
        rest = [src[n] for n in sorted(src) if src[n].untyped_storage().data_ptr() != flat_storage]
        for dtype in sorted({t.dtype for t in rest}, key=str):
            group = [t for t in rest if t.dtype == dtype]
            packed = torch.cat([t.reshape(-1) for t in group])
            self.world.bcast_(packed, root=0, kind="setup")
            offset = 0
            for t in group:
                t.copy_(packed[offset:offset + t.numel()].view_as(t))
                offset += t.numel()
        for w in self.workers[1:]:
            w.module.load_state_dict(src)

    def _initial_xi(self) -> torch.Tensor:
        """Before the first sync there is no last global update: a seeded Gaussian, the same on every rank."""
        g = torch.Generator().manual_seed(self.cfg.seed + 0x5EED)
        xi = torch.randn(self.d, generator=g, dtype=torch.float32).to(self.workers[0].device)
        return xi / xi.norm()

    def _open_log(self, log, *, resume_step: int | None, overwrite: bool) -> H5Log | None:
        out = Path(log)
        resume = resume_step is not None
        problem = None
        if self.ctx.rank == 0:
            path = out / LOG_NAME
            if path.exists() and not (resume or overwrite):
                problem = (f"{out} already holds a run (metrics.h5); pass --resume to continue it "
                           "or --overwrite to replace it")
            elif resume and not path.exists():
                problem = f"--resume: no run to resume in {out} (no metrics.h5)"
            else:
                try:
                    out.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    problem = f"cannot create the output directory {out}: {e}"
        problem = self.world.bcast_object(problem)
        if problem:
            raise ConfigError(problem)
        if self.ctx.rank != 0:
            return None
        attrs = {
            "config": self.cfg.to_json(), "world_size": self.ctx.world_size, "workers": self.K,
            "workers_per_rank": self.ctx.workers_per_rank, "num_params": self.d,
            "fda_version": _version(), "state_kernel": kernels.backend(),
            "strategy": self.describe(), "theta": self.strategy.theta,
            "theta_rule": self.theta_rule(),
            "steps_per_epoch": self.steps_per_epoch or 0,
            "state_floats": self.monitor.state_size if self.monitor else 0,
            "device": str(self.ctx.device), "threads_per_rank": self.ctx.threads,
            "model_class": type(self.workers[0].module).__name__,
        }
        return H5Log(out / LOG_NAME, attrs, flush_every=self.cfg.log_flush_every,
                     resume_step=resume_step)

    def theta_rule(self) -> str:
        """How theta was chosen: as given, by the paper's rule of thumb (theta=auto), or per round (fda_opt)."""
        cfg = self.cfg
        if cfg.strategy == "fda_opt":
            return "per round: ((max_epochs/2)/E_r) * Var_r"
        if cfg.theta == "auto":
            from fda.config import THETA_RULES
            c = THETA_RULES[cfg.theta_profile]
            return f"auto: {cfg.theta_profile} rule {c:g} x d = {c:g} x {self.d} = {self.strategy.theta:.4g}"
        return "given" if self.monitor is not None else "none (no variance check)"

    def describe(self) -> str:
        """When (the strategy) and how (the outer update, the sync's width) this synchronizer syncs."""
        outer = f", outer={self.outer.describe()}" if self.outer is not None else ""
        width = f", sync {self.averaging.name}" if self.averaging.name != "none" else ""
        return self.strategy.describe() + outer + width

    # -------------------------------------------------------------------- step
    @property
    def epoch(self) -> float:
        return self.step_count / self.steps_per_epoch if self.steps_per_epoch else math.nan

    def step(self, loss=None) -> bool:
        """Call once per local step (after optimizer.step()). Returns True when the models were averaged.

        loss: this step's training loss: a float or a tensor (e.g. `loss.detach()`: reading it
        does not synchronise the GPU), or one per hosted worker.
        Afterwards `stop_requested` is True on every rank when any rank got SIGTERM or SIGUSR1
        (after `fda.preemption.install()`): save a checkpoint, `close("interrupted")` and exit
        with `fda.preemption.RESUMABLE_EXIT`.
        """
        t_enter = time.perf_counter()
        compute_s = t_enter - self._t_last
        self.step_count += 1
        step = self.step_count
        cfg = self.cfg
        self.world.set_step(step)
        if cfg.fail_at_step == step and cfg.fail_rank == self.ctx.rank and cfg.fail_mode == "raise":
            raise InjectedFailure(f"injected failure at step {step} (fail_at_step/fail_rank testing aid)")

        check = self.monitor is not None and self.strategy.wants_check(step)
        t = time.perf_counter()
        packed = self._pack_step(loss, check)
        monitor_s = time.perf_counter() - t

        t = time.perf_counter()
        reduced = self.world.allreduce_to_host(packed, "sum", kind="state")
        mean_state = None
        if check and self.monitor.reduce_op == "max":
            mean_state = self.world.allreduce_to_host(packed[_HEAD:], "max", kind="state")
        elif check:
            mean_state = reduced[_HEAD:] / self.K
        comm_s = time.perf_counter() - t

        if reduced[1] > 0 or not np.all(np.isfinite(reduced)):
            raise CollectiveError(f"non-finite loss, drift or state at step {step} "
                                  "(diverged: try a smaller lr or check the data)")
        mean_loss = reduced[0] / reduced[2] if reduced[2] > 0 else math.nan
        self.stop_requested = bool(reduced[3] > 0)
        if check:
            self._count_paper_bytes(self.K * FLOAT_BYTES * self.monitor.state_size)
        bound = self.monitor.bound(mean_state) if check else math.nan
        var_exact = self._exact_variance() if cfg.audit else math.nan

        synced = self.strategy.decide(step, bound)
        if synced:
            t = time.perf_counter()
            mean_sqnorm = mean_state[0] if (check and self.monitor.reduce_op == "sum") else math.nan
            self._synchronize(mean_sqnorm)
            comm_s += time.perf_counter() - t

        self.last_bound, self.last_synced = bound, synced
        self.totals["compute"] += compute_s
        self.totals["monitor"] += monitor_s
        self.totals["comm"] += comm_s
        if self.log is not None:
            self.log.append_step({
                "step": step, "epoch": self.epoch, "loss": mean_loss, "var_bound": bound,
                "var_exact": var_exact, "theta": self.strategy.theta, "synced": int(synced),
                "comm_bytes": self.comm_bytes, "comm_bytes_float32": self.comm_bytes_float32,
                "comm_bytes_mpi": self.comm_bytes_mpi, "time_compute": compute_s, "time_monitor": monitor_s, "time_comm": comm_s,
            })
        self.mean_loss = mean_loss
        self._t_last = time.perf_counter()
        return synced

    def _pack_step(self, loss, check: bool) -> torch.Tensor:
        """This rank's part of the step's ONE small Allreduce, built on the model's device without a
        host sync: [loss sum, non-finite flag, worker count, stop flag, local state (when checked)] in float64."""
        n_state = self.monitor.state_size if check else 0
        packed = self._packed_buffers.get(n_state)
        if packed is None:
            packed = self._packed_buffers[n_state] = torch.zeros(_HEAD + n_state, dtype=torch.float64,
                                                                 device=self.workers[0].device)
        losses = _loss_vector(loss, packed.device)
        loss_sum = pairwise_sum_(list(losses)) if losses.numel() else losses.sum()
        finite = torch.isfinite(loss_sum)
        if check:
            state = packed[_HEAD:]
            self._local_state(state)
            finite = finite & torch.isfinite(state).all()
        packed[0] = loss_sum
        packed[1] = (~finite).to(torch.float64)
        packed[2] = losses.numel()
        packed[3] = float(preemption.requested())
        return packed

    def _local_state(self, out: torch.Tensor) -> None:
        """This rank's state into `out`: its hosted workers' states, summed (or MAX for per-worker monitors)."""
        mon = self.monitor
        states = []
        seed = mon.sketch_seed(self.step_count)  # fresh hashes at every check, the same on every rank
        for w in self.workers:
            drift = kernels.drift_state_out(w.params, self.w0, self._kernel_out, xi=self.xi if mon.uses_xi else None,
                                            sketch_depth=mon.sketch_depth, sketch_width=mon.sketch_width, seed=seed)
            state = mon.local_state(drift)
            states.append(state.clone() if len(self.workers) > 1 else state)  # the kernel reuses its output
        if mon.reduce_op == "sum":
            out.copy_(pairwise_sum_(states))  # the order W ranks would add them in (layout-independent bits)
        else:
            out.copy_(states[0])
            for state in states[1:]:
                torch.maximum(out, state, out=out)

    def _exact_variance(self) -> float:
        """Audit: Var = (1/K) sum_k ||w_k - mean||^2, with a full Allreduce not counted as training traffic."""
        mean = self.world.allreduce_(local_sum(self.workers), "sum", kind="audit").div_(self.K)[:self.d]
        local = float(pairwise_sum_([torch.sum((w.params - mean).double() ** 2) for w in self.workers]))
        return float(self.world.allreduce_values([local], "sum", kind="audit")[0]) / self.K

    def _synchronize(self, mean_sqnorm: float) -> None:
        # Plain averaging (no outer step, no variance of the models averaged): the mean IS the new
        # global model, and the averaging refreshes w0, xi's direction and the hosted copies in the
        # pass that divides by K. Otherwise it leaves the mean in worker 0's flat buffer for the rest.
        final = self.outer is None and not self.strategy.wants_sync_variance
        target = self.averaging.average_(self.workers, self.ref, final=final, drift=self.xi if final else None)
        var_at_sync = math.nan
        if not final:
            mean = target[:self.d]
            if self.strategy.wants_sync_variance and not math.isnan(mean_sqnorm):
                var_at_sync = mean_sqnorm - kernels.drift_state(mean, self.w0).sqnorm
            if self.outer is not None:
                self.outer.step(self.w0, mean)
            # target already holds the new global model (divisor 1: exact): xi, w0, the copies
            kernels.mean_epilogue_(target, 1, ref=self.ref, drift=self.xi, copies=[w.flat for w in self.workers[1:]])
        if self.xi is not None:
            self._normalise_xi()
        self._sync_optimizer_state()
        self.syncs += 1
        self._count_paper_bytes(2 * self.K * self.averaging.wire_bytes(self.d), 2 * self.K * FLOAT_BYTES * self.d)
        self.strategy.after_sync(self.step_count, var_at_sync)

    def _normalise_xi(self) -> None:
        """xi (holding new w0 - old w0) <- the unit direction of this global update, in place."""
        norm = float(self.xi.norm())
        if norm > 0 and math.isfinite(norm):
            self.xi.div_(norm)
        else:  # the global model did not move: fall back to the seeded unit vector
            self.xi = self._initial_xi()

    def _count_paper_bytes(self, sent: int, as_float32: int | None = None) -> None:
        self.comm_bytes += sent
        self.comm_bytes_float32 += sent if as_float32 is None else as_float32

    def _sync_optimizer_state(self) -> None:
        policy = self.cfg.sync_optimizer_state
        if policy == "keep":
            return
        if policy == "reset":
            for opt in self.optimizers:
                opt.state.clear()
            return
        tensors = [[v for st in opt.state.values() for v in st.values()
                    if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0]
                   for opt in self.optimizers]
        mean_of_tensors_(self.world, tensors, self.K, packed=True)

    # -------------------------------------------------------------- evaluation
    def mpi_bytes(self, kind: str) -> int:
        """Bytes this synchronizer's MPI calls of one kind moved, summed over ranks."""
        return self.world.bytes.get(kind) - self._bytes_base.get(kind, 0)

    @property
    def comm_bytes_mpi(self) -> int:
        return self.mpi_bytes("sync") + self.mpi_bytes("state")

    def should_evaluate(self) -> bool:
        """True at the steps where the loop should evaluate `averaged_model()` (the same on every rank):
        every `eval_every` steps (setting); else every `steps_per_epoch` steps when given; else once
        per pass over the last `fda.shard(...)` made with this ctx (ctx.shard_batches); else every
        DEFAULT_EVAL_EVERY (100) steps."""
        every = self.eval_every or self.ctx.shard_batches or DEFAULT_EVAL_EVERY
        return self.step_count % every == 0

    def averaged_model(self) -> torch.nn.Module:
        """The mean of the K current models (a separate module; the local models are unchanged).
        Free right after a sync; otherwise one Allreduce, logged as evaluation traffic."""
        if self._eval_flat is None:
            self._eval_flat = FlatModel(copy.deepcopy(self.workers[0].module))
        target = self._eval_flat
        # frozen parameters and non-float32 buffers are outside the flat buffer: take worker 0's current ones
        target.module.load_state_dict(self.workers[0].module.state_dict())
        if self.last_synced or self.K == 1:
            target.flat.copy_(self.workers[0].flat)
        else:
            target.flat.copy_(local_sum(self.workers))
            self.world.allreduce_(target.flat, "sum", kind="eval").div_(self.K)
        return target.module

    def log_eval(self, test_acc: float, test_loss: float = math.nan) -> None:
        """Record an evaluation (call on every rank with the same values; rank 0 writes)."""
        if self.log is not None:
            self.log.append_eval({
                "step": self.step_count, "epoch": self.epoch, "test_acc": test_acc, "test_loss": test_loss,
                "comm_bytes": self.comm_bytes, "comm_bytes_float32": self.comm_bytes_float32,
                "comm_bytes_mpi": self.comm_bytes_mpi, "comm_bytes_eval": self.mpi_bytes("eval"),
                "wall_time": time.perf_counter() - self._t_start,
            })
        self.last_eval = (test_acc, test_loss)

    # ------------------------------------------------------------- lifecycle
    def summary(self) -> dict:
        d = self.d
        return {
            "steps": self.step_count, "syncs": self.syncs, "workers": self.K,
            "comm_gb": self.comm_bytes / 1e9, "comm_gb_float32": self.comm_bytes_float32 / 1e9,
            "synchronous_gb": self.step_count * 2 * self.K * FLOAT_BYTES * d / 1e9,
            "comm_bytes_mpi": self.comm_bytes_mpi,
            "wall_s": time.perf_counter() - self._t_start,
            "time_compute_s": self.totals["compute"], "time_monitor_s": self.totals["monitor"],
            "time_comm_s": self.totals["comm"],
            "strategy": self.describe(), "state_kernel": kernels.backend(),
        }

    def close(self, status: str = "completed", error: str = "", extra: dict | None = None) -> dict:
        """Flush and close the log (status completed, failed, or interrupted: then the log also
        records `stopped_at_step`); returns the run summary, with `extra` (numbers, also logged)."""
        summary = {**self.summary(), **(extra or {})}
        if self.log is not None:
            numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
            numbers["final_test_acc"] = getattr(self, "last_eval", (math.nan,))[0]
            attrs = {f"summary_{k}": v for k, v in numbers.items()}
            if status == "interrupted":
                attrs["stopped_at_step"] = self.step_count
            self.log.close(status, error, extra_attrs=attrs)
        self.world.set_failure_callback(None)
        return summary

    def _record_remote_failure(self, rank: int, message: str) -> None:
        if self.log is not None:
            self.log.close("failed", f"rank {rank}: {message}")

    def fail(self, message: str) -> None:
        """Mark the log failed (rank 0) without waiting for other ranks."""
        if self.log is not None:
            self.log.close("failed", message)

    def state_dict(self) -> dict:
        """Everything the synchronizer keeps between steps (models and optimizers are yours)."""
        return {
            "step": self.step_count, "syncs": self.syncs, "comm_bytes": self.comm_bytes,
            "comm_bytes_float32": self.comm_bytes_float32,
            "mpi_bytes": {k: self.mpi_bytes(k) for k in sorted({*self.world.bytes.by_kind, *self._bytes_base})},
            "ref": None if self.ref is None else self.ref.clone(),
            "xi": None if self.xi is None else self.xi.clone(), "strategy": self.strategy.state_dict(),
            "outer": None if self.outer is None else self.outer.state_dict(),
            "totals": dict(self.totals), "config": self.cfg.to_json(),
        }

    def load_state_dict(self, state: dict) -> None:
        if run_json(state["config"]) != self.cfg.run_json():  # the execution (workers_per_rank, ...) may differ
            raise ConfigError("the checkpoint was written by a run with a different configuration")
        self.step_count = int(state["step"])
        self.syncs = int(state["syncs"])
        self.comm_bytes = int(state["comm_bytes"])
        self.comm_bytes_float32 = int(state["comm_bytes_float32"])
        for kind, n in state["mpi_bytes"].items():
            self._bytes_base[kind] = self.world.bytes.get(kind) - n
        if self.ref is not None:
            self.ref.copy_(state["ref"])
        if self.xi is not None:
            self.xi = state["xi"].to(self.w0.device)
        self.strategy.load_state_dict(state["strategy"])
        if self.outer is not None:
            self.outer.load_state_dict(state["outer"])
        self.totals = defaultdict(float, state["totals"])

    def worker_state_dict(self, j: int) -> dict:
        """What the synchronizer keeps for hosted worker j alone (its compression residual), to be
        checkpointed with that worker's model: it differs from worker to worker."""
        return self.averaging.worker_state_dict(j)

    def load_worker_state_dict(self, j: int, state: dict) -> None:
        self.averaging.load_worker_state_dict(j, state)


def _loss_vector(loss, device: torch.device) -> torch.Tensor:
    """The step's loss(es) as a float64 vector on `device`; tensors are not read on the host."""
    if loss is None:
        return torch.zeros(0, dtype=torch.float64, device=device)
    items = list(loss) if isinstance(loss, (list, tuple)) else [loss]
    if all(torch.is_tensor(x) for x in items):
        return torch.stack([x.detach().reshape(()).to(device=device, dtype=torch.float64) for x in items])
    if isinstance(loss, np.ndarray) or all(isinstance(x, (int, float, np.floating, np.integer)) for x in items):
        return torch.tensor([float(x) for x in np.ravel(items)], dtype=torch.float64, device=device)
    raise TypeError(f"loss must be a float, a tensor, or a list of them (one per hosted worker), "
                    f"got {type(loss).__name__}")


def _version() -> str:
    from fda import __version__
    return __version__
