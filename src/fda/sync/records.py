"""The run's log rows: one per step, one per evaluation, and the closing summary (fda.h5log).

Only rank 0 writes; every rank calls the same methods with the same values, so a `RunRecords`
without a log (other ranks, or no log directory) simply records nothing.
"""
from __future__ import annotations

import math
from pathlib import Path

from fda.checkpoint import refuse_a_second_run
from fda.comm import same_error_everywhere
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
        with same_error_everywhere(ConfigError, comm=world):
            if rank == 0:
                _check_log_directory(out, resume=resume_step is not None, overwrite=overwrite)
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


def _check_log_directory(out: Path, *, resume: bool, overwrite: bool) -> None:
    path = out / LOG_NAME
    if path.exists() and not (resume or overwrite):
        refuse_a_second_run(out, found=" (metrics.h5)", continue_with="resume_step=", replace_with="overwrite=True")
    if resume and not path.exists():
        raise ConfigError(f"resume_step given, but there is no run to resume in {out} (no metrics.h5)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the output directory {out}: {e}") from None


def step_row(*, step: int, epoch: float, loss: float, bound: float, var_exact: float, theta: float,
             synced: bool, accounting, times: dict, exchange: tuple[int, int, int] = (0, 0, 0)) -> dict:
    """exchange: the step exchange started at this step: (bytes per rank, Allreduce calls, lag: the
    steps of compute between its start and the wait on it); (0, 0, 0) when this step started none."""
    exchange_bytes, exchange_calls, exchange_lag = exchange
    return {"step": step, "epoch": epoch, "loss": loss, "var_bound": bound, "var_exact": var_exact,
            "theta": theta, "synced": int(synced), **_bytes(accounting),
            "time_compute": times["compute"], "time_monitor": times["monitor"], "time_comm": times["comm"],
            "exchange_bytes": exchange_bytes, "exchange_calls": exchange_calls, "exchange_lag": exchange_lag}


def eval_row(*, step: int, epoch: float, test_acc: float, test_loss: float, accounting, wall_time: float) -> dict:
    return {"step": step, "epoch": epoch, "test_acc": test_acc, "test_loss": test_loss, **_bytes(accounting),
            "comm_bytes_eval": accounting.mpi_bytes("eval"), "wall_time": wall_time}


def _bytes(accounting) -> dict:
    return {"comm_bytes": accounting.comm_bytes, "comm_bytes_float32": accounting.comm_bytes_float32,
            "comm_bytes_mpi": accounting.mpi_bytes("sync") + accounting.mpi_bytes("state")}


NO_EVAL = (math.nan, math.nan)
