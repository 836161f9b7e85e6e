"""The `fda` command: train, report, data, preflight.

Exit codes: 0 success; 1 a run failed (the log says status=failed); 2 bad input
(a setting, a file, a directory), reported once, the same on every rank, before training;
75 (RESUMABLE_EXIT) stopped by SIGTERM or SIGUSR1 after a checkpoint: `--resume` continues it.
"""
from __future__ import annotations

import argparse
import sys
import traceback

from fda.config import FIELD_NAMES, ConfigError, make_config
from fda.preemption import RESUMABLE_EXIT


def _say_error(message: str) -> None:
    from fda.comm import world_rank  # MPI starts only for the commands that need it
    if world_rank() == 0:
        print(f"fda: error: {message}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fda", description="Federated Dynamic Averaging over MPI.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on K workers (launch with mpiexec -n K)",
                       description="Train with FDA or a baseline. Settings: " + ", ".join(FIELD_NAMES))
    t.add_argument("--config", help="YAML file of settings (sections may group them)")
    t.add_argument("--out", help="run directory (default: runs/<strategy>-<dataset>-seed<seed>)")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its latest checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="setting overrides")

    r = sub.add_parser("report", help="plots and a comparison table from run logs")
    r.add_argument("runs", nargs="+", help="run directories or their metrics.h5")
    r.add_argument("--target-acc", type=float, default=None, help="accuracy to reach (default: from the runs)")
    r.add_argument("--out", default=None, help="where to write plots and tables (default: report/)")
    r.add_argument("--network", action="append", metavar="NAME|BANDWIDTH,LATENCY[:ALGORITHM]",
                   help="add a modelled time-to-target column for this network: datacenter (100 Gbit/s, 5 us), "
                        "ethernet (10 Gbit/s, 50 us), wan (100 Mbit/s, 20 ms) or e.g. 1Gbit/s,2ms; each Allreduce "
                        "priced by the algorithm MPICH selects, or by one forced with :ring, :recursive_doubling, "
                        ":reduce_scatter_allgather; repeatable")

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    info = dsub.add_parser("info", help="each worker's sample count and label histogram")
    info.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                      help="dataset, data_dir, partition, workers (K), seed and partition parameters")
    info.add_argument("--config")
    fetch = dsub.add_parser("fetch", help="download a dataset into data/ (needs internet)")
    fetch.add_argument("name")
    fetch.add_argument("--dest", default="data")
    ens = dsub.add_parser("ensure", help="make a dataset loadable: download it, or apt-get it (root, offline), "
                                         "or say how (what `make demo` runs)")
    ens.add_argument("name")
    ens.add_argument("--data-dir", default=None)

    pf = sub.add_parser("preflight", help="check MPI, devices, kernels, data and output before a job")
    pf.add_argument("--config")
    pf.add_argument("--out", default=None)
    pf.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    return p


def _resume_config(args):
    """The stored settings of the run in args.resume. Repeating them is fine; changing one is an
    error, except how it is executed (EXECUTION_KEYS). Without workers_per_rank given, it follows from the
    newest checkpoint's K and this job's ranks (e.g. 8 ranks x 1 resumed on 4 ranks: 2 per rank)."""
    from fda import checkpoint
    from fda.comm import world_rank, world_size
    from fda.config import EXECUTION_KEYS, load_file, parse_overrides

    stored = checkpoint.read_config(args.resume)
    cfg = stored
    if args.config or args.settings:
        cfg = make_config(stored.model_dump(), file=args.config, overrides=args.settings)
        changed = ", ".join(f"{k}: {v!r} -> {getattr(cfg, k)!r}" for k, v in stored.model_dump().items()
                            if getattr(cfg, k) != v and k not in EXECUTION_KEYS)
        if changed:
            raise ConfigError(f"the run in {args.resume} has a different configuration ({changed}); "
                              "resume it without changing settings (only these may change: "
                              + ", ".join(EXECUTION_KEYS) + ")")
    given = {**(load_file(args.config) if args.config else {}), **parse_overrides(args.settings)}
    meta = checkpoint.saved_layout(args.resume)
    ranks = world_size()
    if "workers_per_rank" not in given and meta and meta["workers"] % ranks == 0:
        per_rank = meta["workers"] // ranks
        if per_rank != cfg.workers_per_rank and world_rank() == 0:
            print(f"fda: resuming K={meta['workers']} workers on {ranks} ranks: workers_per_rank={per_rank} "
                  f"(the checkpoint was written by {meta['world_size']} x {meta['workers_per_rank']})",
                  file=sys.stderr, flush=True)
        cfg = cfg.model_copy(update={"workers_per_rank": per_rank})
    return cfg


