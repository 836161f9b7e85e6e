"""Cutting a training set into K worker shards (docs/algorithm.md, "Partitions").

Schemes (all deterministic by ``seed``; every worker gets a non-empty shard):

- ``iid``: the data in a seeded shuffled order, cut into K contiguous shards (sizes differ by <= 1).
- ``noniid``: the first ``noniid_fraction`` of the shuffled training set is sorted by label and
  dealt into K contiguous pieces; the rest is cut into K contiguous pieces (sized so that shard
  sizes differ by <= 1); worker k gets piece k of each part (so with fraction 0.6, ~60% of each
  worker's data comes from the 1-2 labels of its sorted piece). Each shard lists its sorted piece
  first.
- ``label``: all samples of label ``label_value`` are placed first (in shuffled order), then the
  rest (shuffled); the sequence is cut into K contiguous shards, so label Y lands on few workers.
- ``dirichlet``: for each class, proportions across the K workers drawn from
  Dirichlet(``dirichlet_alpha``); smaller alpha = more skew.
- ``natural``: for datasets with natural clients (Shakespeare's speaking roles, ``groups``): whole
  clients are dealt to workers, in a seeded random order, each to the worker holding the fewest
  samples so far (shard sizes differ by at most one client's size).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import DatasetError

__all__ = ["PARTITION_SCHEMES", "partition", "scheme_name"]

PARTITION_SCHEMES: tuple[str, ...] = ("iid", "noniid", "label", "dirichlet", "natural")

_SCHEME_ALIASES = {"non-iid": "noniid", "non_iid": "noniid", "labels": "label", "dir": "dirichlet"}


def _rng(seed: int, scheme: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), PARTITION_SCHEMES.index(scheme), 0xDA7A])


def _split(order: np.ndarray, k: int) -> list[np.ndarray]:
    return [np.ascontiguousarray(a, dtype=np.int64) for a in np.array_split(order, k)]


def partition(
    labels: np.ndarray | Sequence[int],
    num_workers: int,
    scheme: str,
    *,
    seed: int,
    noniid_fraction: float = 0.6,
    label_value: int = 0,
    dirichlet_alpha: float = 1.0,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Index arrays (int64), one per worker, that together cover ``range(len(labels))`` exactly once.

    ``groups`` (one int per sample: its natural client) is needed by ``natural`` only."""
    labels = _as_labels(labels)
    key = scheme_name(scheme)
    n, k = int(labels.shape[0]), int(num_workers)
    _check_workers(n, k, num_workers)
    rng = _rng(seed, key)
    perm = rng.permutation(n).astype(np.int64)
    if key == "iid":
        parts = _split(perm, k)
    elif key == "noniid":
        parts = _noniid(labels, perm, k, noniid_fraction)
    elif key == "label":
        parts = _label_first(labels, perm, k, label_value)
    elif key == "natural":
        parts = _deal_groups(groups, n, k, rng)
    else:
        parts = _dirichlet(labels, perm, k, dirichlet_alpha, rng)
    assert sum(p.size for p in parts) == n
    if any(p.size == 0 for p in parts):  # cannot happen given k <= n; kept as a guard
        raise DatasetError(f"partition {key!r} left a worker without data ({n} samples, {k} workers)")
    return parts


def scheme_name(scheme: str) -> str:
    """The scheme's canonical name (aliases such as non-iid forgiven)."""
    key = _SCHEME_ALIASES.get(str(scheme).strip().lower(), str(scheme).strip().lower())
    if key not in PARTITION_SCHEMES:
        raise DatasetError(f"unknown partition scheme {scheme!r}; valid schemes: {', '.join(PARTITION_SCHEMES)}")
    return key


def _as_labels(labels) -> np.ndarray:
    if hasattr(labels, "numpy"):  # torch tensor
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DatasetError(f"labels must be a 1-D array, got shape {labels.shape}")
    return labels.astype(np.int64, copy=False)


def _check_workers(n: int, k: int, given) -> None:
    if k < 1:
        raise DatasetError(f"num_workers must be >= 1, got {given}")
    if k > n:
        raise DatasetError(
            f"cannot partition {n} samples among {k} workers: every worker needs at least one sample"
        )


