"""Image datasets read from files: look them up, parse them once per process, normalise them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import paths
from .base import Dataset, DatasetError, FileCache, file_key

__all__ = ["load_image_dataset", "normalised"]

# (name, the files' identity) -> raw uint8 arrays, read-only
_CACHE = FileCache()

Locate = Callable[[str, Sequence[Path]], tuple[Path, list[Path]]]
Read = Callable[[Path, list[Path], str], tuple]


def normalised(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 scaled to [0, 1], minus the per-channel mean, over the std."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float32)).div_(255.0)  # a fresh writable copy
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return t.sub_(m).div_(s)


def _read_only(raw: tuple) -> tuple:
    for a in raw[:4]:
        if a.flags.writeable:
            a.setflags(write=False)
    return raw


def load_image_dataset(name: str, data_dir: str | os.PathLike | None, *, locate: Locate, read: Read,
                       norm: tuple[tuple[float, ...], tuple[float, ...]]) -> Dataset:
    """Find `name`'s files (`locate` over the search path), parse them (`read`: x_train, y_train,
    x_test, y_test as uint8 / int64 arrays and the number of classes; cached by the files'
    identity, so a replaced or fixed file is re-read) and normalise the images with `norm`."""
    dirs = paths.search_dirs(name, data_dir)
    where, files = locate(name, dirs)
    xtr, ytr, xte, yte, ncls = _CACHE.get((name,) + file_key(files), lambda: _read_only(read(where, files, name)))
    for y, split in ((ytr, "train"), (yte, "test")):
        if y.size and (int(y.min()) < 0 or int(y.max()) >= ncls):
            raise DatasetError(f"{where}: {split} labels outside 0..{ncls - 1} (corrupt file?)")
    x_train = normalised(xtr, *norm)
    return Dataset(
        x_train=x_train,
        y_train=torch.from_numpy(np.asarray(ytr, dtype=np.int64).copy()),
        x_test=normalised(xte, *norm),
        y_test=torch.from_numpy(np.asarray(yte, dtype=np.int64).copy()),
        num_classes=ncls,
        input_shape=tuple(int(s) for s in x_train.shape[1:]),
        name=name,
        source=str(where),
    )
