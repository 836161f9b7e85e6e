"""`fda.Synchronizer`: decides when the K workers average their models, and does it.

Call `step()` after every local optimizer step. A step is: pack (this rank's loss and, on a
checked step, its monitor state from the native drift kernel), exchange (ONE small Allreduce
of that buffer, plus the monitor's own MAX for Kamp's rule), decide (the strategy's rule on the
reduced values, the same on every rank), sync (when it says so: ONE Allreduce of a contiguous
flat buffer, float32 or quantized, then the outer update; with sync_delay it travels while the
next steps compute and lands later, `fda.sync.delayed`) and record (the log row).
The parts live in `fda.sync`; this class only wires them together.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch

from fda import kernels
from fda.collectives import CollectiveError, check_compression, make_averaging
from fda.config import Config, ConfigError, run_json
from fda.context import Context
from fda.flat import FlatModel, local_sum, pairwise_sum_
from fda.launch import summation_order
from fda.outer import make_outer
from fda.strategies import make_strategy
from fda.sync import records
from fda.sync.accounting import FLOAT_BYTES, Accounting, Stopwatch, synchronous_bytes
from fda.sync.delayed import DelayedSync
from fda.sync.exchange import DivergedLocally, StepExchange
from fda.sync.optimizer_state import sync_optimizer_state
from fda.sync.records import RunRecords
from fda.sync.reference import GlobalReference
from fda.sync.setup import (as_list, broadcast_initial_state, check_hosted, check_same_architecture,
                            merge_settings)
from fda.sync.variants import make_sync_variant, needs_reference
from fda.version import __version__

__all__ = ["Synchronizer", "InjectedFailure", "CollectiveError", "DivergedLocally", "FLOAT_BYTES", "DEFAULT_EVAL_EVERY"]

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
        self.cfg = cfg = merge_settings(config, strategy, settings)
        self.ctx, self.world, self.K = ctx, ctx.fda_comm, ctx.workers
        self.world.begin_run()
        models, self.optimizers = as_list(model), as_list(optimizer)
        check_hosted(cfg, ctx, models, self.optimizers)
        check_compression(cfg.sync_compression, self.K)
        self._workers = [FlatModel(m) for m in models]
        self._averaging = make_averaging(cfg.sync_compression, self.world, self.K, self._workers)
        check_same_architecture(self._workers)
        self._accounting = Accounting(self.world.bytes)  # this run's bytes only, also on a shared ctx
        broadcast_initial_state(self.world, self._workers)
        self.d = self._workers[0].num_params
        self.steps_per_epoch = steps_per_epoch
        self.eval_every = cfg.eval_every or steps_per_epoch
        self.strategy = make_strategy(cfg, num_params=self.d, steps_per_epoch=steps_per_epoch)
        self.monitor = self.strategy.monitor
        self.outer = make_outer(cfg.resolved("server_optimizer"), lr=cfg.resolved("server_lr"),
                                momentum=cfg.server_momentum)
        self._reference = self._make_reference()
        self._sync = make_sync_variant(self._averaging, self.outer,
                                       measure_variance=self.strategy.wants_sync_variance)
        self._delayed = self._make_delayed_sync()
        self._exchange = StepExchange(self.world, self.K, self._workers[0].device, lag=cfg.check_lag,
                                      state_op=self.monitor.reduce_op if self.monitor else "sum",
                                      from_reduced=self.monitor.from_reduced if self.monitor else None)
        self._kernel_out = self.monitor.kernel_output(self._workers[0].device) if self.monitor else None
        self._reset_counters()
        # what a resume on another layout relies on, recorded with the run (collective, before the log opens)
        self._sum_order = summation_order(self.world) if log is not None else None
        self._records = (RunRecords.open(log, self.world, rank=ctx.rank, attrs=self._log_attrs,
                                         flush_every=cfg.log_flush_every, resume_step=resume_step,
                                         overwrite=overwrite)
                         if log is not None else RunRecords())
        self.world.set_failure_callback(self._record_remote_failure)
        self.world.set_stall_timeout(cfg.stall_timeout)

    def _make_reference(self) -> GlobalReference | None:
        if not needs_reference(self.monitor, self.outer, self.cfg.sync_compression):
            return None
        return GlobalReference(self._workers[0].flat, self.d, seed=self.cfg.seed,
                               with_xi=self.monitor is not None and self.monitor.uses_xi)

    def _make_delayed_sync(self) -> DelayedSync | None:
        delay, period = self.cfg.sync_delay, self.strategy.min_sync_interval
        if not delay:
            return None
        if period is not None and delay >= period:
            raise ConfigError(f"sync_delay={delay} must be below the sync period ({period} steps): "
                              "a sync must land before the next one starts")
        return DelayedSync(delay)

    @property
    def sync_in_flight(self) -> bool:
        """A sync started (sync_delay >= 1) has not landed yet."""
        return self._delayed is not None and self._delayed.in_flight

    def _reset_counters(self) -> None:
        self.step_count = 0
        self.syncs = 0
        self.last_bound = math.nan
        self.last_synced = False
        self._models_agree = False  # every worker holds the same model now (right after a blocking sync)
        self.stop_requested = False  # some rank got SIGTERM/SIGUSR1 (fda.preemption): stop after this step
        self.mean_loss = math.nan
        self.last_eval = records.NO_EVAL
        self._eval_flat: FlatModel | None = None
        self._clock = Stopwatch()

    def _log_attrs(self) -> dict:
        return {
            "config": self.cfg.to_json(), "world_size": self.ctx.world_size, "workers": self.K,
            "workers_per_rank": self.ctx.workers_per_rank, "num_params": self.d,
            "fda_version": __version__, "state_kernel": kernels.backend(),
            "strategy": self.describe(), "theta": self.strategy.theta, "theta_rule": self.theta_rule(),
            "steps_per_epoch": self.steps_per_epoch or 0,
            "state_floats": self.monitor.state_size if self.monitor else 0,
            "device": str(self.ctx.device), "threads_per_rank": self.ctx.threads,
            "model_class": type(self._workers[0].module).__name__,
            "allreduce_pairwise_order": self._sum_order[0], "allreduce_order_detail": self._sum_order[1],
        }

    def theta_rule(self) -> str:
        """How theta was chosen: as given, by the paper's rule of thumb (theta=auto), or per round (fda_opt)."""
        return self.strategy.theta_rule

    def describe(self) -> str:
        """When (the strategy) and how (the outer update, the sync's width) this synchronizer syncs."""
        outer = f", outer={self.outer.describe()}" if self.outer is not None else ""
        width = f", sync {self._averaging.name}" if self._averaging.name != "none" else ""
        lag = f", check_lag={self.cfg.check_lag}" if self.cfg.check_lag else ""
        delay = f", sync_delay={self.cfg.sync_delay}" if self.cfg.sync_delay else ""
        return self.strategy.describe() + lag + delay + outer + width

    # -------------------------------------------------------------------- step
    @property
    def epoch(self) -> float:
        """Local epochs done: steps / steps_per_epoch, fractional (NaN without steps_per_epoch).
        Not the `epochs` setting (the run's budget) nor a round's local_epochs or max_epochs."""
        return self.step_count / self.steps_per_epoch if self.steps_per_epoch else math.nan

    def step(self, loss=None) -> bool:
        """Call once per local step (after optimizer.step()). Returns True when the models were averaged.

        loss: this step's training loss: a float or a tensor (e.g. `loss.detach()`: reading it
        does not synchronise the GPU), or one per hosted worker.
        With sync_delay, True at the step a sync starts; it lands sync_delay steps later.
        Afterwards `stop_requested` is True on every rank when any rank got SIGTERM or SIGUSR1
        (after `fda.preemption.install()`): save a checkpoint, `close("interrupted")` and exit
        with `fda.preemption.RESUMABLE_EXIT`.
        """
        times = {"compute": self._clock.lap()}
        step = self._begin_step()
        self._exchange.add_loss(loss)
        var_exact = self._exact_variance() if self.cfg.audit else math.nan
        totals = self._exchange_for(step, var_exact, times)
        times["comm"] = self._clock.lap()
        mean_state = self._fresh_state(totals)
        bound = self._bound(mean_state)
        if totals is not None and totals.mean_state is not None:
            self.strategy.after_check(totals.step, step, bound)
        lands = self.sync_in_flight and self._delayed.is_due(step)
        synced = not self.sync_in_flight and self.strategy.decide(step, bound)
        if synced or lands:
            self._clock.restart_lap()
            if synced:
                self._synchronize(mean_state)
            else:
                self._land_sync()
            times["comm"] += self._clock.lap()
        if self.cfg.check_lag:
            var_exact = totals.extra if mean_state is not None else math.nan
        self._end_step(totals, bound, var_exact, synced, times)
        return synced

    def _exchange_for(self, step: int, var_exact: float, times: dict):
        """The step's exchange, if it has one (docs/algorithm.md, "Quiet steps"): a check's state with
        the losses since the last exchange; a schedule's losses at evaluation steps only (as evaluation
        traffic). Without one the step makes no collective: a non-finite loss is this rank's failure,
        and the losses wait for the next exchange. Returns the totals due at this step, or None."""
        if not self.sync_in_flight and self.strategy.wants_check(step):
            self._exchange.start(step=step, state_size=self.monitor.state_size, fill_state=self._local_state,
                                 generation=self.syncs, extra=var_exact)
        elif self.monitor is None and self.should_evaluate():
            self._exchange.raise_if_not_finite(step, self.ctx.rank)
            self._exchange.start(step=step, kind="eval")
        else:
            self._exchange.raise_if_not_finite(step, self.ctx.rank)
            self._exchange.skip()
        times["monitor"] = self._clock.lap()
        self._exchange.poke()
        if self._delayed is not None:
            self._delayed.advance()
        return self._exchange.due(step)

    def _begin_step(self) -> int:
        self.step_count += 1
        step = self.step_count
        self.world.set_step(step)
        cfg = self.cfg
        if cfg.fail_at_step == step and cfg.fail_rank == self.ctx.rank and cfg.fail_mode == "raise":
            raise InjectedFailure(f"injected failure at step {step} (fail_at_step/fail_rank testing aid)")
        return step

    def _local_state(self, out) -> None:
        """This rank's state into `out`: its hosted workers' states, combined by the monitor."""
        mon, ref = self.monitor, self._reference
        states = []
        for w in self._workers:
            state = mon.worker_state(w.params, ref.params, ref.xi, self._kernel_out, self.step_count)
            states.append(state.clone() if len(self._workers) > 1 else state)  # the kernel reuses its output
        mon.combine_hosted_(out, states)

    def _fresh_state(self, totals) -> np.ndarray | None:
        """The mean state of the check due now (counted: it was sent), unless a sync has replaced the
        reference it was measured against since (possible with check_lag): then None, no decision."""
        if totals is None or totals.mean_state is None:
            return None
        self._accounting.count_check(self.K, self.monitor.state_size)
        return totals.mean_state if totals.generation == self.syncs else None

    def _bound(self, mean_state) -> float:
        """H(mean state) at a step with a check due, else NaN."""
        return math.nan if mean_state is None else self.monitor.bound(mean_state)

    def _exact_variance(self) -> float:
        """Audit: Var = (1/K) sum_k ||w_k - mean||^2, with a full Allreduce not counted as training traffic."""
        mean = self.world.allreduce_(local_sum(self._workers), "sum", kind="audit").div_(self.K)[:self.d]
        local = float(pairwise_sum_([torch.sum((w.params - mean).double() ** 2) for w in self._workers]))
        return float(self.world.allreduce_values([local], "sum", kind="audit")[0]) / self.K

    def _synchronize(self, mean_state) -> None:
        mean_sqnorm = self.monitor.mean_sqnorm(mean_state) if mean_state is not None else math.nan
        if self._delayed is not None:  # it lands sync_delay steps later (_land_sync)
            ref = self._reference.flat if self._reference is not None else None
            self._delayed.start(self.step_count, self._averaging, self._workers, ref, mean_sqnorm)
            self._count_sync()
            return
        var_at_sync = self._sync.sync(self._workers, self._reference, mean_sqnorm)
        self._count_sync()
        self._after_sync(var_at_sync)

    def _land_sync(self) -> None:
        self._after_sync(self._delayed.apply(self._sync, self._workers, self._reference, self.world, self.K))

    def _count_sync(self) -> None:
        # at the start: a check measured before it, even one waited on later, is stale (_fresh_state)
        self.syncs += 1
        self._accounting.count_sync(self.K, self._averaging.wire_bytes(self.d), self.d)

    def _after_sync(self, var_at_sync: float) -> None:
        sync_optimizer_state(self.cfg.sync_optimizer_state, self.optimizers, self.world, self.K)
        self.strategy.after_sync(self.step_count, var_at_sync)

    def _end_step(self, totals, bound: float, var_exact: float, synced: bool, times: dict) -> None:
        self.last_bound, self.last_synced = bound, synced
        self._models_agree = synced and self._delayed is None
        # the stop agreement, on every rank at the end of every step (fda.comm.stops): no collective
        self.stop_requested = self.world.stop_requested_after(self.step_count)
        loss = totals.mean_loss if totals is not None else math.nan
        if totals is not None:
            self.mean_loss = loss
        self._accounting.add_times(**times)
        self._records.step(records.step_row(
            step=self.step_count, epoch=self.epoch, loss=loss, bound=bound, var_exact=var_exact,
            theta=self.strategy.theta, synced=synced, accounting=self._accounting, times=times,
            exchange=(*self._exchange.sent, self.cfg.check_lag)))
        self._clock.restart_lap()

    # ------------------------------------------------------ read-only views
    @property
    def comm_bytes(self) -> int:
        """Bytes in the paper's accounting, at the width really sent (docs/algorithm.md, "Byte accounting")."""
        return self._accounting.comm_bytes

    @property
    def comm_bytes_float32(self) -> int:
        """The same with float32 syncs."""
        return self._accounting.comm_bytes_float32

    def mpi_bytes(self, kind: str) -> int:
        """Bytes this synchronizer's MPI calls of one kind moved, summed over ranks."""
        return self._accounting.mpi_bytes(kind)

    @property
    def comm_bytes_mpi(self) -> int:
        return self.mpi_bytes("sync") + self.mpi_bytes("state")

    @property
    def totals(self) -> dict:
        """Seconds spent so far, by phase: compute (between steps), monitor, comm."""
        return self._accounting.totals

    @property
    def reference(self) -> GlobalReference | None:
        """The global reference (w0, its buffers, xi); None for plain averaging on a schedule."""
        return self._reference

    @property
    def ref(self) -> torch.Tensor | None:
        """Deprecated alias: `reference.flat`, the last global flat model."""
        return None if self._reference is None else self._reference.flat

    @property
    def w0(self) -> torch.Tensor | None:
        """Deprecated alias: `reference.params`, the last global model's parameters."""
        return None if self._reference is None else self._reference.params

    @property
    def xi(self) -> torch.Tensor | None:
        """Deprecated alias: `reference.xi`, the last global update's unit direction."""
        return None if self._reference is None else self._reference.xi

    @property
    def workers(self) -> tuple[FlatModel, ...]:
        """This rank's hosted workers' flat models (read-only view; the tensors are the models')."""
        return tuple(self._workers)

    def worker_params(self, j: int = 0) -> torch.Tensor:
        """Hosted worker j's trainable parameters as one flat tensor (a view into its model)."""
        return self._workers[j].params

    @property
    def averaging(self):
        """The sync's collective (fda.collectives.ExactMean or QuantizedMean)."""
        return self._averaging

    @property
    def log(self):
        """Deprecated: rank 0's fda.h5log.H5Log (None elsewhere); use flush_log()."""
        return self._records.log

    def flush_log(self, *, durable: bool = False) -> None:
        """Write the buffered log rows (rank 0; durable: also fsync, as before a checkpoint)."""
        self._records.flush(durable=durable)

    # -------------------------------------------------------------- evaluation
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
            self._eval_flat = FlatModel(copy.deepcopy(self._workers[0].module))
        target = self._eval_flat
        # frozen parameters and non-float32 buffers are outside the flat buffer: take worker 0's current ones
        target.module.load_state_dict(self._workers[0].module.state_dict())
        if self._models_agree or self.K == 1:
            target.flat.copy_(self._workers[0].flat)
        else:
            target.flat.copy_(local_sum(self._workers))
            self.world.allreduce_(target.flat, "sum", kind="eval").div_(self.K)
        return target.module

    def log_eval(self, test_acc: float, test_loss: float = math.nan) -> None:
        """Record an evaluation (call on every rank with the same values; rank 0 writes)."""
        self._records.evaluation(records.eval_row(
            step=self.step_count, epoch=self.epoch, test_acc=test_acc, test_loss=test_loss,
            accounting=self._accounting, wall_time=self._clock.elapsed()))
        self.last_eval = (test_acc, test_loss)

    # ------------------------------------------------------------- lifecycle
    def summary(self) -> dict:
        totals = self._accounting.totals
        return {
            "steps": self.step_count, "syncs": self.syncs, "workers": self.K,
            "comm_gb": self.comm_bytes / 1e9, "comm_gb_float32": self.comm_bytes_float32 / 1e9,
            "synchronous_gb": synchronous_bytes(self.step_count, self.K, self.d) / 1e9,
            "comm_bytes_mpi": self.comm_bytes_mpi,
            "wall_s": self._clock.elapsed(),
            "time_compute_s": totals["compute"], "time_monitor_s": totals["monitor"],
            "time_comm_s": totals["comm"],
            "strategy": self.describe(), "state_kernel": kernels.backend(),
            # pipelined checks (check_lag): exchanges waited on, and of those complete before the wait
            "exchanges_waited": self._exchange.waited, "exchanges_ready_at_wait": self._exchange.ready_at_wait,
            **({"syncs_landed": self._delayed.applied, "syncs_ready_at_landing": self._delayed.ready_at_apply}
               if self._delayed is not None else {}),
        }

    def close(self, status: str = "completed", error: str = "", extra: dict | None = None) -> dict:
        """Flush and close the log (status completed, failed, or interrupted: then the log also
        records `stopped_at_step`); returns the run summary, with `extra` (numbers, also logged)."""
        self._exchange.discard()
        if self._delayed is not None:
            self._delayed.discard()
        summary = {**self.summary(), **(extra or {})}
        self._records.close(status, error, summary, final_test_acc=self.last_eval[0],
                            stopped_at_step=self.step_count)
        self.world.set_failure_callback(None)
        return summary

    def _record_remote_failure(self, rank: int, message: str) -> None:
        self._records.fail(f"rank {rank}: {message}")

    def fail(self, message: str) -> None:
        """Mark the log failed (rank 0) without waiting for other ranks."""
        self._records.fail(message)

    def state_dict(self) -> dict:
        """Everything the synchronizer keeps between steps (models and optimizers are yours)."""
        reference = self._reference.state_dict() if self._reference is not None else {"ref": None, "xi": None}
        return {
            "step": self.step_count, "syncs": self.syncs, **self._accounting.state_dict(), **reference,
            "strategy": self.strategy.state_dict(),
            "outer": None if self.outer is None else self.outer.state_dict(),
            "exchange": self._exchange.state_dict(),
            "delayed_sync": self._delayed.state_dict() if self._delayed is not None else None,
            "config": self.cfg.to_json(),
        }

    def load_state_dict(self, state: dict) -> None:
        if run_json(state["config"]) != self.cfg.run_json():  # the execution (workers_per_rank, ...) may differ
            raise ConfigError("the checkpoint was written by a run with a different configuration")
        self.step_count = int(state["step"])
        self.syncs = int(state["syncs"])
        self._accounting.load_state_dict(state)
        if self._reference is not None:
            self._reference.load_state_dict(state)
        self.strategy.load_state_dict(state["strategy"])
        if self.outer is not None:
            self.outer.load_state_dict(state["outer"])
        self._exchange.load_state_dict(state.get("exchange", {}))
        if self._delayed is not None:
            ref = self._reference.flat if self._reference is not None else None
            self._delayed.load_state_dict(state["delayed_sync"], self._averaging, ref, self._workers[0].device)

    def worker_state_dict(self, j: int) -> dict:
        """What the synchronizer keeps for hosted worker j alone (its compression residual, its losses
        not yet exchanged), to be checkpointed with that worker's model: it differs from worker to worker."""
        delayed = self._delayed.worker_state_dict(j) if self._delayed is not None else {}
        return {**self._averaging.worker_state_dict(j), **self._exchange.worker_state_dict(j), **delayed}

    def load_worker_state_dict(self, j: int, state: dict) -> None:
        self._averaging.load_worker_state_dict(j, state)
        self._exchange.load_worker_state_dict(j, state, len(self._workers))
        if self._delayed is not None:
            self._delayed.load_worker_state_dict(j, state, len(self._workers), self._workers[0].device)
