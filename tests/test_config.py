"""fda.config validates the named settings against the registries that own the names: one test
per registry (every registered name is a valid setting, and a name not registered is refused
early, with the valid names in the message), and the strategies' defaults come from their registry."""
import pytest

import fda.data
import fda.models
import fda.monitor
import fda.outer
import fda.strategies
from fda.config import ConfigError, make_config

REGISTRIES = {  # setting: (the registry's names, an unregistered name)
    "strategy": (tuple(fda.strategies.STRATEGIES), "fedprox"),
    "monitor": (fda.monitor.monitor_names(), "ams"),
    "server_optimizer": (fda.outer.OUTER_OPTIMIZERS, "lamb"),
    "model": (fda.models.MODEL_NAMES, "resnet50"),
    "dataset": (fda.data.DATASET_NAMES, "imagenet"),
    "partition": (fda.data.PARTITION_SCHEMES, "shards"),
}


@pytest.mark.parametrize("setting", sorted(REGISTRIES))
def test_every_registered_name_is_a_valid_setting(setting):
    names, _ = REGISTRIES[setting]
    assert names, setting
    for name in names:
        assert getattr(make_config({setting: name}), setting) == name


@pytest.mark.parametrize("setting", sorted(REGISTRIES))
def test_an_unregistered_name_is_refused_with_the_registered_ones(setting):
    names, unknown = REGISTRIES[setting]
    with pytest.raises(ConfigError) as err:
        make_config({setting: unknown})
    message = str(err.value)
    assert f"{setting}='{unknown}'" in message and all(f"'{n}'" in message for n in names), message


def test_a_strategy_only_monitor_is_not_a_setting():
    assert "per_worker" in fda.monitor.MONITORS and "per_worker" not in fda.monitor.monitor_names()
    with pytest.raises(ConfigError, match="monitor='per_worker'"):
        make_config({"monitor": "per_worker"})


def test_the_outer_optimizer_names_are_the_outer_optimizers():
    assert fda.outer.OuterOptimizer.KINDS == fda.outer.OUTER_OPTIMIZERS[1:]  # "none": plain averaging
    for kind in fda.outer.OuterOptimizer.KINDS:
        assert fda.outer.make_outer(kind, lr=0.5) is not None


@pytest.mark.parametrize("strategy", sorted(fda.strategies.STRATEGY_DEFAULTS))
def test_a_strategys_defaults_come_from_its_registry(strategy):
    cfg = make_config({"strategy": strategy})
    for name, value in fda.strategies.STRATEGY_DEFAULTS[strategy].items():
        assert cfg.resolved(name) == value, (strategy, name)
    assert set(fda.strategies.STRATEGY_DEFAULTS) <= set(fda.strategies.STRATEGIES)


def test_settings_left_to_the_strategy_fall_back_to_the_generic_defaults():
    cfg = make_config({"strategy": "fedavg"})
    assert (cfg.resolved("tau"), cfg.resolved("server_optimizer"), cfg.resolved("optimizer")) == (1, "none", "adam")
    # an inner optimizer chosen explicitly keeps the generic weight decay, not DiLoCo's AdamW one
    assert make_config({"strategy": "diloco", "optimizer": "adam"}).resolved("weight_decay") == 0.0
