"""The run's HDF5 log (`DIR/metrics.h5`), written by rank 0 only.

Schema (names are an interface: `fda report` and users' tools read them):
  root attributes: config (JSON), world_size, workers, num_params, status
      (running -> completed | failed), error, fda_version, state_kernel, strategy,
      theta, steps_per_epoch
  /steps: equal-length 1-D datasets, one row per training step (see STEP_FIELDS)
  /evals: one row per evaluation (see EVAL_FIELDS)

Crash safety: the file is written in HDF5 SWMR mode. Rows are buffered in memory and
appended at every evaluation and every `flush_every` steps; SWMR orders the metadata
writes so that after a SIGKILL at any moment the file opens (read it with
`open_log`) and holds every row up to the last flush. SWMR makes each dataset
consistent on its own, not the group: a kill in the middle of a flush can leave some
fields one flush longer than others, so `open_log` then returns an in-memory copy cut to
the rows every field has. Attributes cannot change under SWMR, so the final status is
written after the SWMR session is closed, on a copy that then replaces the file
(a kill during close leaves the complete running-status log, never a half-written one).
"""
from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import h5py
import numpy as np

STEP_FIELDS = {
    "step": np.int64, "epoch": np.float64, "loss": np.float64, "var_bound": np.float64,
    "var_exact": np.float64, "theta": np.float64, "synced": np.int8,
    "comm_bytes": np.int64, "comm_bytes_mpi": np.int64,
    "time_compute": np.float64, "time_monitor": np.float64, "time_comm": np.float64,
}
EVAL_FIELDS = {
    "step": np.int64, "epoch": np.float64, "test_acc": np.float64, "test_loss": np.float64,
    "comm_bytes": np.int64, "comm_bytes_mpi": np.int64, "comm_bytes_eval": np.int64,
    "wall_time": np.float64,
}
LOG_NAME = "metrics.h5"


def open_log(path: str | Path) -> h5py.File:
    """Open a log for reading, also one whose writer is still running or was killed."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no log at {path}")
    try:
        f = h5py.File(path, "r", libver="latest", swmr=True)
    except OSError:
        f = h5py.File(path, "r")
    rows = _committed_rows(f)
    return f if rows is None else _truncated_copy(f, rows)


def _committed_rows(f: h5py.File) -> dict | None:
    """Rows per group that every field holds, or None when the fields already agree."""
    rows, ragged = {}, False
    for group in ("steps", "evals"):
        if group not in f:
            continue
        lengths = {f[group][name].shape[0] for name in f[group]}
        rows[group] = min(lengths) if lengths else 0
        ragged |= len(lengths) > 1
    return rows if ragged else None


def _truncated_copy(f: h5py.File, rows: dict) -> h5py.File:
    """An in-memory (never written) copy of a log of a killed writer, cut to its committed rows."""
    import uuid
    mem = h5py.File(f"fda-log-{uuid.uuid4().hex}.h5", "w", driver="core", backing_store=False)
    for k, v in f.attrs.items():
        mem.attrs[k] = v
    for group, n in rows.items():
        g = mem.create_group(group)
        for name in f[group]:
            g.create_dataset(name, data=f[group][name][:n], maxshape=(None,))
    f.close()
    return mem


class H5Log:
    def __init__(self, path: str | Path, attrs: dict, *, flush_every: int = 200,
                 resume_step: int | None = None):
        self.path = Path(path)
        self.flush_every = flush_every
        self._lock = threading.Lock()
        self._steps: list[dict] = []
        self._evals: list[dict] = []
        self._closed = False
        if resume_step is None:
            self._create(attrs)
        else:
            self._rewrite_up_to(resume_step, attrs)
        self._open_swmr()

    # ------------------------------------------------------------------ files
    @staticmethod
    def _make_groups(f: h5py.File) -> None:
        for group, fields in (("steps", STEP_FIELDS), ("evals", EVAL_FIELDS)):
            g = f.create_group(group)
            for name, dtype in fields.items():
                g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,))

    @staticmethod
    def _set_attrs(f: h5py.File, attrs: dict) -> None:
        for k, v in attrs.items():
            f.attrs[k] = v if not isinstance(v, dict) else json.dumps(v)
        f.attrs["status"] = "running"
        f.attrs["error"] = ""

    def _create(self, attrs: dict) -> None:
        tmp = self.path.with_suffix(".h5.tmp")
        with h5py.File(tmp, "w", libver="latest") as f:
            self._set_attrs(f, attrs)
            self._make_groups(f)
        os.replace(tmp, self.path)

    def _rewrite_up_to(self, step: int, attrs: dict) -> None:
        """Resume: keep the rows up to `step` (the checkpoint), drop later ones, atomically."""
        tmp = self.path.with_suffix(".h5.tmp")
        with open_log(self.path) as old, h5py.File(tmp, "w", libver="latest") as new:
            for k, v in old.attrs.items():
                new.attrs[k] = v
            self._set_attrs(new, attrs)
            self._make_groups(new)
            for group in ("steps", "evals"):
                keep = int(np.count_nonzero(old[group]["step"][()] <= step))
                for name in new[group]:
                    data = old[group][name][:keep] if name in old[group] else np.zeros(keep)
                    new[group][name].resize((keep,))
                    new[group][name][:] = data
        os.replace(tmp, self.path)

    def _open_swmr(self) -> None:
        self._f = h5py.File(self.path, "r+", libver="latest")
        self._f.swmr_mode = True

    # ------------------------------------------------------------------- rows
    def append_step(self, row: dict) -> None:
        with self._lock:
            self._steps.append(row)
            if len(self._steps) >= self.flush_every:
                self._flush_locked()

    def append_eval(self, row: dict) -> None:
        with self._lock:
            self._evals.append(row)
            self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._closed:
            return
        for group, fields, rows in (("steps", STEP_FIELDS, self._steps), ("evals", EVAL_FIELDS, self._evals)):
            if not rows:
                continue
            g = self._f[group]
            n0 = g["step"].shape[0]
            for name, dtype in fields.items():
                ds = g[name]
                ds.resize((n0 + len(rows),))
                ds[n0:] = np.array([r.get(name, np.nan) for r in rows], dtype=dtype)
                ds.flush()
            rows.clear()
        self._f.flush()

    def close(self, status: str = "completed", error: str = "", extra_attrs: dict | None = None) -> None:
        with self._lock:
            if self._closed:
                return
            self._flush_locked()
            self._f.close()
            self._closed = True
            tmp = self.path.with_suffix(".h5.closing")
            shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "r+", libver="latest") as f:
                f.attrs["status"] = status
                f.attrs["error"] = error
                for k, v in (extra_attrs or {}).items():
                    f.attrs[k] = v
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
