"""The paper-style comparison: bytes and steps to a target accuracy, per sync strategy.

    .venv/bin/python bench/compare.py            # the full grid (bench/configs/compare.yaml)
    .venv/bin/python bench/compare.py --quick    # a few-minute smoke version
    .venv/bin/python bench/compare.py --jobs 2   # two runs at a time

Resumable: a run whose log is completed with the same configuration is skipped, so an
interrupted grid continues where it stopped (unfinished runs start over). Run logs go
to bench/runs/ (git-ignored); the table, plots and findings to bench/results/compare.*.
A hand-written "## Analysis" section at the end of compare.md is kept across reruns.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fda.config import make_config  # noqa: E402
from fda.h5log import open_log  # noqa: E402

ANALYSIS_MARK = "## Analysis"


def plan(spec: dict, quick: bool) -> list[tuple[str, str, dict]]:
    common = dict(spec["common"])
    partitions = spec["partitions"]
    runs = spec["runs"]
    if quick:
        q = spec.get("quick", {})
        common.update(q.get("common", {}))
        partitions = {p: partitions[p] for p in q.get("partitions", partitions)}
        runs = {r: runs[r] for r in q.get("runs", runs)}
    # run-major order: both partitions of a strategy before the next strategy
    return [(part, name, {**common, **part_settings, **settings})
            for name, settings in runs.items() for part, part_settings in partitions.items()]


def is_done(out: Path, settings: dict) -> bool:
    try:
        with open_log(out) as f:
            if str(f.attrs.get("status", "")) != "completed":
                return False
            stored = json.loads(f.attrs["config"])
    except (FileNotFoundError, OSError, KeyError):
        return False
    return stored == json.loads(make_config(settings).to_json())


def train_one(out: Path, settings: dict, fda_bin: Path) -> tuple[int, float]:
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out / "run.yaml"
    cfg_file.write_text(yaml.safe_dump(settings, sort_keys=True))
    cmd = [str(fda_bin), "train", "--config", str(cfg_file), "--out", str(out), "--overwrite", "--no-progress"]
    t = time.perf_counter()
    with open(out / "train.log", "w") as log:
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
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}x"


def findings(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """Compare every FDA run with Synchronous, the best FedAvg and FedAdam (the paper's goal)."""
    def reached(r):
        return r["steps_to_target"] is not None

    sync = next((r for r in rows if r["strategy"] == "synchronous"), None)
    fedavg = [r for r in rows if r["strategy"] == "fedavg" and reached(r)]
    best_fedavg = min(fedavg, key=lambda r: r["gb_to_target"], default=None)
    fedopt = [r for r in rows if r["strategy"] == "fedopt"]
    fedopt_reached = [r for r in fedopt if reached(r)]
    best_fedopt = min(fedopt_reached, key=lambda r: r["gb_to_target"], default=None)
    lines, ratios = [], []
    if sync is None or not reached(sync):
        return ["Synchronous did not reach the target: no ratios."], ratios
    if best_fedavg:
        lines.append(f"Best FedAvg: {best_fedavg['run']} ({best_fedavg['gb_to_target']:.4f} GB, "
                     f"{best_fedavg['steps_to_target']} steps).")
    else:
        lines.append("No FedAvg run reached the target.")
    if best_fedopt:
        lines.append(f"FedAdam: {best_fedopt['run']} ({best_fedopt['gb_to_target']:.4f} GB, "
                     f"{best_fedopt['steps_to_target']} steps).")
    elif fedopt:
        lines.append(f"FedAdam did not reach the target within the budget (it sent "
                     f"{max(r['total_gb'] for r in fedopt):.4f} GB in all; best accuracy "
                     f"{max(r['best_acc'] for r in fedopt):.4f}).")
    for r in rows:
        if r["strategy"] not in ("fda", "fda_opt"):
            continue
        entry = {"run": r["run"], "reached": reached(r)}
        if reached(r):
            entry["gb_vs_sync"] = ratio(sync["gb_to_target"], r["gb_to_target"])
            entry["gb_vs_fedavg"] = ratio(best_fedavg["gb_to_target"], r["gb_to_target"]) if best_fedavg else None
            entry["gb_vs_fedadam"] = ratio(best_fedopt["gb_to_target"], r["gb_to_target"]) if best_fedopt else None
            entry["steps_vs_sync"] = ratio(r["steps_to_target"], sync["steps_to_target"])
            entry["goal"] = (entry["gb_vs_sync"] >= 30
                             and (entry["gb_vs_fedavg"] is None or entry["gb_vs_fedavg"] >= 3)
                             and (entry["gb_vs_fedadam"] is None or entry["gb_vs_fedadam"] >= 3)
                             and entry["steps_vs_sync"] <= 1.5)
        ratios.append(entry)
    return lines, ratios


def headline(part: str, rows: list[dict]) -> list[str]:
    """One line per family: Synchronous, and the run of each other family with the fewest GB to target."""
    sync = next((r for r in rows if r["strategy"] == "synchronous"), None)
    families = [("Synchronous", lambda r: r["strategy"] == "synchronous"),
                ("FedAvg (best tau)", lambda r: r["strategy"] == "fedavg"),
                ("FedAdam", lambda r: r["strategy"] == "fedopt"),
                ("FDA Linear (best theta)", lambda r: r["strategy"] == "fda" and "linear" in r["params"]),
                ("FDA Sketch (best theta)", lambda r: r["strategy"] == "fda" and "sketch" in r["params"]),
                ("FDA-Opt", lambda r: r["strategy"] == "fda_opt")]
    out = []
    for label, member in families:
        group = [r for r in rows if member(r)]
        if not group:
            continue
        reached = [r for r in group if r["steps_to_target"] is not None]
        if reached:
            r = min(reached, key=lambda r: (r["gb_to_target"], r["steps_to_target"]))
            gbx = ratio(sync["gb_to_target"], r["gb_to_target"]) if sync and sync["steps_to_target"] else None
            stx = ratio(r["steps_to_target"], sync["steps_to_target"]) if sync and sync["steps_to_target"] else None
            out.append(f"| {part} | {label} | {r['params']} | {r['steps_to_target']} | {r['gb_to_target']:.4f} | "
                       f"{fmt_ratio(gbx)} | {'n/a' if stx is None else f'{stx:.2f}x'} | {r['best_acc']:.4f} |")
        else:
            r = max(group, key=lambda r: r["best_acc"])
            out.append(f"| {part} | {label} | {r['params']} | not reached | not reached ({r['total_gb']:.4f} in all) "
                       f"| | | {r['best_acc']:.4f} |")
    return out


HEADLINE_HEAD = ["| data | strategy | run (fewest GB to target) | steps to target | GB to target | "
                 "GB less than Sync | steps vs Sync | best acc |", "|---|---|---|---|---|---|---|---|"]


def ratio_table(ratios: list[dict]) -> str:
    out = ["| FDA run | reached | GB: Sync / FDA | GB: best FedAvg / FDA | GB: FedAdam / FDA | "
           "steps: FDA / Sync | goal met |", "|---|---|---|---|---|---|---|"]
    for e in ratios:
        if not e["reached"]:
            out.append(f"| {e['run']} | no | | | | | no |")
            continue
        fedadam = fmt_ratio(e["gb_vs_fedadam"]) if e["gb_vs_fedadam"] is not None else "FedAdam not reached"
        out.append(f"| {e['run']} | yes | {fmt_ratio(e['gb_vs_sync'])} | {fmt_ratio(e['gb_vs_fedavg'])} | "
                   f"{fedadam} | {e['steps_vs_sync']:.2f}x | {'yes' if e['goal'] else 'no'} |")
    return "\n".join(out)


def write_report(spec: dict, jobs, runs_dir: Path, results: Path, command: str, quick: bool) -> Path:
    from fda import report

    results.mkdir(parents=True, exist_ok=True)
    stem = "compare-quick" if quick else "compare"
    plots = results / stem
    plots.mkdir(exist_ok=True)
    md_path = results / f"{stem}.md"
    kept = ""
    if md_path.exists():
        text = md_path.read_text()
        if ANALYSIS_MARK in text:
            kept = text[text.index(ANALYSIS_MARK):]

    common = spec["common"] if not quick else {**spec["common"], **spec.get("quick", {}).get("common", {})}
    below = float(spec.get("target_below_synchronous", 0.005))
    md = [f"# Comparison: communication and steps to a target accuracy{' (quick)' if quick else ''}", "",
          f"- Machine: {machine()}",
          f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
          f"- Commit: {commit()}",
          f"- Command: `{command}`",
          f"- Setup: LeNet-5 on Fashion-MNIST, K = 5 workers (1 rank x workers_per_rank=5), batch "
          f"{common['batch_size']} per worker, local {common['optimizer']} lr {common['lr']}, "
          f"{common['epochs']} epochs, evaluation every {common['eval_every']} steps, seed {common['seed']}. "
          f"Settings of every run: `bench/configs/compare.yaml`.",
          f"- Target rule: the best test accuracy Synchronous reaches within the budget minus "
          f"{below * 100:g} points. GB = the paper's accounting (FDA.md section 5: 2*K*4d per sync + "
          f"K*4|S| per check), read at the first evaluation at or above the target.",
          f"- {report.TIME_NOTE} With K=5 workers on one rank there is no real network: comm is local "
          "averaging, and wall times suffer from other jobs sharing the 2 cores.", ""]
    csv_rows, head_rows, head_rows2 = [], [], []
    below2 = spec.get("secondary_target_below_synchronous")
    for part in dict.fromkeys(p for p, _, _ in jobs):
        paths = [runs_dir / p / n for p, n, _ in jobs if p == part]
        paths.sort(key=lambda path: (list(spec["runs"]).index(path.name)))
        runs, missing = [], []
        for path in paths:
            try:
                runs.append(report.load_run(path))
            except report.ReportError as e:
                missing.append(str(e))
        md += [f"## {part}", ""]
        sync = [r for r in runs if r.kind == "synchronous"]
        if not sync:
            md += ["Synchronous has not finished: no target.", ""] + [f"- {m}" for m in missing] + [""]
            continue
        target = max(report.best_accuracy(r) for r in sync) - below
        rows = report.comparison_table(runs, target)
        for r in rows:
            csv_rows.append({"partition": part, "target_acc": target, **r})
        md += [f"Target accuracy: **{target:.4f}** (Synchronous's best {target + below:.4f} minus "
               f"{below * 100:g} points).", "", report.format_markdown(rows), ""]
        head_rows += headline(part, rows)
        if below2 is not None:
            head_rows2 += headline(part, report.comparison_table(runs, target + below - float(below2)))
        lines, ratios = findings(rows)
        md += [*lines, "", ratio_table(ratios), ""]
        if missing:
            md += ["Runs not included:", ""] + [f"- {m}" for m in missing] + [""]
        report.plot_accuracy_vs_gb(runs, plots / f"{part}_acc_vs_gb.png", target=target,
                                   title=f"LeNet-5 / Fashion-MNIST, {part}, K=5")
        report.plot_accuracy_vs_steps(runs, plots / f"{part}_acc_vs_steps.png", target=target,
                                      title=f"LeNet-5 / Fashion-MNIST, {part}, K=5")
        md += [f"![accuracy vs GB]({stem}/{part}_acc_vs_gb.png) "
               f"![accuracy vs steps]({stem}/{part}_acc_vs_steps.png)", ""]
        for r in runs:
            if r.kind in ("fda", "fda_opt", "kamp"):
                png = plots / f"{part}_variance_{r.name}.png"
                report.plot_variance(r, png)
        md += [f"Variance bound H against theta for every FDA run: `{stem}/{part}_variance_*.png`.", ""]
    if csv_rows:
        with open(results / f"{stem}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
            w.writeheader()
            w.writerows(csv_rows)
    if head_rows:
        md[md.index(f"## {next(p for p, _, _ in jobs)}"):md.index(f"## {next(p for p, _, _ in jobs)}")] = [
            "## Headline", "", *HEADLINE_HEAD, *head_rows, ""] + ([
            f"Robustness: the same with a lower target, Synchronous's best minus {float(below2) * 100:g} points "
            "(a target nearer the end of the budget penalises any method that is only a little slower):", "",
            *HEADLINE_HEAD, *head_rows2, ""] if head_rows2 else [])
    text = "\n".join(md) + "\n"
    if kept:
        text += "\n" + kept
    md_path.write_text(text)
    return md_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the short smoke version of the grid")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each uses one core)")
    p.add_argument("--config", default=str(ROOT / "bench/configs/compare.yaml"))
    p.add_argument("--runs-dir", default=None, help="run logs (default bench/runs/compare[-quick])")
    p.add_argument("--results", default=str(ROOT / "bench/results"))
    p.add_argument("--report-only", action="store_true", help="no training: tables and plots from the logs")
    args = p.parse_args(argv)

    spec = yaml.safe_load(Path(args.config).read_text())
    jobs = plan(spec, args.quick)
    runs_dir = Path(args.runs_dir or ROOT / "bench/runs" / ("compare-quick" if args.quick else "compare"))
    for _, _, settings in jobs:
        make_config(settings)  # a bad setting fails now, not an hour in
    fda_bin = Path(sys.executable).parent / "fda"
    command = " ".join([".venv/bin/python", "bench/compare.py"] + [shlex.quote(a) for a in (argv or sys.argv[1:])])

    if not args.report_only:
        todo = [(part, name, s) for part, name, s in jobs if not is_done(runs_dir / part / name, s)]
        print(f"compare: {len(jobs)} runs, {len(jobs) - len(todo)} already done, {len(todo)} to train "
              f"(logs in {runs_dir})", flush=True)

        def work(job):
            part, name, settings = job
            rc, secs = train_one(runs_dir / part / name, settings, fda_bin)
            status = "ok" if rc == 0 else f"FAILED (exit {rc}, see {runs_dir / part / name / 'train.log'})"
            print(f"compare: {part}/{name}: {status} in {secs:.0f} s", flush=True)
            return rc

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            failures = sum(1 for rc in pool.map(work, todo) if rc != 0)
        if failures:
            print(f"compare: {failures} run(s) failed; the report covers the others", flush=True)

    md = write_report(spec, jobs, runs_dir, Path(args.results), command, args.quick)
    print(md.read_text())
    print(f"compare: wrote {md}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
