"""The comparison: bytes, steps and modelled network time to a target accuracy, per method,
on several tasks and seeds (docs/algorithm.md, "Byte accounting", "The paper's experiments" and "Time on a network"; bench/configs/compare.yaml).

    .venv/bin/python bench/compare.py --jobs 2     # the full grid
    .venv/bin/python bench/compare.py --quick      # the quick preset (about 20 minutes)
    .venv/bin/python bench/compare.py --plan       # list the runs, train nothing
    .venv/bin/python bench/compare.py --report-only

One command, resumable: a run whose log is completed with the same configuration is skipped,
so an interrupted grid continues where it stopped; a run that was cut off continues from its
newest checkpoint (written on SIGTERM / SIGUSR1, and every checkpoint_every steps if set), or
starts over if it has none. Every run is
`fda train` with the task's `common` settings, then its method family's settings, each
"{name}" placeholder expanded over the task's grid of that name, once per seed. Run logs go
to bench/runs/ (git-ignored); tables, plots and the scorecard to bench/results/NAME.*, NAME
being the grid file's (compare.yaml: compare.*; the quick preset: compare-quick.*). A hand-written "## Analysis" section at the end of the .md is
kept across reruns.

Families that need features this checkout lacks (their `needs:` in the YAML) stop the script
before anything trains, with the reason; --skip-unavailable leaves them out instead.

Target, per task: the lowest over seeds of Synchronous's best test accuracy within the
budget, minus `target_below_synchronous` (so Synchronous reaches it on every seed). A method
(one configuration) reaches the target only if it does on every seed; the headline gives the
median and the range over seeds of its steps, GB (the paper's accounting) and modelled time
to the target.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import threading
import itertools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fda.config import Config, ConfigError, make_config  # noqa: E402
from fda.h5log import open_log  # noqa: E402

ANALYSIS_MARK = "## Analysis"
FDA_FAMILIES_KIND = "fda"   # families whose `kind` is fda compete for "FDA's best run" (float32 syncs)


class PlanError(ValueError):
    """The grid cannot run as configured (a bad setting, or a feature this checkout lacks)."""


@dataclass(frozen=True, eq=False)
class Job:
    task: str
    family: str
    config: str        # the family and its grid values, e.g. fedavg-tau8
    seed: int
    settings: dict
    cost: float = 0.0  # estimated seconds on one quiet core (the task's seconds_per_epoch x epochs)

    @property
    def path(self) -> tuple[str, str, str]:
        return self.task, self.config, f"seed{self.seed}"


# ------------------------------------------------------------------------------ the plan
def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_spec(spec: dict, quick: bool) -> dict:
    """The spec with the quick preset's overrides merged in (tasks, families, seeds)."""
    if not quick:
        return spec
    q = spec.get("quick") or {}
    out = _merge(spec, {k: v for k, v in q.items() if k != "tasks"})
    tasks = {}
    for name, over in (q.get("tasks") or {}).items():
        tasks[name] = _merge(spec["tasks"][name], over)
        if "families" in over:  # a list replaces, it does not merge
            tasks[name]["families"] = over["families"]
    out["tasks"] = tasks
    return out


def _keys_with_placeholders(settings: dict) -> list[str]:
    return [k for k, v in settings.items() if isinstance(v, str) and v.startswith("{") and v.endswith("}")]


def _placeholders(settings: dict) -> list[str]:
    return list(dict.fromkeys(settings[k][1:-1] for k in _keys_with_placeholders(settings)))


def _config_name(family: str, values: dict) -> str:
    """e.g. fedavg-tau8, fda-sketch-theta0.5 (a grid's name without its prefix: sketch_theta -> theta)."""
    return family + "".join(f"-{k.split('_')[-1]}{v:g}" if isinstance(v, (int, float)) else f"-{k.split('_')[-1]}{v}"
                            for k, v in values.items())


