"""Cutting a training set into K worker shards (FDA.md section 6).

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

__all__ = ["PARTITION_SCHEMES", "partition", "label_histogram", "info_table", "text_info_table", "data_info"]

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


def label_histogram(labels: np.ndarray | Sequence[int], parts: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """K x C matrix of label counts per worker."""
    if hasattr(labels, "numpy"):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels, dtype=np.int64)
    out = np.zeros((len(parts), int(num_classes)), dtype=np.int64)
    for w, p in enumerate(parts):
        out[w] = np.bincount(labels[np.asarray(p, dtype=np.int64)], minlength=num_classes)[:num_classes]
    return out


def info_table(
    labels: np.ndarray | Sequence[int],
    parts: Sequence[np.ndarray],
    num_classes: int,
    *,
    max_columns: int = 20,
) -> str:
    """A text table: per worker its sample count, label counts (or its top labels when there are
    more than ``max_columns`` classes) and the share of its most common label."""
    hist = label_histogram(labels, parts, num_classes)
    sizes = hist.sum(axis=1)
    rows: list[list[str]] = []
    if num_classes <= max_columns:
        header = ["worker", "samples"] + [str(c) for c in range(num_classes)] + ["top%"]
        for w in range(len(parts)):
            top = 100.0 * hist[w].max() / max(1, sizes[w])
            rows.append([str(w), str(sizes[w])] + [str(v) for v in hist[w]] + [f"{top:.1f}"])
        total = hist.sum(axis=0)
        rows.append(["all", str(sizes.sum())] + [str(v) for v in total] + [f"{100.0 * total.max() / max(1, total.sum()):.1f}"])
    else:
        header = ["worker", "samples", "labels", "top labels (count)", "top%"]
        for w in range(len(parts)):
            order = np.argsort(-hist[w], kind="stable")[:3]
            top = ", ".join(f"{c}({hist[w, c]})" for c in order if hist[w, c] > 0)
            rows.append([str(w), str(sizes[w]), str(int((hist[w] > 0).sum())), top,
                         f"{100.0 * hist[w].max() / max(1, sizes[w]):.1f}"])
        rows.append(["all", str(sizes.sum()), str(int((hist.sum(0) > 0).sum())), "", ""])
    return _format_rows(header, rows)


def text_info_table(ds, parts: Sequence[np.ndarray], *, top: int = 3) -> str:
    """Per worker: its roles (natural clients), windows, characters of text, its largest role, its
    most common next characters, and the label skew as total variation distances from the whole
    training set (0 = the same distribution, 1 = disjoint): of its windows' labels (the character
    after each window, what label-based partitions split by) and of all its next characters."""
    y = ds.y_train.numpy().reshape(ds.num_train, -1)
    labels, groups = ds.labels.numpy(), ds.train_groups
    names = ds.class_names or tuple(str(c) for c in range(ds.num_classes))

    def dist(values: np.ndarray) -> np.ndarray:
        return np.bincount(values.ravel(), minlength=ds.num_classes) / values.size

    all_labels, all_chars = dist(labels), dist(y)
    header = ["worker", "roles", "windows", "characters", "largest role", "top next characters",
              "label TV", "char TV"]
    rows = []
    for w, p in enumerate(list(parts) + [np.arange(ds.num_train)]):
        chars = dist(y[p])
        roles, counts = np.unique(groups[p], return_counts=True)
        largest = ds.group_names[roles[np.argmax(counts)]][:40] if w < len(parts) else ""
        common = ", ".join(f"{names[c]!r} {100 * chars[c]:.1f}%" for c in np.argsort(-chars, kind="stable")[:top])
        rows.append([str(w) if w < len(parts) else "all", str(roles.size), str(p.size), str(y[p].size), largest,
                     common, f"{0.5 * np.abs(dist(labels[p]) - all_labels).sum():.3f}",
                     f"{0.5 * np.abs(chars - all_chars).sum():.3f}"])
    return _format_rows(header, rows)


def _format_rows(header: list[str], rows: list[list[str]]) -> str:
    """Right-aligned columns; the last row (the total) set off by a rule."""
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(v.rjust(wd) for v, wd in zip(r, widths))  # noqa: E731
    lines = [fmt(header), fmt(["-" * wd for wd in widths])] + [fmt(r) for r in rows[:-1]]
    lines += [fmt(["-" * wd for wd in widths]), fmt(rows[-1])]
    return "\n".join(lines)


def data_info(
    dataset: str,
    data_dir: str | None,
    num_workers: int,
    partition: str,  # noqa: A002 - the CLI's option name
    seed: int,
    **partition_params,
) -> str:
    """Text report for ``fda data info``: the dataset, where it was read from, and each worker's
    sample count and label histogram under the given partition (for text: roles, characters and
    label skew)."""
    from .datasets import load_dataset

    scheme = partition
    ds = load_dataset(dataset, data_dir, seed=seed)
    labels = ds.labels.numpy()
    partition_params = {k: v for k, v in partition_params.items() if v is not None}
    parts = _partition(labels, num_workers, scheme, seed=seed, groups=ds.train_groups, **partition_params)
    sizes = [p.size for p in parts]
    relevant = {"noniid": "noniid_fraction", "label": "label_value", "dirichlet": "dirichlet_alpha"}
    key = scheme_name(scheme)
    params = ", ".join(f"{k}={v}" for k, v in sorted(partition_params.items()) if k == relevant.get(key))
    kind = (f"{ds.num_classes}-character vocabulary, {len(ds.group_names)} roles" if ds.train_groups is not None
            else f"{ds.num_classes} classes")
    head = [
        f"dataset   {ds.name}: {ds.num_train} train / {ds.num_test} test, input {ds.input_shape}, {kind}",
        f"source    {ds.source or '(generated, seed %d)' % seed}",
        f"partition {scheme}{' (' + params + ')' if params else ''}, {num_workers} workers, seed {seed}: "
        f"shard sizes {min(sizes)}..{max(sizes)}",
        "",
    ]
    table = text_info_table(ds, parts) if ds.train_groups is not None else info_table(labels, parts, ds.num_classes)
    return "\n".join(head) + table


_partition = partition  # data_info's parameter named ``partition`` shadows the function
