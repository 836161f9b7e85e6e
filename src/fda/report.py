"""`fda report RUN [RUN ...] [--target-acc X] [--out DIR]`: plots and a comparison table.

The question it answers (docs/algorithm.md, "Byte accounting" and "The paper's experiments"): how many bytes and how many in-parallel
steps does each run need to reach a target test accuracy? Both are read at the first
evaluation whose accuracy is >= the target; bytes are the paper's accounting
(`comm_bytes`: 2*K*4d per sync + K*4|S| per check), GB = 1e9 bytes.

Default target, when --target-acc is not given: the best test accuracy of the
Synchronous run(s) minus 0.5 points (the lowest best, if there are several); without a
Synchronous run, the lowest of the runs' best accuracies (so every run can reach it).

With --network NAME|BANDWIDTH,LATENCY (repeatable; profiles datacenter, ethernet, wan): one more
column per network, each run's wall time to the target *modelled* on that network (measured
compute plus every step exchange and sync the log records, each priced by the Allreduce algorithm
MPICH selects for its size; see fda.netmodel), and report.md says which algorithm each message got.

Writes to --out (default report/): report.md, report.csv, acc_vs_gb.png,
acc_vs_steps.png and variance_<run>.png for each FDA run; prints the table.
A run still training is reported with the rows up to its last flush and labelled as running.
Exit codes: 0 ok, 2 bad input (missing file, crashed, interrupted or failed run, unreadable --network).
"""
from __future__ import annotations

import csv
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fda.config import resolve_setting
from fda.h5log import LOG_NAME, open_log, run_status
from fda.netmodel import Network, NetworkError, model_run, modelled_time_to_target, parse_network

SYNC_MARGIN = 0.005  # default target: Synchronous's best minus 0.5 points
FDA_KINDS = ("fda", "fda_opt", "kamp")


class ReportError(ValueError):
    """A run that cannot be reported (missing, unfinished, failed, unreadable)."""


@dataclass
class RunData:
    path: Path                 # the metrics.h5 file
    name: str                  # short label (the run directory's name)
    status: str
    config: dict
    attrs: dict
    steps: dict = field(default_factory=dict)   # STEP_FIELDS -> 1-D arrays
    evals: dict = field(default_factory=dict)   # EVAL_FIELDS -> 1-D arrays

    @property
    def label(self) -> str:
        """The name in tables and plots: a run still training says so, with its last logged step."""
        if self.status != "running":
            return self.name
        step = self.steps.get("step")
        return f"{self.name} (running, step {int(step[-1]) if step is not None and step.size else 0})"

    @property
    def kind(self) -> str:
        return str(self.config.get("strategy", ""))

    @property
    def dataset(self) -> str:
        return str(self.config.get("dataset", "?"))

    @property
    def workers(self) -> int:
        return int(self.attrs.get("workers", 0))


def _log_path(path: str | Path) -> Path:
    p = Path(path)
    return p / LOG_NAME if p.is_dir() else p


def load_run(path: str | Path, name: str | None = None) -> RunData:
    """Read one run's log. Raises ReportError for a missing file or an unfinished/failed run."""
    log = _log_path(path)
    if not log.exists():
        where = Path(path)
        if where.is_dir():
            raise ReportError(f"{where}: no {LOG_NAME} in this directory (not a run directory?)")
        raise ReportError(f"{where}: no such file or directory")
    try:
        f = open_log(log)
    except OSError as e:
        raise ReportError(f"{log}: not a readable HDF5 run log ({e})") from None
    with f:
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        status = run_status(f)
        if status == "crashed":
            raise ReportError(f"{log}: the run crashed (status=running, but its writer, process "
                              f"{attrs.get('writer_pid')} on {attrs.get('writer_host')}, is gone); "
                              "resume it (fda train --resume DIR) or report finished runs")
        if status == "interrupted":
            raise ReportError(f"{log}: the run was interrupted by a signal at step {attrs.get('stopped_at_step')} "
                              "(status=interrupted); resume it (fda train --resume DIR) or report finished runs")
        if status == "failed":
            raise ReportError(f"{log}: the run failed (status=failed): {attrs.get('error') or 'no error stored'}")
        if status not in ("completed", "running"):
            raise ReportError(f"{log}: unknown run status '{status}'")
        if "steps" not in f or "evals" not in f or "config" not in attrs:
            raise ReportError(f"{log}: not an fda run log (no steps/evals groups or config)")
        steps, evals = _complete_rows(f["steps"]), _complete_rows(f["evals"])
    try:
        config = json.loads(attrs["config"])
    except (TypeError, ValueError) as e:
        raise ReportError(f"{log}: its stored config is not valid JSON ({e})") from None
    run_dir = log.parent
    return RunData(path=log, name=name or run_dir.name, status=status, config=config, attrs=attrs,
                   steps=steps, evals=evals)