def expand(task: str, tdef: dict, families: dict, seeds: list[int]) -> list[Job]:
    """Every run of one task: each family, each combination of its grid values, each seed."""
    jobs = []
    for family in tdef.get("families") or list(families):
        if family not in families:
            raise PlanError(f"task {task}: unknown family {family!r} (families: {', '.join(families)})")
        fam = {k: v for k, v in families[family].items() if k not in ("needs", "kind", "label")}
        names = _placeholders(fam)
        missing = [n for n in names if n not in (tdef.get("grids") or {})]
        if missing:
            raise PlanError(f"task {task}: family {family} needs the grid(s) {', '.join(missing)}")
        grids = [v if isinstance(v, list) else [v] for v in (tdef["grids"][n] for n in names)]
        for combo in itertools.product(*grids):
            values = dict(zip(names, combo))
            filled = {k: values[v[1:-1]] if k in _keys_with_placeholders(fam) else v for k, v in fam.items()}
            settings = {**tdef["common"], **filled}
            config = _config_name(family, values)
            cost = float(tdef.get("seconds_per_epoch", 0)) * float(settings.get("epochs", 1))
            jobs += [Job(task, family, config, seed, {**settings, "seed": seed}, cost) for seed in seeds]
    return jobs


def plan(spec: dict, quick: bool, skip_unavailable: bool = False) -> tuple[list[Job], dict[str, str]]:
    """All runs and the families left out. Synchronous first (the targets depend on it), then the
    longest first, so that with --jobs N no long run starts last while the other cores idle."""
    spec = resolve_spec(spec, quick)
    families, seeds = spec["families"], list(spec["seeds"])
    jobs = [j for task, tdef in spec["tasks"].items() for j in expand(task, tdef, families, seeds)]
    unavailable: dict[str, str] = {}
    for job in jobs:
        try:
            make_config(job.settings)
        except ConfigError as e:
            needs = families[job.family].get("needs")
            if not needs:
                raise PlanError(f"{job.task}/{job.config}: {e}") from None
            unavailable.setdefault(job.family, f"needs {needs}: {e}")
    if unavailable and not skip_unavailable:
        lines = "\n".join(f"  {fam}: {why}" for fam, why in unavailable.items())
        raise PlanError("the grid needs features this checkout does not have:\n" + lines
                        + "\nMerge them, or pass --skip-unavailable to run the other families.")
    jobs = [j for j in jobs if j.family not in unavailable]
    return sorted(jobs, key=lambda j: (j.family != "synchronous", -j.cost)), unavailable


# ---------------------------------------------------------------------------- training
def is_done(out: Path, settings: dict) -> bool:
    """A completed run with these settings. A setting that a later version of fda added (absent from
    the stored config) counts as the same when it is at its default, so new options do not make a
    long grid start over."""
    try:
        with open_log(out) as f:
            if str(f.attrs.get("status", "")) != "completed":
                return False
            stored = json.loads(f.attrs["config"])
    except (FileNotFoundError, OSError, KeyError):
        return False
    return same_settings(stored, settings)


def same_settings(stored: dict, settings: dict) -> bool:
    wanted = json.loads(make_config(settings).to_json())
    defaults = json.loads(Config().to_json())
    return set(stored) <= set(wanted) and all(
        stored[k] == v if k in stored else v == defaults.get(k) for k, v in wanted.items())


def can_resume(out: Path, settings: dict) -> bool:
    """An unfinished run with these settings that left a checkpoint (cut off by SIGTERM / SIGUSR1,
    or a crash after a checkpoint_every checkpoint): `fda train --resume` continues it."""
    from fda import checkpoint
    try:
        if checkpoint.saved_layout(out) is None:
            return False
        stored = json.loads(checkpoint.read_config(out).to_json())
    except (ConfigError, OSError):
        return False
    return same_settings(stored, settings)


