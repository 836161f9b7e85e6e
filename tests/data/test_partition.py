import numpy as np
import pytest
import torch

from fda.data import PARTITION_SCHEMES, DatasetError, data_info, info_table, label_histogram, partition


def balanced_labels(n=6000, c=10, seed=0):
    return np.random.default_rng(seed).permutation(np.arange(n) % c)


def check_cover(parts, n):
    allidx = np.concatenate(parts)
    assert allidx.dtype == np.int64
    assert allidx.size == n
    assert np.array_equal(np.sort(allidx), np.arange(n))  # disjoint and complete
    assert all(p.size > 0 for p in parts)


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
@pytest.mark.parametrize("k", [1, 3, 7, 10])
def test_cover_and_determinism(scheme, k):
    y = balanced_labels(1003)
    groups = np.arange(y.size) // 10  # natural clients, for partition=natural (the others ignore them)
    a = partition(y, k, scheme, seed=5, groups=groups)
    b = partition(y, k, scheme, seed=5, groups=groups)
    c = partition(y, k, scheme, seed=6, groups=groups)
    assert len(a) == k
    check_cover(a, y.size)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    if k > 1 or scheme not in ("dirichlet", "natural"):  # one worker: the whole set, in index order
        assert any(not np.array_equal(p, q) for p, q in zip(a, c))


def test_iid_balanced():
    y = balanced_labels(6000)
    parts = partition(y, 7, "iid", seed=0)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    h = label_histogram(y, parts, 10)
    frac = h / h.sum(1, keepdims=True)
    assert np.all(np.abs(frac - 0.1) < 0.04)
    # contiguous shards of one seeded permutation
    perm = np.concatenate(parts)
    assert not np.array_equal(perm, np.arange(6000))


def test_noniid_skew():
    y = balanced_labels(10000)
    k = 5
    parts = partition(y, k, "noniid", seed=0, noniid_fraction=0.6)
    check_cover(parts, y.size)
    h = label_histogram(y, parts, 10)
    sizes = h.sum(1)
    assert max(sizes) - min(sizes) <= 2
    for w in range(k):
        top2 = np.sort(h[w])[-2:].sum()
        # 60% of each shard comes from a sorted piece covering ~2 labels, plus 40% iid (~8% of those)
        assert top2 / sizes[w] > 0.6
    # the sorted part of each worker: its first n1/k samples are dominated by 1-2 labels
    n1 = 6000
    for w, p in enumerate(parts):
        head = y[p[: n1 // k]]
        counts = np.bincount(head, minlength=10)
        assert (counts > 0).sum() <= 3 and np.sort(counts)[-2:].sum() >= 0.9 * head.size
        assert np.all(np.diff(head) >= 0)  # sorted by label


def test_noniid_fraction_extremes():
    y = balanced_labels(2000)
    iid_like = label_histogram(y, partition(y, 4, "noniid", seed=0, noniid_fraction=0.0), 10)
    assert (iid_like / iid_like.sum(1, keepdims=True)).max() < 0.2
    full = label_histogram(y, partition(y, 5, "noniid", seed=0, noniid_fraction=1.0), 10)
    assert all((row > 0).sum() <= 3 for row in full)
    with pytest.raises(DatasetError, match="noniid_fraction"):
        partition(y, 4, "noniid", seed=0, noniid_fraction=1.5)


@pytest.mark.parametrize("label_value", [0, 8])
def test_label_concentrated(label_value):
    y = balanced_labels(10000)  # 1000 samples of each label
    k = 10
    parts = partition(y, k, "label", seed=0, label_value=label_value)
    check_cover(parts, y.size)
    h = label_histogram(y, parts, 10)
    holders = np.nonzero(h[:, label_value])[0]
    assert holders.tolist() == [0]  # 1000 samples of label Y fill exactly worker 0's 1000 slots
    # the rest is IID
    others = np.delete(h, label_value, axis=1)[1:]
    assert (others / others.sum(1, keepdims=True)).max() < 0.2
    parts4 = partition(y, 4, "label", seed=0, label_value=label_value)
    h4 = label_histogram(y, parts4, 10)
    assert h4[0, label_value] == 1000 and h4[1:, label_value].sum() == 0


def test_label_absent():
    with pytest.raises(DatasetError, match="no sample has label 3"):
        partition(np.array([0, 1, 2, 0, 1, 2]), 2, "label", seed=0, label_value=3)


def test_dirichlet_skew_decreases_with_alpha():
    y = balanced_labels(20000)
    k = 10

    def skew(alpha):
        vals = []
        for seed in range(3):
            h = label_histogram(y, partition(y, k, "dirichlet", seed=seed, dirichlet_alpha=alpha), 10)
            frac = h / h.sum(1, keepdims=True)
            vals.append(np.abs(frac - 0.1).sum(1).mean())  # mean L1 distance from uniform
        return float(np.mean(vals))

    s = [skew(a) for a in (0.1, 1.0, 100.0)]
    assert s[0] > s[1] > s[2]
    assert s[2] < 0.1


def test_dirichlet_tiny_alpha_no_empty_worker():
    y = balanced_labels(200)
    parts = partition(y, 50, "dirichlet", seed=0, dirichlet_alpha=0.01)
    check_cover(parts, y.size)
    with pytest.raises(DatasetError, match="dirichlet_alpha"):
        partition(y, 5, "dirichlet", seed=0, dirichlet_alpha=0.0)


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_more_workers_than_samples(scheme):
    with pytest.raises(DatasetError, match="cannot partition 5 samples among 6 workers"):
        partition(np.arange(5) % 2, 6, scheme, seed=0, groups=np.arange(5))
    parts = partition(np.arange(5) % 2, 5, scheme, seed=0, groups=np.arange(5))  # exactly one each is fine
    assert sorted(p.size for p in parts) == [1] * 5


def test_bad_arguments():
    y = balanced_labels(100)
    with pytest.raises(DatasetError, match="unknown partition scheme 'foo'.*iid, noniid, label, dirichlet, natural"):
        partition(y, 2, "foo", seed=0)
    with pytest.raises(DatasetError, match="num_workers must be >= 1"):
        partition(y, 0, "iid", seed=0)
    # torch labels and the alias 'non-iid' are accepted
    parts = partition(torch.from_numpy(y), 2, "non-iid", seed=0)
    check_cover(parts, 100)


def test_histogram_and_table():
    y = np.array([0, 0, 1, 2, 2, 2])
    parts = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    h = label_histogram(y, parts, 3)
    assert h.tolist() == [[2, 1, 0], [0, 0, 3]]
    t = info_table(y, parts, 3)
    lines = t.splitlines()
    assert lines[0].split() == ["worker", "samples", "0", "1", "2", "top%"]
    assert lines[2].split() == ["0", "3", "2", "1", "0", "66.7"]
    assert lines[-1].split()[:2] == ["all", "6"]
    # many classes: compact form
    y100 = np.arange(300) % 100
    t100 = info_table(y100, partition(y100, 3, "iid", seed=0), 100)
    assert "top labels" in t100.splitlines()[0]


def test_data_info_synthetic():
    out = data_info("synthetic", None, 4, "dirichlet", 1, dirichlet_alpha=0.5, noniid_fraction=None)
    assert "synthetic" in out and "dirichlet" in out and "dirichlet_alpha=0.5" in out
    assert "4096" in out and len(out.splitlines()) == 4 + 2 + 4 + 2 - 1  # header, table head, rows, total
