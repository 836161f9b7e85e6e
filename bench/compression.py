"""Compressed syncs (sync_compression=int16|int8) against float32 syncs at the same theta:
steps and GB to a target accuracy, and the bytes the syncs' MPI calls moved.

    .venv/bin/python bench/compression.py                 # every group of bench/configs/compression.yaml
    .venv/bin/python bench/compression.py --jobs 2        # two runs at a time
    .venv/bin/python bench/compression.py --groups lenet5-iid-t0.25

Each run is `mpiexec -n <ranks> fda train` with the config's `common` + its group's settings +
sync_compression=<width>. Resumable like bench/compare.py: a completed run with the same
configuration is skipped. Logs go to bench/runs/compression/ (git-ignored); the table to
bench/results/compression.md (a hand-written "## Analysis" section at its end is kept).

Per group the target is the best test accuracy of the float32 run minus `target_below_float32`
(0.5 points); for every width: the first evaluation at or above it (steps, GB in the paper's
accounting at the width really sent, and what float32 syncs would have cost), and the
requirement of issue 14: int8 within 1.1x float32's steps at >= 3x fewer GB.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from compare import ANALYSIS_MARK, commit, is_done, machine  # noqa: E402
from fda.config import make_config  # noqa: E402
from fda.report import ReportError, best_accuracy, final_accuracy, first_reaching, load_run  # noqa: E402

RUN_KEYS = ("ranks", "widths")  # group keys that are not settings


def plan(spec: dict, only: list[str] | None) -> list[tuple[str, str, int, dict]]:
    jobs = []
    for group, settings in spec["groups"].items():
        if only and group not in only:
            continue
        ranks = int(settings.get("ranks", 1))
        widths = settings.get("widths", spec["widths"])
        base = {**spec["common"], **{k: v for k, v in settings.items() if k not in RUN_KEYS}}
        jobs += [(group, width, ranks, {**base, "sync_compression": width}) for width in widths]
    return jobs


def train_one(out: Path, ranks: int, settings: dict) -> tuple[int, float]:
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out / "run.yaml"
    cfg_file.write_text(yaml.safe_dump(settings, sort_keys=True))
    cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), sys.executable, "-m", "fda", "train",
           "--config", str(cfg_file), "--out", str(out), "--overwrite", "--no-progress"]
    t = time.perf_counter()
    with open(out / "train.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    return rc, time.perf_counter() - t


def summarise(run, target: float) -> dict:
    ev, st = run.evals, run.steps
    hit = first_reaching(run, target)
    syncs = int(st["synced"].sum())
    return {
        "syncs": syncs, "best_acc": best_accuracy(run), "final_acc": final_accuracy(run),
        "steps_to_target": None if hit is None else int(ev["step"][hit]),
        "gb_to_target": None if hit is None else float(ev["comm_bytes"][hit]) / 1e9,
        "gb_float32_to_target": None if hit is None else float(ev["comm_bytes_float32"][hit]) / 1e9,
        "gb_total": float(st["comm_bytes"][-1]) / 1e9,
        "wall_s": float(run.attrs.get("summary_wall_s", np.nan)),
    }


def report(spec: dict, jobs, runs_dir: Path, results: Path, command: str) -> Path:
    below = float(spec.get("target_below_float32", 0.005))
    md_path = results / "compression.md"
    kept = ""
    if md_path.exists() and ANALYSIS_MARK in md_path.read_text():
        text = md_path.read_text()
        kept = text[text.index(ANALYSIS_MARK):]
    md = ["# Compressed syncs: steps and GB to a target accuracy, float32 vs int16 / int8", "",
          f"- Machine: {machine()} (shared with other work while measured)",
          f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
          f"- Commit: {commit()}",
          f"- Command: `{command}`; settings: `bench/configs/compression.yaml`",
          f"- Target per group: the best test accuracy of the float32 run minus {below * 100:g} points. "
          "GB: the paper's accounting at the width really sent (`comm_bytes`: 2·K·(d·b/8 + 4·ceil(d/4096)) "
          "per sync + K·4|S| per check), read at the first evaluation at or above the target; "
          "\"as float32\": `comm_bytes_float32`, what the same syncs cost at 32 bits.",
          "- Requirement (issue 14): int8 reaches the target within 1.1x float32's steps with >= 3x fewer GB.", ""]
    rows = []
    for group in dict.fromkeys(g for g, _, _, _ in jobs):
        members = [(w, r, s) for g, w, r, s in jobs if g == group]
        runs = {}
        for width, _, _ in members:
            try:
                runs[width] = load_run(runs_dir / group / width)
            except ReportError as e:
                md += [f"- {group}/{width}: not included ({e})"]
        if "none" not in runs:
            md += [f"## {group}", "", "The float32 run has not finished: no target.", ""]
            continue
        target = best_accuracy(runs["none"]) - below
        first = next(iter(runs.values()))
        cfg = first.config
        md += [f"## {group}", "",
               f"{cfg['model']}, {cfg['dataset']} {cfg['partition']}, K = {first.attrs['workers']} "
               f"({first.attrs['world_size']} rank(s) x {first.attrs['workers_per_rank']}), FDA {cfg['monitor']} "
               f"theta = {cfg['theta']}, d = {int(first.attrs['num_params']):,}. "
               f"Target accuracy: **{target:.4f}**.", "",
               "| sync | syncs | steps to target | GB to target | as float32 | GB float32 run / GB | "
               "steps / float32 run's | best acc | final acc | wall s | int8 requirement |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        ref = summarise(runs["none"], target)
        for width, run in runs.items():
            s = summarise(run, target)
            gb_x = (ref["gb_to_target"] / s["gb_to_target"]
                    if s["gb_to_target"] and ref["gb_to_target"] else None)
            st_x = (s["steps_to_target"] / ref["steps_to_target"]
                    if s["steps_to_target"] and ref["steps_to_target"] else None)
            met = ""
            if width == "int8":
                met = "met" if (gb_x is not None and st_x is not None and gb_x >= 3 and st_x <= 1.1) else "NOT met"
            fmt = (lambda x, f: "not reached" if x is None else format(x, f))
            md.append(f"| {width} | {s['syncs']} | {fmt(s['steps_to_target'], 'd')} | {fmt(s['gb_to_target'], '.4f')} | "
                      f"{fmt(s['gb_float32_to_target'], '.4f')} | {fmt(gb_x, '.2f')}{'x' if gb_x else ''} | "
                      f"{fmt(st_x, '.2f')}{'x' if st_x else ''} | {s['best_acc']:.4f} | {s['final_acc']:.4f} | "
                      f"{s['wall_s']:.0f} | {met} |")
            rows.append({"group": group, "width": width, "target": target, **s, "gb_ratio": gb_x,
                         "steps_ratio": st_x})
        md.append("")
    (results / "compression.json").write_text(json.dumps(rows, indent=1))
    text = "\n".join(md) + "\n"
    if kept:
        text += "\n" + kept
    md_path.write_text(text)
    return md_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--groups", default=None, help="comma-separated group names (default: all)")
    p.add_argument("--config", default=str(ROOT / "bench/configs/compression.yaml"))
    p.add_argument("--runs-dir", default=str(ROOT / "bench/runs/compression"))
    p.add_argument("--results", default=str(ROOT / "bench/results"))
    p.add_argument("--report-only", action="store_true", help="no training: the table from the logs")
    args = p.parse_args(argv)

    spec = yaml.safe_load(Path(args.config).read_text())
    jobs = plan(spec, args.groups.split(",") if args.groups else None)
    for _, _, _, settings in jobs:
        make_config(settings)  # a bad setting fails now, not an hour in
    runs_dir = Path(args.runs_dir)
    command = " ".join([".venv/bin/python", "bench/compression.py"] + [shlex.quote(a) for a in (argv or sys.argv[1:])])
    if not args.report_only:
        todo = [j for j in jobs if not is_done(runs_dir / j[0] / j[1], j[3])]
        print(f"compression: {len(jobs)} runs, {len(todo)} to train (logs in {runs_dir})", flush=True)

        def work(job):
            group, width, ranks, settings = job
            rc, secs = train_one(runs_dir / group / width, ranks, settings)
            print(f"compression: {group}/{width}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {secs:.0f} s",
                  flush=True)
            return rc

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(work, todo))
    Path(args.results).mkdir(parents=True, exist_ok=True)
    md = report(spec, jobs, runs_dir, Path(args.results), command)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
