"""What every dataset source shares: the `Dataset` it returns, the `DatasetError` it raises, the
registry of names each source module adds itself to, and the in-process cache of parsed files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

__all__ = ["Dataset", "DatasetError", "Source", "register", "dataset_names", "canonical_name", "source",
           "FileCache", "file_key", "clear_cache"]


class DatasetError(ValueError):
    """A dataset cannot be found, parsed or partitioned; the message says why and what to do."""


@dataclass
class Dataset:
    """A train/test split as tensors. ``x_*`` are float32 N x C x H x W, normalised (images) or int64
    N x L character indices (text); ``y_*`` int64 labels (N) or per-position targets (N x L, text).

    ``train_groups`` (text only): each training sample's natural client (a speaking role), an index
    into ``group_names``; ``class_names``: what each label stands for (the characters), if not 0..C-1.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    source: str = field(default="", compare=False)  # directory the files were read from ("" if generated)
    train_groups: np.ndarray | None = field(default=None, compare=False, repr=False)
    group_names: tuple[str, ...] = field(default=(), compare=False, repr=False)
    class_names: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def labels(self) -> torch.Tensor:
        """One label per training sample, for partitions and histograms: ``y_train``, or for
        per-position targets (text) the last one (the character after the window)."""
        return self.y_train if self.y_train.ndim == 1 else self.y_train[:, -1]

    @property
    def num_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.y_test.shape[0])

    def __repr__(self) -> str:  # tensors make the default repr unreadable
        return (
            f"Dataset(name={self.name!r}, train={self.num_train}, test={self.num_test}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}, source={self.source!r})"
        )


# ----------------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One dataset name and how to load it.

    load(data_dir, seed) -> Dataset; aliases: other spellings of the name; system_dir: its files
    may be in /usr/share/datasets/NAME/ (where Debian's dataset packages put them); debian_package:
    the Debian/Ubuntu package that installs them there."""

    name: str
    load: Callable[..., Dataset]
    aliases: tuple[str, ...] = ()
    system_dir: bool = False
    debian_package: str | None = None


_SOURCES: dict[str, Source] = {}
_ALIASES: dict[str, str] = {}


def register(entry: Source) -> Source:
    """Add a dataset source (each source module registers its names when imported)."""
    if entry.name in _SOURCES:
        raise ValueError(f"dataset {entry.name!r} is registered twice")
    _SOURCES[entry.name] = entry
    _ALIASES.update({alias: entry.name for alias in entry.aliases})
    return entry


def dataset_names() -> tuple[str, ...]:
    """The registered dataset names, in registration order (what `dataset=` accepts)."""
    return tuple(_SOURCES)


def canonical_name(name: str) -> str:
    """The registered name for `name` (case, surrounding spaces and aliases forgiven)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _SOURCES:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(_SOURCES)}")
    return key


def source(name: str) -> Source:
    """The registry entry of dataset `name` (any accepted spelling)."""
    return _SOURCES[canonical_name(name)]


# ----------------------------------------------------------------------------------------------
# the cache
# ----------------------------------------------------------------------------------------------


def file_key(paths) -> tuple:
    """The identity of some files (path, size, modification time): a replaced file is a new key."""
    return tuple((os.path.abspath(p), st.st_size, st.st_mtime_ns) for p in paths for st in [os.stat(p)])


class FileCache:
    """Values parsed from files, kept in-process only (nothing is written to disk).

    keep: how many keys to hold (None: all); the oldest is forgotten first."""

    def __init__(self, keep: int | None = None):
        self.keep = keep
        self._values: dict = {}
        _CACHES.append(self)

    def get(self, key, build: Callable[[], object]):
        if key not in self._values:
            value = build()
            if self.keep is not None:
                while len(self._values) >= self.keep:
                    self._values.pop(next(iter(self._values)))
            self._values[key] = value
        return self._values[key]

    def clear(self) -> None:
        self._values.clear()


_CACHES: list[FileCache] = []


def clear_cache() -> None:
    """Forget every source's in-process cache of parsed files."""
    for cache in _CACHES:
        cache.clear()