def cmd_train(args) -> int:
    from fda import train
    from fda.comm import world_size
    from fda.launch import launch_problem
    from fda.synchronizer import CollectiveError, DivergedLocally

    if problem := launch_problem(world_size()):  # e.g. srun without --mpi: N separate 1-rank jobs
        return _say_error(problem) or 2
    try:
        if args.resume:
            if args.out and args.out != args.resume:
                raise ConfigError("give the run directory once: --resume DIR (without --out)")
            cfg = _resume_config(args)
            out = args.resume
        else:
            cfg = make_config(file=args.config, overrides=args.settings)
            out = args.out or f"runs/{cfg.strategy}-{cfg.dataset}-seed{cfg.seed}"
    except ConfigError as e:
        _say_error(str(e))
        return 2

    import fda
    from fda.comm import same_error_everywhere
    ctx = None
    try:  # e.g. no GPU on one node: every rank must stop, not only the one that found it
        with same_error_everywhere(ValueError):
            ctx = fda.init(seed=cfg.seed, device=cfg.device, threads=cfg.threads,
                           workers_per_rank=cfg.workers_per_rank, gpu_aware_mpi=cfg.gpu_aware_mpi)
    except ValueError as e:
        if ctx is not None:
            ctx.fda_comm.stop_watching()
        _say_error(str(e))
        return 2
    try:
        summary = train.run(cfg, out, resume=bool(args.resume), overwrite=args.overwrite, ctx=ctx,
                            progress=not args.no_progress)
    except ConfigError as e:
        ctx.fda_comm.stop_watching()
        _say_error(str(e))
        return 2
    except CollectiveError as e:
        ctx.fda_comm.stop_watching()
        _say_error(str(e))
        return 1
    except DivergedLocally as e:  # a schedule's rank saw it alone: end them all, no traceback
        ctx.fda_comm.fail(f"{type(e).__name__}: {e}")
        return 1
    except Exception as e:  # one rank failed: end them all, rank 0 marks the log failed
        traceback.print_exc()
        ctx.fda_comm.fail(f"{type(e).__name__}: {e}")
        return 1
    if summary.get("interrupted"):
        if ctx.is_root:
            print(f"fda: interrupted by a signal: stopped after step {summary['steps']} with a checkpoint; "
                  f"continue with: fda train --resume {out}  (exit code {RESUMABLE_EXIT})", file=sys.stderr, flush=True)
        ctx.fda_comm.stop_watching()
        return RESUMABLE_EXIT
    if ctx.is_root:
        if summary.get("already_complete"):
            print(f"fda: the run in {out} is already complete ({summary['steps']} steps); nothing to do",
                  flush=True)
        else:
            print(train.format_summary(summary), flush=True)
    ctx.fda_comm.stop_watching()
    return 0


def cmd_data(args) -> int:
    from fda.data import DatasetError, data_info, fetch

    if args.data_command == "ensure":  # exit 1 when it cannot be obtained, as python -m fda.data.ensure
        from fda.data.ensure import main as ensure_main
        return ensure_main([args.name] + ([args.data_dir] if args.data_dir else []))
    try:
        if args.data_command == "fetch":
            path = fetch(args.name, args.dest)
            print(f"fda: {args.name} is ready in {path}")
            return 0
        settings = dict(s.split("=", 1) for s in args.settings if "=" in s)
        workers = int(settings.pop("workers", settings.pop("K", 4)))
        cfg = make_config(file=args.config, overrides=[f"{k}={v}" for k, v in settings.items()])
        print(data_info(cfg.dataset, cfg.data_dir, workers, cfg.partition, cfg.seed,
                        noniid_fraction=cfg.noniid_fraction, label_value=cfg.label_value,
                        dirichlet_alpha=cfg.dirichlet_alpha))
        return 0
    except (ConfigError, DatasetError, ValueError) as e:
        print(f"fda: error: {e}", file=sys.stderr)
        return 2


def cmd_report(args) -> int:
    from fda import report
    return report.main(args)


def cmd_preflight(args) -> int:
    from fda import preflight
    return preflight.main(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE settings may come before or after options
    settings = [e for e in extra if "=" in e and not e.startswith("-")]
    unknown = [e for e in extra if e not in settings]
    if unknown or (settings and not hasattr(args, "settings")):
        parser.error("unrecognized arguments: " + " ".join(unknown or settings))
    if settings:
        args.settings = list(args.settings) + settings
    handler = {"train": cmd_train, "data": cmd_data, "report": cmd_report, "preflight": cmd_preflight}
    return handler[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
