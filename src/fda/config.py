"""Every setting of a run, typed and range-checked before anything starts.

One `Config` model serves the CLI (`fda train KEY=VALUE ...`, YAML files) and the
library API (`fda.Synchronizer(..., **settings)`), so both accept the same names and
reject bad values with the same messages.
"""
from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fda.data import PARTITION_SCHEMES, dataset_names
from fda.models import MODEL_NAMES
from fda.monitor import monitor_names
from fda.outer import OUTER_OPTIMIZERS
from fda.strategies.registry import ADAPTIVE_CHECKS, AUTO_THETA, LAGGED_CHECKS, STRATEGY_DEFAULTS, strategy_names

# The names a setting accepts are the registries' own: adding a strategy, monitor, outer optimizer,
# model or dataset to its registry makes it a valid setting here.
STRATEGIES = strategy_names()
MONITORS = monitor_names()
MODELS = MODEL_NAMES
DATASETS = dataset_names()
PARTITIONS = PARTITION_SCHEMES
# The generic defaults of the settings whose default (None) a strategy may choose (STRATEGY_DEFAULTS).
DEFAULTS = {"tau": 1, "server_optimizer": "none", "server_lr": 0.316, "optimizer": "adam", "weight_decay": 0.0}
THETA_RULES = {"hpc": 2.7e-5, "balanced": 3.9e-5, "fl": 4.9e-5}  # docs/algorithm.md, "theta=auto": theta = c * d
# How a run is executed, not what it computes: these may change when it resumes (K = ranks x
# workers_per_rank must not; fda.checkpoint checks it).
EXECUTION_KEYS = ("workers_per_rank", "threads", "device", "gpu_aware_mpi", "stall_timeout", "checkpoint_every",
                  "log_flush_every")


