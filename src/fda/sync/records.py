"""The run's log rows: one per step, one per evaluation, and the closing summary (fda.h5log).

Only rank 0 writes; every rank calls the same methods with the same values, so a `RunRecords`
without a log (other ranks, or no log directory) simply records nothing.
"""
from __future__ import annotations

import math
from pathlib import Path

from fda.config import ConfigError
from fda.h5log import LOG_NAME, H5Log


class RunRecords:
    """Rank 0's metrics.h5, or nothing."""

    def __init__(self, log: H5Log | None = None):
        self.log = log

    @classmethod
    def open(cls, out, world, *, rank: int, attrs, flush_every: int, resume_step: int | None,
             overwrite: bool) -> "RunRecords":
        """The log in directory `out`, checked on rank 0 with the same ConfigError on every rank.
        attrs: a callable giving the run's attributes (called on rank 0 only)."""
        out = Path(out)
        problem = _log_directory_problem(out, resume=resume_step is not None, overwrite=overwrite) if rank == 0 else None
        _raise_everywhere(world, problem)
        if rank != 0:
            return cls()
        return cls(H5Log(out / LOG_NAME, attrs(), flush_every=flush_every, resume_step=resume_step))

    @property
    def active(self) -> bool:
        return self.log is not None

    def step(self, row: dict) -> None:
        if self.log is not None:
            self.log.append_step(row)

    def evaluation(self, row: dict) -> None:
        if self.log is not None:
            self.log.append_eval(row)

    def flush(self, *, durable: bool = False) -> None:
        if self.log is not None:
            self.log.flush(durable=durable)

    def close(self, status: str, error: str, summary: dict, *, final_test_acc: float, stopped_at_step: int) -> None:
        """Close with status completed, failed or interrupted (then the step it stopped after);
        the summary's numbers become summary_* attributes."""
        if self.log is None:
            return
        numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
        numbers["final_test_acc"] = final_test_acc
        attrs = {f"summary_{k}": v for k, v in numbers.items()}
        if status == "interrupted":
            attrs["stopped_at_step"] = stopped_at_step
        self.log.close(status, error, extra_attrs=attrs)

    def fail(self, message: str) -> None:
        """Mark the log failed now, without waiting for other ranks."""
        if self.log is not None:
            self.log.close("failed", message)


def _log_directory_problem(out: Path, *, resume: bool, overwrite: bool) -> str | None:
    path = out / LOG_NAME
    if path.exists() and not (resume or overwrite):
        return (f"{out} already holds a run (metrics.h5); pass resume_step= to continue it "
                "or overwrite=True to replace it")
    if resume and not path.exists():
        return f"resume_step given, but there is no run to resume in {out} (no metrics.h5)"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create the output directory {out}: {e}"
    return None


def _raise_everywhere(world, problem: str | None) -> None:
    """Rank 0's problem (or None) becomes the same ConfigError on every rank."""
    problem = world.bcast_object(problem)
    if problem:
        raise ConfigError(problem)


def step_row(*, step: int, epoch: float, loss: float, bound: float, var_exact: float, theta: float,
             synced: bool, accounting, times: dict) -> dict:
    return {"step": step, "epoch": epoch, "loss": loss, "var_bound": bound, "var_exact": var_exact,
            "theta": theta, "synced": int(synced), **_bytes(accounting),
            "time_compute": times["compute"], "time_monitor": times["monitor"], "time_comm": times["comm"]}


def eval_row(*, step: int, epoch: float, test_acc: float, test_loss: float, accounting, wall_time: float) -> dict:
    return {"step": step, "epoch": epoch, "test_acc": test_acc, "test_loss": test_loss, **_bytes(accounting),
            "comm_bytes_eval": accounting.mpi_bytes("eval"), "wall_time": wall_time}


def _bytes(accounting) -> dict:
    return {"comm_bytes": accounting.comm_bytes, "comm_bytes_float32": accounting.comm_bytes_float32,
            "comm_bytes_mpi": accounting.mpi_bytes("sync") + accounting.mpi_bytes("state")}


NO_EVAL = (math.nan, math.nan)