def _complete_rows(group) -> dict:
    """A table's columns cut to the rows every column holds (a running writer may be mid-flush)."""
    columns = {k: group[k][()] for k in group}
    n = min((len(v) for v in columns.values()), default=0)
    return {k: v[:n] for k, v in columns.items()}


# ------------------------------------------------------------------ measures
def best_accuracy(run: RunData) -> float:
    acc = run.evals.get("test_acc", np.array([]))
    return float(np.nanmax(acc)) if acc.size else math.nan


def final_accuracy(run: RunData) -> float:
    acc = run.evals.get("test_acc", np.array([]))
    return float(acc[-1]) if acc.size else math.nan


def first_reaching(run: RunData, target: float) -> int | None:
    """Index of the first evaluation with test accuracy >= target, or None."""
    hits = np.flatnonzero(run.evals["test_acc"] >= target) if run.evals.get("test_acc") is not None else []
    return int(hits[0]) if len(hits) else None


def steps_to_target(run: RunData, target: float) -> int | None:
    """In-parallel steps (steps per worker) at the first evaluation reaching the target."""
    i = first_reaching(run, target)
    return None if i is None else int(run.evals["step"][i])


def bytes_to_target(run: RunData, target: float) -> int | None:
    """Paper-accounting bytes communicated up to the first evaluation reaching the target."""
    i = first_reaching(run, target)
    return None if i is None else int(run.evals["comm_bytes"][i])


def gb_to_target(run: RunData, target: float) -> float | None:
    b = bytes_to_target(run, target)
    return None if b is None else b / 1e9


def synchronous_target(sync_runs: list[RunData], margin: float = SYNC_MARGIN) -> float:
    """The target the comparisons use: the lowest best test accuracy of the Synchronous runs (over
    seeds), minus `margin`."""
    return min(best_accuracy(r) for r in sync_runs) - margin


def default_target(runs: list[RunData]) -> tuple[float, str]:
    """The rule from the module docstring; returns (target, the rule in words)."""
    sync = [r for r in runs if r.kind == "synchronous"]
    if sync:
        best = min(best_accuracy(r) for r in sync)
        return synchronous_target(sync), (f"Synchronous's best test accuracy {best:.4f} minus "
                                          f"{SYNC_MARGIN * 100:g} points")
    best = min(best_accuracy(r) for r in runs)
    return best, "no Synchronous run: the lowest best test accuracy over the runs"


def strategy_label(run: RunData) -> str:
    c = {name: resolve_setting(run.config, name) for name in run.config}
    kind = run.kind
    theta = run.attrs.get("theta", c.get("theta"))
    outer = (f", outer {c['server_optimizer']} lr={c['server_lr']:g}"
             if c.get("server_optimizer", "none") != "none" else "")
    if kind == "synchronous":
        return "Synchronous" + outer
    if kind == "fedavg":
        return f"FedAvg tau={c.get('tau')}" + outer
    if kind == "diloco":
        return f"DiLoCo H={c.get('tau')}{outer}, inner {c.get('optimizer')} lr={c.get('lr'):g}"
    if kind == "fedopt":
        return (f"FedOpt server={c.get('server_optimizer')} lr={c.get('server_lr'):g}, "
                f"E={c.get('local_epochs')}, client {c.get('optimizer')} lr={c.get('lr'):g}")
    if kind == "fda":
        auto = " (auto)" if c.get("theta") == "auto" else ""
        every = f", every {c.get('check_every')}" if c.get("check_every", 1) != 1 else ""
        return f"FDA {c.get('monitor')} theta={float(theta):g}{auto}{every}{outer}"
    if kind == "fda_opt":
        return (f"FDA-Opt {c.get('monitor')} server={c.get('server_optimizer')} lr={c.get('server_lr'):g}, "
                f"max_epochs={c.get('max_epochs')}")
    if kind == "kamp":
        return f"Kamp theta={float(theta):g}" + outer
    return str(run.attrs.get("strategy", kind))


def network_column(net: Network) -> str:
    """The CSV column of a network's modelled time to target."""
    return "modelled_time_to_target_s_" + re.sub(r"[^A-Za-z0-9]+", "_", net.name).strip("_")