def _noniid(labels: np.ndarray, perm: np.ndarray, k: int, fraction: float) -> list[np.ndarray]:
    """Worker w gets sorted piece w of the head and a tail piece sized so that the shard sizes are
    balanced (differ by <= 1), which also keeps every shard non-empty."""
    frac = float(fraction)
    if not 0.0 <= frac <= 1.0:
        raise DatasetError(f"noniid_fraction must be in [0, 1], got {fraction}")
    n = perm.size
    n1 = int(round(frac * n))
    head, tail = perm[:n1], perm[n1:]
    head = head[np.argsort(labels[head], kind="stable")]
    sizes = np.array([a.size for a in np.array_split(np.empty(n), k)])
    head_sizes = np.array([a.size for a in np.array_split(head, k)])
    tail_cuts = np.cumsum(sizes - head_sizes)[:-1]  # sizes - head_sizes >= 0 always
    return [np.concatenate([a, b]).astype(np.int64) for a, b in zip(_split(head, k), np.split(tail, tail_cuts))]


def _label_first(labels: np.ndarray, perm: np.ndarray, k: int, label_value: int) -> list[np.ndarray]:
    y = int(label_value)
    is_y = labels[perm] == y
    if not is_y.any():
        present = np.unique(labels)
        raise DatasetError(
            f"label scheme: no sample has label {y}; labels present: {present.tolist()[:20]}"
            + (" ..." if present.size > 20 else "")
        )
    return _split(np.concatenate([perm[is_y], perm[~is_y]]), k)


def _dirichlet(labels: np.ndarray, perm: np.ndarray, k: int, alpha_given: float,
               rng: np.random.Generator) -> list[np.ndarray]:
    alpha = float(alpha_given)
    if not alpha > 0.0:
        raise DatasetError(f"dirichlet_alpha must be > 0, got {alpha_given}")
    shards: list[list[np.ndarray]] = [[] for _ in range(k)]
    for c in np.unique(labels):
        idx = perm[labels[perm] == c]  # this class's samples, in shuffled order
        p = rng.dirichlet(np.full(k, alpha))
        cuts = np.floor(np.cumsum(p)[:-1] * idx.size).astype(np.int64)
        for w, piece in enumerate(np.split(idx, cuts)):
            shards[w].append(piece)
    parts = [np.concatenate(s) if s else np.empty(0, np.int64) for s in shards]
    return [np.ascontiguousarray(p, dtype=np.int64) for p in _fill_empty(parts)]


def _fill_empty(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Small alpha can leave a worker empty: give it one sample from the currently largest shard
    (deterministic; moves at most K-1 samples)."""
    for w in range(len(parts)):
        if parts[w].size == 0:
            big = int(np.argmax([p.size for p in parts]))
            parts[w] = parts[big][-1:].copy()
            parts[big] = parts[big][:-1]
    return parts


def _deal_groups(groups: np.ndarray | None, n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    if groups is None:
        raise DatasetError("partition=natural needs a dataset with natural clients (dataset=shakespeare: "
                           "its speaking roles); use iid, noniid, label or dirichlet for this dataset")
    groups = np.asarray(groups, dtype=np.int64)
    if groups.shape != (n,):
        raise DatasetError(f"groups must hold one client per sample ({n}), got shape {groups.shape}")
    ids, sizes = np.unique(groups, return_counts=True)
    if ids.size < k:
        raise DatasetError(f"partition=natural: {ids.size} clients cannot be dealt to {k} workers "
                           "(every worker needs at least one)")
    members = np.split(np.argsort(groups, kind="stable"), np.cumsum(sizes)[:-1])
    load = np.zeros(k, dtype=np.int64)
    dealt: list[list[np.ndarray]] = [[] for _ in range(k)]
    for g in rng.permutation(ids.size):
        w = int(np.argmin(load))  # the least loaded worker (the lowest index on ties)
        dealt[w].append(members[g])
        load[w] += sizes[g]
    return [np.sort(np.concatenate(d)) for d in dealt]