class ConfigError(ValueError):
    """A bad setting. Raised identically on every rank, before training starts."""


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    # model and data
    model: Literal[MODELS] = "lenet5"  # type: ignore[valid-type]
    dataset: Literal[DATASETS] = "fashion-mnist"  # type: ignore[valid-type]
    data_dir: str | None = None
    partition: Literal[PARTITIONS] = "iid"  # type: ignore[valid-type]
    noniid_fraction: float = Field(0.6, ge=0.0, le=1.0)
    label_value: int = Field(0, ge=0)
    dirichlet_alpha: float = Field(1.0, gt=0.0)

    # local training
    # "epoch" means one pass of a worker over its own shard: `epochs` is the run's budget in such
    # passes, `local_epochs` (fedopt) and `max_epochs` (fda_opt) the length of a round, and the log's
    # `epoch` column (Synchronizer.epoch) the passes done so far
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] | None = None  # None: see STRATEGY_DEFAULTS
    lr: float = Field(1e-3, gt=0.0)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decays to 0 over the budget
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float | None = Field(None, ge=0.0)
    seed: int = Field(0, ge=0)

    # synchronisation
    strategy: Literal[STRATEGIES] = "fda"  # type: ignore[valid-type]
    monitor: Literal[MONITORS] = "sketch"  # type: ignore[valid-type]
    theta: Union[float, Literal["auto"]] = 1.0
    theta_profile: Literal["hpc", "balanced", "fl"] = "balanced"
    tau: int | None = Field(None, ge=1)
    check_every: Union[int, Literal["auto"]] = 1
    # check_every=auto: the next check after margin x the steps H needs to reach theta if it grows
    # quadratically, and at most check_max_interval steps after the last
    check_margin: float = Field(0.5, gt=0.0, le=1.0)
    check_max_interval: int = Field(50, ge=1)
    # pipelined checks: the state of step t travels while steps t+1 .. t+check_lag compute, and the
    # decision on it is taken at step t+check_lag (0: at step t, waiting for it)
    check_lag: int = Field(0, ge=0, le=1000)
    sketch_depth: int = Field(5, ge=1)
    sketch_width: int = Field(250, ge=1)
    sketch_correction: Literal["delta", "paper"] = "delta"
    sketch_delta: float = 0.01  # failure probability per check (sketch_correction=delta)
    server_optimizer: Literal[OUTER_OPTIMIZERS] | None = None  # type: ignore[valid-type]
    server_lr: float | None = Field(None, gt=0.0)
    server_momentum: float = Field(0.9, ge=0.0, lt=1.0)
    local_epochs: int = Field(1, ge=1)
    max_epochs: int = Field(10, ge=1)
    sync_optimizer_state: Literal["keep", "reset", "average"] = "keep"
    sync_compression: Literal["none", "int16", "int8"] = "none"
    # overlapped syncs: a sync's model Allreduce travels while steps t+1 .. t+sync_delay compute,
    # and lands at step t+sync_delay with each worker's progress since t added (0: at step t)
    sync_delay: int = Field(0, ge=0, le=1000)
    workers_per_rank: int = Field(1, ge=1)

    # evaluation, logging, checkpoints
    eval_every: int | None = Field(None, ge=1)
    # time-to-accuracy runs (as MLPerf Training): stop at the first evaluation whose test accuracy
    # reaches this; the log records the step (summary_reached_target_step)
    target_acc: float | None = Field(None, gt=0.0, le=1.0)
    audit: bool = False
    checkpoint_every: int | None = Field(None, ge=1)
    log_flush_every: int = Field(200, ge=1)

    # execution
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)
    gpu_aware_mpi: Literal["auto", "true", "false"] = "auto"

    # a rank that does not reach a collective within this many seconds is named and the job ends
    stall_timeout: float | None = Field(None, gt=0)

    # testing aids: on `fail_rank` at step `fail_at_step`, raise an error (fail_mode=raise),
    # hang in the data loader (fail_mode=stall) or report a NaN loss (fail_mode=nan)
    fail_at_step: int | None = Field(None, ge=1)
    fail_rank: int = Field(0, ge=0)
    fail_mode: Literal["raise", "stall", "nan"] = "raise"
    # testing aid: every rank sleeps a random 0..step_jitter_ms ms at each step (seeded by seed,
    # rank and step): uneven compute, as on a shared or heterogeneous cluster
    step_jitter_ms: float = Field(0.0, ge=0.0, le=60000.0)

    @field_validator("theta", mode="before")
    @classmethod
    def _theta(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        try:
            value = float(v)
        except (TypeError, ValueError):
            raise ValueError("must be a non-negative number or 'auto'") from None
        if math.isnan(value) or value < 0 or math.isinf(value):
            raise ValueError("must be a finite number >= 0 or 'auto'")
        return value

    @field_validator("check_every", mode="before")
    @classmethod
    def _check_every(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        try:
            value = int(v)
        except (TypeError, ValueError):
            raise ValueError("must be a whole number of steps >= 1 or 'auto'") from None
        if value != v and not (isinstance(v, str) and v.strip() == str(value)):
            raise ValueError("must be a whole number of steps >= 1 or 'auto'")
        if value < 1:
            raise ValueError("must be >= 1 step or 'auto'")
        return value

    @field_validator("sketch_delta", mode="after")
    @classmethod
    def _probability(cls, v: float) -> float:
        if not 0.0 < v < 0.5:  # also refuses NaN
            raise ValueError("must be a failure probability in (0, 0.5), e.g. 0.01")
        return v

    @field_validator("gpu_aware_mpi", mode="before")
    @classmethod
    def _tri_state(cls, v: Any) -> Any:
        # KEY=VALUE values are YAML scalars: gpu_aware_mpi=true arrives as a bool
        return str(v).lower() if isinstance(v, bool) else v

    @field_validator("lr", "server_lr", "epochs", "noniid_fraction", "dirichlet_alpha", mode="after")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be finite")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        if self.theta == "auto" and self.strategy not in AUTO_THETA:
            raise ValueError(f"theta=auto applies to strategy={' or '.join(AUTO_THETA)} only")
        if self.check_every == "auto" and self.strategy not in ADAPTIVE_CHECKS:
            raise ValueError(f"check_every=auto applies to strategy={' or '.join(ADAPTIVE_CHECKS)} only")
        if self.check_lag and self.strategy not in LAGGED_CHECKS:
            raise ValueError(f"check_lag applies to strategy={' or '.join(LAGGED_CHECKS)} only "
                             f"(strategy={self.strategy} {'checks once per epoch' if self.strategy == 'fda_opt' else 'makes no checks'})")
        if self.sync_delay and self.strategy == "synchronous":
            raise ValueError("sync_delay needs steps between syncs (strategy=synchronous syncs at every step)")
        if self.sync_delay and self.strategy in ("fedavg", "diloco") and self.sync_delay >= self.resolved("tau"):
            raise ValueError(f"sync_delay={self.sync_delay} must be below tau={self.resolved('tau')}: "
                             "a sync must land before the next one starts")
        return self

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True)

    def run_json(self) -> str:
        """The settings that define the run (all but EXECUTION_KEYS): equal for a run and its resumes."""
        return run_json(self.to_json())

    def resolved(self, name: str):
        """A setting's value; for those whose default depends on the strategy, that default."""
        return resolve_setting(self.model_dump(include={name, "strategy", "optimizer"}), name)

    def theta_for(self, num_params: int) -> float:
        """The threshold actually used: the given theta, or the paper's rule theta = c * d."""
        if self.theta == "auto":
            return self.theta_rule_constant() * num_params
        return float(self.theta)

    def theta_rule_constant(self) -> float:
        """c of theta=auto's rule theta = c * d, for the theta_profile."""
        return THETA_RULES[self.theta_profile]


FIELD_NAMES = tuple(Config.model_fields)


def resolve_setting(settings: dict, name: str):
    """settings[name], or, when it is None or absent, its default for settings['strategy'].
    A strategy's weight decay goes with its inner optimizer: DiLoCo's 0.1 is AdamW's decoupled
    decay, so an inner optimizer chosen explicitly (e.g. adam, whose decay is an L2 term in the
    gradient, where 0.1 stops LeNet-5 learning) keeps the generic default, 0."""
    value = settings.get(name)
    if value is not None or name not in DEFAULTS:
        return value
    strategy_defaults = STRATEGY_DEFAULTS.get(settings.get("strategy", "fda"), {})
    chosen = settings.get("optimizer")
    if name == "weight_decay" and chosen is not None and chosen != strategy_defaults.get("optimizer", chosen):
        return DEFAULTS[name]
    return strategy_defaults.get(name, DEFAULTS[name])


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, FIELD_NAMES, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "config"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown setting '{loc}'{_suggest(str(loc))}")
            continue
        given = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "literal_error":
            lines.append(f"{loc}={given!r}: {msg}")
        elif loc == "config":
            lines.append(msg)
        else:
            lines.append(f"{loc}={given!r}: {msg}")
    return "invalid configuration: " + "; ".join(lines)


def _parse_value(raw: str) -> Any:
    """KEY=VALUE values are YAML scalars: 1e-3, true, null, 'auto' all do what one expects."""
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def _flatten(d: dict, source: str) -> dict:
    """YAML files may group settings in sections (data:, sync:, ...); names stay flat and unique."""
    flat: dict = {}
    for key, value in d.items():
        if isinstance(value, dict):
            for k, v in _flatten(value, source).items():
                if k in flat:
                    raise ConfigError(f"{source}: setting '{k}' is given twice")
                flat[k] = v
        else:
            if key in flat:
                raise ConfigError(f"{source}: setting '{key}' is given twice")
            flat[key] = value
    return flat


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"expected KEY=VALUE, got '{pair}'")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"expected KEY=VALUE, got '{pair}'")
        out[key] = _parse_value(raw)
    return out


def load_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    return _flatten(data, str(path))


def make_config(settings: dict | None = None, *, file: str | Path | None = None,
                overrides: list[str] | None = None) -> Config:
    """Build and validate a Config from a YAML file, a dict, and KEY=VALUE strings (later wins)."""
    merged: dict = {}
    if file is not None:
        merged.update(load_file(file))
    merged.update(settings or {})
    merged.update(parse_overrides(overrides or []))
    try:
        return Config(**merged)
    except ValidationError as e:
        raise ConfigError(_format(e)) from None


def run_json(config_json: str) -> str:
    """A stored config (JSON) without its EXECUTION_KEYS, for comparing a run with its resume."""
    return json.dumps({k: v for k, v in json.loads(config_json).items() if k not in EXECUTION_KEYS}, sort_keys=True)


def config_from_json(text: str) -> Config:
    return make_config(json.loads(text))