def comparison_table(runs: list[RunData], target: float, networks: tuple[Network, ...] = ()) -> list[dict]:
    """One row per run (dict of plain values; None where the target was not reached); with
    ``networks``, a modelled time to target per network."""
    rows = []
    for r in runs:
        s = r.steps
        wall = r.attrs.get("summary_wall_s")
        if wall is None:
            wall = float(r.evals["wall_time"][-1]) if r.evals["wall_time"].size else math.nan
        synced = s.get("synced", np.array([]))
        b = bytes_to_target(r, target)
        rows.append({
            "run": r.label,
            "strategy": r.kind,
            "params": strategy_label(r),
            "dataset": r.dataset,
            "partition": r.config.get("partition"),
            "K": r.workers,
            "steps_to_target": steps_to_target(r, target),
            "gb_to_target": None if b is None else b / 1e9,
            "steps": int(s["step"][-1]) if s.get("step") is not None and s["step"].size else 0,
            "syncs": int(np.sum(synced)),
            "total_gb": float(s["comm_bytes"][-1]) / 1e9 if s["comm_bytes"].size else 0.0,
            "final_acc": final_accuracy(r),
            "best_acc": best_accuracy(r),
            "wall_s": float(wall),
            "compute_s": float(np.nansum(s.get("time_compute", []))),
            "monitor_s": float(np.nansum(s.get("time_monitor", []))),
            "comm_s": float(np.nansum(s.get("time_comm", []))),
        })
        for net in networks:
            rows[-1][network_column(net)] = modelled_time_to_target(s, r.attrs, steps_to_target(r, target), net)
    return rows


TIME_NOTE = ("Times are sums of the per-step arrays: compute = the time between steps (local training, "
             "plus evaluation and checkpoints when they happen), monitor = the state kernel, comm = the "
             "state Allreduce and full syncs (including waiting for the slowest rank).")

COLUMNS = [("run", "run"), ("params", "strategy"), ("K", "K"), ("steps_to_target", "steps to target"),
           ("gb_to_target", "GB to target"), ("syncs", "syncs"), ("total_gb", "GB total"),
           ("final_acc", "final acc"), ("best_acc", "best acc"), ("wall_s", "wall s"),
           ("compute_s", "compute s"), ("monitor_s", "monitor s"), ("comm_s", "comm s")]


NETWORK_NOTE = ("Time to target on a network is modelled, not measured: this machine's median compute per "
                "step (one worker's share) for every step to the target, plus every step exchange and sync "
                "the log records, each an Allreduce among P = K workers (one per node) priced by the "
                "algorithm MPICH selects for its size (recursive doubling or reduce-scatter + allgather: "
                "rounds x latency + bytes / bandwidth); an exchange waited on L steps later only where it "
                "outlasts the compute in between (fda.netmodel; algorithms per message below the table). "
                "Networks: ")


def network_breakdown(runs: list[RunData], target: float, networks: tuple[Network, ...]) -> str:
    """Per network and run reaching the target: where the modelled time goes, and each kind of
    message with the algorithm it got (fda.netmodel.ModelledTime.describe)."""
    lines = []
    for net in networks:
        lines += [f"### {net.describe()}", ""]
        for r in runs:
            modelled = model_run(r.steps, r.attrs, steps_to_target(r, target), net)
            if modelled is not None:
                first, *messages = modelled.describe()
                lines += [f"- {r.label}: {first}"] + [f"  - {m}" for m in messages]
        lines.append("")
    return "\n".join(lines)


def _columns(networks: tuple[Network, ...]) -> list[tuple[str, str]]:
    return COLUMNS + [(network_column(n), f"time to target, {n.name} (modelled) s") for n in networks]


def _cell(key: str, v) -> str:
    if v is None:
        return "not reached"
    if key in ("gb_to_target", "total_gb"):
        return f"{v:.4f}"
    if key in ("final_acc", "best_acc"):
        return f"{v:.4f}"
    if key.endswith("_s") or key.startswith("modelled_time"):
        return f"{v:.1f}"
    return str(v)


def format_markdown(rows: list[dict], networks: tuple[Network, ...] = ()) -> str:
    columns = _columns(networks)
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(k, r[k]) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write_csv(rows: list[dict], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [k for k, _ in COLUMNS])
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})


