"""fda.sync.setup and fda.sync.optimizer_state: settings, checks, the initial broadcast, and
what a sync does to the optimizers."""
import types

import pytest
import torch

from fda.config import ConfigError, make_config
from fda.flat import FlatModel
from fda.sync.optimizer_state import sync_optimizer_state
from fda.sync.setup import (as_list, broadcast_initial_state, check_hosted, check_same_architecture,
                            merge_settings)


def test_settings_override_the_config_and_are_validated():
    base = make_config({"strategy": "fedavg", "tau": 4})
    assert merge_settings(base, None, {}) is base
    merged = merge_settings(base, "fda", {"theta": 0.5})
    assert (merged.strategy, merged.tau, merged.theta) == ("fda", 4, 0.5)
    with pytest.raises(ConfigError, match="unknown setting 'thetta'"):
        merge_settings(None, None, {"thetta": 1})


def test_hosted_models_and_optimizers_are_checked():
    ctx = types.SimpleNamespace(workers_per_rank=2)
    cfg = make_config({"workers_per_rank": 2, "sync_optimizer_state": "average"})
    with pytest.raises(ValueError, match="got 1 model"):
        check_hosted(cfg, ctx, [object()], [])
    with pytest.raises(ValueError, match="needs the optimizer"):
        check_hosted(cfg, ctx, [object(), object()], [])
    with pytest.raises(ConfigError, match="workers_per_rank=1 in the settings"):
        check_hosted(make_config({}), ctx, [object(), object()], [])
    assert as_list(None) == [] and as_list(3) == [3] and as_list((1, 2)) == [1, 2]
    with pytest.raises(ValueError, match="same architecture"):
        check_same_architecture([FlatModel(torch.nn.Linear(2, 2)), FlatModel(torch.nn.Linear(3, 2))])


def test_every_hosted_worker_starts_from_the_first_model(world):
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)) for _ in range(3)]
    models[0][1].num_batches_tracked.fill_(5)  # outside the flat buffer (int64)
    workers = [FlatModel(m) for m in models]
    broadcast_initial_state(world, workers)
    first = models[0].state_dict()
    for m in models[1:]:
        assert all(torch.equal(first[k], v) for k, v in m.state_dict().items())
    assert [c[0] for c in world.calls] == ["bcast_", "bcast_"]  # the flat buffer, then the int64 buffers


def _optimizers(values):
    opts = []
    for v in values:
        p = torch.nn.Parameter(torch.zeros(3))
        opt = torch.optim.Adam([p])
        p.grad = torch.full((3,), v)
        opt.step()
        opts.append(opt)
    return opts


def test_optimizer_state_keep_reset_and_average(world):
    opts = _optimizers([1.0, 3.0])
    before = [opt.state_dict()["state"][0]["exp_avg"].clone() for opt in opts]
    sync_optimizer_state("keep", opts, world, 2)
    assert all(torch.equal(o.state_dict()["state"][0]["exp_avg"], b) for o, b in zip(opts, before))
    sync_optimizer_state("average", opts, world, 2)
    mean = (before[0] + before[1]) / 2
    assert all(torch.allclose(o.state_dict()["state"][0]["exp_avg"], mean) for o in opts)
    assert len(world.calls) == 1  # every tensor of every state in ONE Allreduce
    sync_optimizer_state("reset", opts, world, 2)
    assert all(not o.state for o in opts)
