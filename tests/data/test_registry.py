"""The dataset registry: each source module registers its names; everything else asks it."""
import pytest

import fda.data
from fda.config import ConfigError, make_config
from fda.data import DatasetError, dataset_names, load_dataset
from fda.data.base import Source, canonical_name, register, source


def test_the_registered_names():
    assert dataset_names() == ("mnist", "fashion-mnist", "cifar10", "cifar100", "synthetic", "shakespeare")
    assert fda.data.DATASET_NAMES == dataset_names()


@pytest.mark.parametrize("name", dataset_names())
def test_config_accepts_every_registered_name(name):
    assert make_config({"dataset": name}).dataset == name


def test_config_refuses_an_unregistered_name():
    with pytest.raises(ConfigError, match="dataset"):
        make_config({"dataset": "imagenet"})


@pytest.mark.parametrize("alias, name", [(" FMNIST ", "fashion-mnist"), ("fashion_mnist", "fashion-mnist"),
                                         ("CIFAR-10", "cifar10"), ("cifar_100", "cifar100"), ("synthetic", "synthetic")])
def test_aliases(alias, name):
    assert canonical_name(alias) == name and source(alias).name == name


def test_an_unknown_name_lists_the_valid_ones():
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'; valid names: mnist, fashion-mnist, cifar10"):
        load_dataset("imagenet")


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="registered twice"):
        register(Source("synthetic", lambda data_dir=None, seed=0: None))


def test_what_the_sources_say_about_themselves():
    assert source("fashion-mnist").debian_package == "dataset-fashion-mnist"
    assert source("mnist").system_dir and not source("cifar10").system_dir
    assert load_dataset("synthetic", seed=3).name == "synthetic"
