"""What a partition gives each worker: label histograms and the tables of ``fda data info``."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .datasets import load_dataset
from .partition import partition as partition_into  # data_info's parameter ``partition`` is the scheme
from .partition import scheme_name

__all__ = ["label_histogram", "info_table", "text_info_table", "data_info"]


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
    scheme = partition
    ds = load_dataset(dataset, data_dir, seed=seed)
    labels = ds.labels.numpy()
    partition_params = {k: v for k, v in partition_params.items() if v is not None}
    parts = partition_into(labels, num_workers, scheme, seed=seed, groups=ds.train_groups, **partition_params)
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
