"""What a Synchronizer checks and does once, before the first step: its settings, its models,
and the initial broadcast that makes every worker start from the same model."""
from __future__ import annotations

import torch

from fda.config import Config, ConfigError, make_config
from fda.flat import FlatModel


def merge_settings(config: Config | None, strategy: str | None, settings: dict) -> Config:
    """The run's Config: `config` (or the defaults), overridden by `strategy` and `settings`,
    validated as the CLI validates them."""
    extra = {**settings, **({"strategy": strategy} if strategy else {})}
    if config is None:
        return make_config(extra)
    if not extra:
        return config
    return make_config({**config.model_dump(), **extra})


def as_list(obj) -> list:
    """A module/optimizer or a list of them (one per hosted worker), as a list (None: empty)."""
    if obj is None:
        return []
    return list(obj) if isinstance(obj, (list, tuple)) else [obj]


def check_hosted(cfg: Config, ctx, models: list, optimizers: list) -> None:
    """One model (and optimizer, when a sync touches optimizer state) per hosted worker."""
    if len(models) != ctx.workers_per_rank:
        raise ValueError(f"got {len(models)} model(s) for workers_per_rank={ctx.workers_per_rank}")
    if cfg.workers_per_rank != ctx.workers_per_rank:
        raise ConfigError(f"workers_per_rank={cfg.workers_per_rank} in the settings but "
                          f"fda.init(workers_per_rank={ctx.workers_per_rank})")
    if cfg.sync_optimizer_state != "keep" and len(optimizers) != len(models):
        raise ValueError(f"sync_optimizer_state={cfg.sync_optimizer_state} needs the optimizer(s): "
                         "pass optimizer=... to Synchronizer")


def check_same_architecture(workers: list[FlatModel]) -> None:
    for w in workers[1:]:
        if w.layout != workers[0].layout:
            raise ValueError("the models of one rank must have the same architecture")


def broadcast_initial_state(world, workers: list[FlatModel]) -> None:
    """Every worker starts from rank 0's first model (its full state_dict, frozen parts too):
    ONE broadcast of the flat buffer, plus one per dtype for whatever lives outside it."""
    first = workers[0]
    world.bcast_(first.flat, root=0, kind="setup")
    flat_storage = first.flat.untyped_storage().data_ptr()
    src = first.module.state_dict()
    rest = [src[n] for n in sorted(src) if src[n].untyped_storage().data_ptr() != flat_storage]
    for dtype in sorted({t.dtype for t in rest}, key=str):
        _broadcast_group(world, [t for t in rest if t.dtype == dtype])
    for w in workers[1:]:
        w.module.load_state_dict(src)


def _broadcast_group(world, group: list[torch.Tensor]) -> None:
    packed = torch.cat([t.reshape(-1) for t in group])
    world.bcast_(packed, root=0, kind="setup")
    offset = 0
    for t in group:
        t.copy_(packed[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