def sync_target(spec: dict, task: str, jobs: list[Job], runs_dir: Path) -> float | None:
    """The task's target: the lowest over seeds of Synchronous's best accuracy, minus
    target_below_synchronous; None until Synchronous has completed on every seed."""
    from fda import report
    sync = [j for j in jobs if j.task == task and j.family == "synchronous"]
    if not sync or not all(is_done(runs_dir.joinpath(*j.path), j.settings) for j in sync):
        return None
    runs = [report.load_run(runs_dir.joinpath(*j.path)) for j in sync]
    return report.synchronous_target(runs, float(spec.get("target_below_synchronous", report.SYNC_MARGIN)))


def with_target(job: Job, target: float) -> Job:
    """The run stopping at the target (stop_at_target: every family but Synchronous, whose curve
    sets the target and shows the plateau)."""
    return dataclasses.replace(job, settings={**job.settings, "target_acc": target})


def stops_at_target(spec: dict, job: Job) -> bool:
    return bool(spec.get("stop_at_target")) and job.family != "synchronous"


def train_one(out: Path, settings: dict, fda_bin: Path) -> tuple[int, float]:
    """Train one run, continuing it from its checkpoint when an earlier call was cut off."""
    resume = can_resume(out, settings)
    if resume:
        cmd = [str(fda_bin), "train", "--resume", str(out), "--no-progress"]
    else:
        out.mkdir(parents=True, exist_ok=True)
        cfg_file = out / "run.yaml"
        cfg_file.write_text(yaml.safe_dump(settings, sort_keys=True))
        cmd = [str(fda_bin), "train", "--config", str(cfg_file), "--out", str(out), "--overwrite", "--no-progress"]
    t = time.perf_counter()
    with open(out / "train.log", "a" if resume else "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    return rc, time.perf_counter() - t


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch
        gpu = "no GPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)
        tv = torch.__version__
    except Exception:  # pragma: no cover
        gpu, tv = "unknown GPU", "?"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, Linux {platform.release()}, torch {tv}"


def commit() -> str:
    """HEAD, marked if the code differs from it; bench/results/ (the reports themselves) does not count,
    so regenerating several reports in a row records the same clean commit."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)bench/results"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return sha + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ------------------------------------------------------------------------------ analysis
@dataclass
class Summary:
    """One configuration of one task over its seeds."""
    task: str
    family: str
    config: str
    label: str
    kind: str
    seeds: int
    reached: int                 # seeds that reached the target
    steps: list[float]           # per reaching seed
    gb: list[float]
    times: dict[str, list[float]]  # network -> modelled seconds, per reaching seed
    best_acc: list[float]        # per seed (all seeds)

    @property
    def reached_all(self) -> bool:
        return self.seeds > 0 and self.reached == self.seeds

    def median(self, what: str, net: str | None = None) -> float | None:
        values = self.times.get(net, []) if what == "time" else getattr(self, what)
        return statistics.median(values) if values and self.reached_all else None


def _spread(values: list[float], fmt: str) -> str:
    if not values:
        return ""
    med = statistics.median(values)
    return f"{med:{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]" if len(values) > 1 else f"{med:{fmt}}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}x"


def summarise(task: str, config_rows: dict[str, list[dict]], jobs: list[Job], families: dict,
              networks) -> list[Summary]:
    from fda.report import network_column
    out = []
    for config, rows in config_rows.items():
        job = next(j for j in jobs if j.task == task and j.config == config)
        fam = families[job.family]
        hit = [r for r in rows if r["steps_to_target"] is not None]
        out.append(Summary(
            task=task, family=job.family, config=config, label=fam.get("label", job.family),
            kind=fam.get("kind", job.family), seeds=len(rows), reached=len(hit),
            steps=[r["steps_to_target"] for r in hit], gb=[r["gb_to_target"] for r in hit],
            times={n.name: [r[network_column(n)] for r in hit if r.get(network_column(n)) is not None]
                   for n in networks},
            best_acc=[r["best_acc"] for r in rows]))
    return out


def best_of(summaries: list[Summary], member) -> Summary | None:
    """The configuration with the fewest median GB to the target among those reaching it on every seed."""
    ok = [s for s in summaries if member(s) and s.reached_all]
    return min(ok, key=lambda s: (s.median("gb"), s.median("steps")), default=None)


HEADLINE_HEAD = ["| task | method | best configuration | seeds reaching | steps to target | GB to target | "
                 "GB less than Sync | steps vs Sync | WAN time to target (modelled) s | best acc |",
                 "|---|---|---|---|---|---|---|---|---|---|"]


def headline(task: str, summaries: list[Summary]) -> list[str]:
    """One row per family: its best configuration (median [min-max] over seeds)."""
    sync = best_of(summaries, lambda s: s.family == "synchronous")
    rows = []
    for family in dict.fromkeys(s.family for s in summaries):
        group = [s for s in summaries if s.family == family]
        best = best_of(group, lambda s: True)
        if best is None:
            most = max(group, key=lambda s: (s.reached, statistics.median(s.best_acc)))
            rows.append(f"| {task} | {most.label} | {most.config} | {most.reached}/{most.seeds} | not reached "
                        f"on every seed | | | | | {_spread(most.best_acc, '.4f')} |")
            continue
        gbx = ratio(sync.median("gb"), best.median("gb")) if sync else None
        stx = ratio(best.median("steps"), sync.median("steps")) if sync else None
        rows.append(f"| {task} | {best.label} | {best.config} | {best.reached}/{best.seeds} | "
                    f"{_spread(best.steps, '.0f')} | {_spread(best.gb, '.4f')} | {fmt_ratio(gbx)} | "
                    f"{'n/a' if stx is None else f'{stx:.2f}x'} | {_spread(best.times.get('wan', []), '.1f')} | "
                    f"{_spread(best.best_acc, '.4f')} |")
    return rows


def scorecard(task: str, summaries: list[Summary]) -> list[str]:
    """The paper's claims and this issue's goals, each confirmed or refuted with the numbers (medians)."""
    sync = best_of(summaries, lambda s: s.family == "synchronous")
    fda = best_of(summaries, lambda s: s.kind == FDA_FAMILIES_KIND)
    fedopt = best_of(summaries, lambda s: s.kind == "fedopt")
    fedavg = best_of(summaries, lambda s: s.family == "fedavg")
    diloco = best_of(summaries, lambda s: s.family == "diloco")
    auto = best_of(summaries, lambda s: s.family == "fda-auto")
    rows = [f"| claim or goal | {task}: numbers (medians over seeds) | verdict |", "|---|---|---|"]

    def add(claim, value, ok):
        rows.append(f"| {claim} | {value} | {'n/a' if ok is None else 'confirmed' if ok else 'refuted'} |")

    if sync is None or fda is None:
        add("FDA against Synchronous", "Synchronous or every FDA configuration missed the target on a seed", None)
        return rows
    gb_sync = ratio(sync.median("gb"), fda.median("gb"))
    steps = ratio(fda.median("steps"), sync.median("steps"))
    base = f"FDA's best: {fda.config}, {fda.median('gb'):.4f} GB, {fda.median('steps'):.0f} steps"
    add("paper: >= 30x fewer GB than Synchronous", f"{base}; Synchronous {sync.median('gb'):.4f} GB: "
        f"{fmt_ratio(gb_sync)}", gb_sync >= 30)
    add("goal: >= 50x fewer GB than Synchronous", fmt_ratio(gb_sync), gb_sync >= 50)
    if fedopt:
        r = ratio(fedopt.median("gb"), fda.median("gb"))
        add("paper: >= 3x fewer GB than the best FedOpt", f"{fedopt.config} {fedopt.median('gb'):.4f} GB: "
            f"{fmt_ratio(r)}", r >= 3)
    else:
        add("paper: >= 3x fewer GB than the best FedOpt", "no FedOpt configuration reached the target on every "
            "seed", None)
    add("paper: similar steps to Synchronous (goal <= 1.2x)", f"{steps:.2f}x", steps <= 1.2)
    for name, other in (("FedAvg", fedavg), ("DiLoCo", diloco)):
        r = ratio(other.median("gb"), fda.median("gb")) if other else None
        add(f">= 3x fewer GB than the best tuned {name}",
            f"{other.config} {other.median('gb'):.4f} GB: {fmt_ratio(r)}" if other
            else f"no {name} configuration reached the target on every seed", None if r is None else r >= 3)
    rivals = [s for s in (fedavg, diloco) if s]
    if rivals:
        best = min(rivals, key=lambda s: s.median("gb"))
        r = ratio(best.median("gb"), fda.median("gb"))
        add("goal: >= 3x fewer GB than the best of FedAvg and DiLoCo", f"{best.config}: {fmt_ratio(r)}", r >= 3)
    if auto:
        r = ratio(auto.median("gb"), fda.median("gb"))
        add("goal: theta=auto within 2x of FDA's best theta (GB)", f"{auto.median('gb'):.4f} GB: {r:.2f}x", r <= 2)
    elif not any(s.family == "fda-auto" for s in summaries):
        add("goal: theta=auto within 2x of FDA's best theta (GB)", "theta=auto has no completed run", None)
    else:
        add("goal: theta=auto within 2x of FDA's best theta (GB)", "theta=auto missed the target on a seed", False)
    compressed = best_of(summaries, lambda s: s.kind == "fda-compressed")
    if compressed:
        rivals_gb = min((s.median("gb") for s in (fedavg, diloco) if s), default=None)
        r = ratio(rivals_gb, compressed.median("gb"))
        add("beyond the paper: FDA with 8-bit syncs (the baselines' syncs stay float32), >= 3x fewer GB than "
            "the best of FedAvg and DiLoCo", f"{compressed.config} {compressed.median('gb'):.4f} GB "
            f"({fmt_ratio(ratio(sync.median('gb'), compressed.median('gb')))} fewer than Synchronous): "
            f"{fmt_ratio(r)}", None if r is None else r >= 3)
    wan_sync, wan_fda = sync.median("time", "wan"), fda.median("time", "wan")
    r = ratio(wan_sync, wan_fda)
    add("goal: on the WAN profile, FDA's time to target >= 10x shorter than Synchronous's",
        f"{wan_fda:.1f} s vs {wan_sync:.1f} s (modelled): {fmt_ratio(r)}" if r else "n/a",
        None if r is None else r >= 10)
    return rows


def plateau(sync_runs, target: float, below: float) -> str:
    """Has Synchronous plateaued? Its best accuracy's gain over the last quarter of the budget, against
    the target's margin below it: at most that, and the target is not a race to the budget's end."""
    import numpy as np
    gains, reach = [], []
    for r in sync_runs:
        acc, step = r.evals["test_acc"], r.evals["step"]
        cut = step <= 0.75 * step[-1]
        if cut.any():
            gains.append(float(np.max(acc)) - float(np.max(acc[cut])))
            reach.append(float(step[np.argmax(acc >= target)] / step[-1]))
    if not gains:
        return "Synchronous's curve: too few evaluations to judge a plateau."
    gain = statistics.median(gains)
    verdict = "plateaued" if gain <= below else "NOT plateaued"
    return (f"Plateau check: over the last quarter of the budget Synchronous's best accuracy rose by "
            f"{gain * 100:.2f} points (median over seeds; max {max(gains) * 100:.2f}), against the target's "
            f"margin of {below * 100:g}: **{verdict}**. Synchronous reaches the target at "
            f"{min(reach):.0%}-{max(reach):.0%} of the budget.")


def write_report(spec: dict, jobs: list[Job], unavailable: dict, runs_dir: Path, results: Path, command: str,
                 quick: bool, stem: str = "compare", config_name: str = "compare.yaml") -> Path:
    from fda import report
    from fda.netmodel import parse_network

    spec = resolve_spec(spec, quick)
    families = spec["families"]
    networks = tuple(parse_network(n) for n in spec.get("networks", ["datacenter", "ethernet", "wan"]))
    below = float(spec.get("target_below_synchronous", report.SYNC_MARGIN))
    results.mkdir(parents=True, exist_ok=True)
    plots = results / stem
    plots.mkdir(exist_ok=True)
    md_path = results / f"{stem}.md"
    kept = ""
    if md_path.exists() and ANALYSIS_MARK in md_path.read_text():
        text = md_path.read_text()
        kept = text[text.index(ANALYSIS_MARK):]

    md = [f"# Comparison: communication, steps and modelled time to a target accuracy"
          f"{' (QUICK PRESET: a smoke test of the pipeline, not the evidence)' if quick else ''}", "",
          f"- Machine: {machine()}",
          f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
          f"- Commit: {commit()}",
          f"- Command: `{command}`",
          f"- Seeds: {', '.join(map(str, spec['seeds']))}. Settings of every run: `bench/configs/{config_name}`"
          f"{' (its quick preset)' if quick else ''}.",
          f"- Target rule, per task: the lowest over seeds of Synchronous's best test accuracy within the budget, "
          f"minus {below * 100:g} points. A configuration reaches it only if it does on every seed. GB = the "
          "paper's accounting (docs/algorithm.md, \"Byte accounting\"), steps = in-parallel steps, both at the first evaluation at or "
          "above the target; figures are the median [min-max] over seeds; each family's best configuration is "
          "its fewest median GB among those reaching the target on every seed.",
          *([f"- stop_at_target: every run but Synchronous's stops at the first evaluation reaching the target "
             "(`target_acc`, as MLPerf Training): its \"best acc\" is the accuracy it stopped at, and its curves "
             "end there."] if spec.get("stop_at_target") else []),
          f"- {report.NETWORK_NOTE}{'; '.join(n.describe() for n in networks)}.", ""]
    if unavailable:
        md += ["Families left out (--skip-unavailable): " + "; ".join(f"{f} ({why})" for f, why in
                                                                      unavailable.items()), ""]
    head_rows, score_md, csv_rows, summary_rows = [], [], [], []
    for task, tdef in spec["tasks"].items():
        title = tdef.get("title", task)
        tjobs = [j for j in jobs if j.task == task]
        runs, missing = {}, []
        for j in tjobs:
            try:
                runs[j] = report.load_run(runs_dir.joinpath(*j.path), name=f"{j.config}/seed{j.seed}")
            except report.ReportError as e:
                missing.append(str(e))
        md += [f"## {task}: {title}", ""]
        sync_runs = [r for j, r in runs.items() if j.family == "synchronous"]
        sync_seeds = {j.seed for j in runs if j.family == "synchronous"}
        if not sync_runs or sync_seeds != set(spec["seeds"]):
            md += ["Synchronous has not finished on every seed: no target.", ""]
            continue
        target = report.synchronous_target(sync_runs, below)
        md += [f"Target accuracy: **{target:.4f}**.", "", plateau(sync_runs, target, below), ""]
        config_rows: dict[str, list[dict]] = {}
        for j, r in runs.items():
            row = report.comparison_table([r], target, networks)[0]
            config_rows.setdefault(j.config, []).append(row)
            csv_rows.append({"task": task, "family": j.family, "config": j.config, "seed": j.seed,
                             "target_acc": target, **row})
        summaries = summarise(task, config_rows, tjobs, families, networks)
        for s in summaries:
            summary_rows.append({
                "task": task, "family": s.family, "config": s.config, "seeds": s.seeds,
                "seeds_reaching": s.reached, "target_acc": target,
                "steps_median": s.median("steps"), "steps_min": min(s.steps, default=None),
                "steps_max": max(s.steps, default=None), "gb_median": s.median("gb"),
                "gb_min": min(s.gb, default=None), "gb_max": max(s.gb, default=None),
                **{f"modelled_time_to_target_s_{n.name}_median": s.median("time", n.name) for n in networks},
                "best_acc_median": statistics.median(s.best_acc)})
        head_rows += headline(task, summaries)
        score_md += [f"### {task}", "", *scorecard(task, summaries), ""]
        md += ["| configuration | seeds reaching | steps to target | GB to target | "
               + " | ".join(f"time to target, {n.name} (modelled) s" for n in networks) + " | best acc |",
               "|---|---|---|---|" + "---|" * len(networks) + "---|"]
        for s in summaries:
            md.append(f"| {s.config} | {s.reached}/{s.seeds} | {_spread(s.steps, '.0f')} | {_spread(s.gb, '.4f')} | "
                      + " | ".join(_spread(s.times[n.name], '.1f') for n in networks)
                      + f" | {_spread(s.best_acc, '.4f')} |")
        md.append("")
        if missing:
            md += ["Runs not included:", ""] + [f"- {m}" for m in missing] + [""]
        bests = [best_of(summaries, lambda s, f=f: s.family == f) for f in dict.fromkeys(s.family for s in summaries)]
        best_configs = {s.config for s in bests if s is not None}
        shown = [r for j, r in runs.items() if j.seed == min(spec["seeds"]) and j.config in best_configs]
        report.plot_accuracy_vs_gb(shown, plots / f"{task}_acc_vs_gb.png", target=target,
                                   title=f"{title}: each family's best, seed {min(spec['seeds'])}")
        report.plot_accuracy_vs_steps(shown, plots / f"{task}_acc_vs_steps.png", target=target,
                                      title=f"{title}: each family's best, seed {min(spec['seeds'])}")
        report.plot_accuracy_vs_steps(sync_runs, plots / f"{task}_synchronous.png", target=target,
                                      title=f"{title}: Synchronous, every seed (plateau)")
        md += [f"![accuracy vs GB]({stem}/{task}_acc_vs_gb.png) ![accuracy vs steps]({stem}/{task}_acc_vs_steps.png) "
               f"![Synchronous]({stem}/{task}_synchronous.png)", ""]
    if csv_rows:
        _write_csv(results / f"{stem}.csv", csv_rows)
        _write_csv(results / f"{stem}-summary.csv", summary_rows)
    first = next((i for i, line in enumerate(md) if line.startswith("## ")), len(md))
    md[first:first] = (["## Headline", "", *HEADLINE_HEAD, *head_rows, ""] if head_rows else []) + (
        ["## Scorecard", "", *score_md] if score_md else [])
    text = "\n".join(md) + "\n" + ("\n" + kept if kept else "")
    md_path.write_text(text)
    return md_path


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)


def train_grid(spec: dict, jobs: list[Job], runs_dir: Path, fda_bin: Path, n_jobs: int) -> int:
    """Train every run not yet done, n_jobs at a time; returns the number that failed. With
    stop_at_target, a task's other runs wait for its Synchronous runs (first in the list): their
    target_acc comes from those."""
    known = threading.Condition()
    pending_sync = {t: sum(j.family == "synchronous" for j in jobs if j.task == t) for t in {j.task for j in jobs}}
    targets: dict[str, float | None] = {t: None for t, n in pending_sync.items() if n == 0}

    def target(task: str) -> float | None:
        with known:
            known.wait_for(lambda: task in targets)
            return targets[task]

    def sync_finished(task: str) -> None:
        with known:
            pending_sync[task] -= 1
            if pending_sync[task] == 0:
                try:
                    targets[task] = sync_target(spec, task, jobs, runs_dir)
                except Exception as e:  # an unreadable log: no target, and no thread left waiting
                    print(f"compare: {task}: no target ({e})", flush=True)
                    targets[task] = None
                known.notify_all()

    def work(job: Job) -> int:
        out = runs_dir.joinpath(*job.path)
        try:
            if stops_at_target(spec, job):
                goal = target(job.task)
                if goal is None:
                    print(f"compare: {'/'.join(job.path)}: skipped (Synchronous failed: no target)", flush=True)
                    return 1
                job = with_target(job, goal)
            if is_done(out, job.settings):
                return 0
            rc, secs = train_one(out, job.settings, fda_bin)
            status = "ok" if rc == 0 else f"FAILED (exit {rc}, see {out / 'train.log'})"
            print(f"compare: {'/'.join(job.path)}: {status} in {secs:.0f} s", flush=True)
            return rc
        finally:
            if job.family == "synchronous":
                sync_finished(job.task)

    print(f"compare: {len(jobs)} runs (logs in {runs_dir}); those already completed are skipped", flush=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        failures = sum(1 for rc in pool.map(work, jobs) if rc != 0)
    print(f"compare: grid done in {time.perf_counter() - t0:.0f} s", flush=True)
    return failures


# -------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the quick preset (a smoke test, about 20 minutes)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each uses one core)")
    p.add_argument("--config", default=str(ROOT / "bench/configs/compare.yaml"))
    p.add_argument("--runs-dir", default=None, help="run logs (default bench/runs/compare[-quick])")
    p.add_argument("--results", default=str(ROOT / "bench/results"))
    p.add_argument("--plan", action="store_true", help="list the runs and exit")
    p.add_argument("--report-only", action="store_true", help="no training: tables and plots from the logs")
    p.add_argument("--skip-unavailable", action="store_true",
                   help="leave out families whose features this checkout lacks, instead of stopping")
    args = p.parse_args(argv)

    spec = yaml.safe_load(Path(args.config).read_text())
    try:
        jobs, unavailable = plan(spec, args.quick, args.skip_unavailable)
    except PlanError as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2
    stem = Path(args.config).stem + ("-quick" if args.quick else "")  # compare.yaml -> compare[-quick].md
    runs_dir = Path(args.runs_dir or ROOT / "bench/runs" / stem)
    if args.plan:
        for task in dict.fromkeys(j.task for j in jobs):
            configs = list(dict.fromkeys(j.config for j in jobs if j.task == task))
            print(f"{task}: {len(configs)} configurations x seeds = {sum(j.task == task for j in jobs)} runs")
            for c in configs:
                print(f"  {c}")
        spec_r = resolve_spec(spec, args.quick)
        targets = {t: sync_target(spec_r, t, jobs, runs_dir) for t in dict.fromkeys(j.task for j in jobs)}
        todo = [j for j in jobs if not is_done(runs_dir.joinpath(*j.path), j.settings if not stops_at_target(
            spec_r, j) or targets[j.task] is None else with_target(j, targets[j.task]).settings)
                or (stops_at_target(spec_r, j) and targets[j.task] is None)]
        core_s = sum(j.cost for j in todo)
        print(f"compare: {len(jobs)} runs, {len(jobs) - len(todo)} already done; the rest is about "
              f"{core_s / 3600:.1f} core-hours, {core_s / 3600 / max(1, args.jobs):.1f} h with --jobs "
              f"{max(1, args.jobs)} (the tasks' seconds_per_epoch, quiet machine)")
        return 0
    fda_bin = Path(sys.executable).parent / "fda"
    command = " ".join([".venv/bin/python", "bench/compare.py"] + [shlex.quote(a) for a in (argv or sys.argv[1:])])

    if not args.report_only:
        failures = train_grid(resolve_spec(spec, args.quick), jobs, runs_dir, fda_bin, max(1, args.jobs))
        if failures:
            print(f"compare: {failures} run(s) failed or could not start; the report covers the others", flush=True)

    md = write_report(spec, jobs, unavailable, runs_dir, Path(args.results), command, args.quick, stem,
                      Path(args.config).name)
    print(md.read_text())
    print(f"compare: wrote {md}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