# --------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _colors(plt, n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _finish(plt, fig, ax, path, target, title):
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.4f}")
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_ylabel("test accuracy")
    n = len(ax.get_legend_handles_labels()[1])
    ax.legend(fontsize=7, loc="lower right", ncol=2 if n > 8 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy_vs_gb(runs: list[RunData], path: str | Path, target: float | None = None,
                        title: str | None = None) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for r, color in zip(runs, _colors(plt, len(runs))):
        gb = r.evals["comm_bytes"] / 1e9
        keep = gb > 0  # a log axis has no 0; the first points of a run before any traffic are dropped
        ax.plot(gb[keep], r.evals["test_acc"][keep], marker=".", ms=3, lw=1.2, label=r.label, color=color)
    ax.set_xscale("log")
    ax.set_xlabel("communicated GB (paper accounting, log scale)")
    _finish(plt, fig, ax, path, target, title)


def plot_accuracy_vs_steps(runs: list[RunData], path: str | Path, target: float | None = None,
                           title: str | None = None) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for r, color in zip(runs, _colors(plt, len(runs))):
        ax.plot(r.evals["step"], r.evals["test_acc"], marker=".", ms=3, lw=1.2, label=r.label, color=color)
    ax.set_xlabel("in-parallel steps (steps per worker)")
    _finish(plt, fig, ax, path, target, title)


def plot_variance(run: RunData, path: str | Path) -> None:
    """H (the variance bound) over steps against theta, syncs marked, exact variance when audited."""
    plt = _pyplot()
    s = run.steps
    step, bound, theta = s["step"], s["var_bound"], s["theta"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ok = np.isfinite(bound)
    ax.plot(step[ok], bound[ok], lw=0.8, label="H (variance bound)")
    exact = s.get("var_exact")
    if exact is not None and np.isfinite(exact).any():
        e = np.isfinite(exact)
        ax.plot(step[e], exact[e], lw=0.8, label="exact variance (audit)")
    ax.plot(step, theta, color="black", lw=1, ls="--", label="theta")
    synced = s["synced"].astype(bool)
    if synced.any():
        y = np.where(np.isfinite(bound[synced]), bound[synced], theta[synced])
        ax.scatter(step[synced], y, marker="x", s=14, color="red", zorder=3,
                   label=f"sync ({int(synced.sum())})")
    ax.set_xlabel("step")
    ax.set_ylabel("model variance")
    ax.set_title(f"{run.label}: {strategy_label(run)}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------- CLI
def _unique_names(paths: list[str]) -> list[str]:
    """Run directories' names; the parent is added where two runs would share a name."""
    dirs = [_log_path(p).parent.resolve() for p in paths]
    names = [d.name for d in dirs]
    for i, n in enumerate(names):
        if names.count(n) > 1:
            names[i] = f"{dirs[i].parent.name}/{n}"
    return names


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def main(args) -> int:
    out = Path(args.out or "report")
    runs: list[RunData] = []
    try:
        networks = tuple(dict.fromkeys(parse_network(n) for n in (getattr(args, "network", None) or [])))
        for path, name in zip(args.runs, _unique_names(args.runs)):
            runs.append(load_run(path, name=name))
    except (ReportError, NetworkError) as e:
        print(f"fda report: error: {e}", file=sys.stderr)
        return 2
    for r in runs:
        if r.status == "running":
            print(f"fda report: {r.name} is still running: its rows up to the last flush "
                  f"(labelled {r.label!r})", file=sys.stderr)
    datasets = sorted({r.dataset for r in runs})
    if len(datasets) > 1:
        which = ", ".join(f"{r.name}={r.dataset}" for r in runs)
        print(f"fda report: warning: the runs use different datasets ({which}); their accuracies "
              "and the target are not comparable", file=sys.stderr)
    if args.target_acc is not None:
        target, rule = float(args.target_acc), "given with --target-acc"
    else:
        target, rule = default_target(runs)
    print(f"fda report: target accuracy {target:.4f} ({rule})")

    rows = comparison_table(runs, target, networks)
    table = format_markdown(rows, networks)
    net_note = (NETWORK_NOTE + "; ".join(n.describe() for n in networks) + ".") if networks else ""
    breakdown = ("\n## Modelled network time, message by message\n\n" + network_breakdown(runs, target, networks)
                 if networks else "")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(
            f"# fda report\n\nTarget accuracy: {target:.4f} ({rule}). Steps and GB (paper accounting) "
            f"at the first evaluation reaching it. {TIME_NOTE} {net_note}\n\n{table}\n{breakdown}\n"
            "![accuracy vs GB](acc_vs_gb.png)\n![accuracy vs steps](acc_vs_steps.png)\n")
        write_csv(rows, out / "report.csv")
        plot_accuracy_vs_gb(runs, out / "acc_vs_gb.png", target=target)
        plot_accuracy_vs_steps(runs, out / "acc_vs_steps.png", target=target)
        for r in runs:
            if r.kind in FDA_KINDS:
                plot_variance(r, out / f"variance_{_safe(r.name)}.png")
    except OSError as e:
        print(f"fda report: error: cannot write to {out}: {e}", file=sys.stderr)
        return 2
    print(table)
    print(f"fda report: wrote {out}/report.md, report.csv and the plots")
    return 0
