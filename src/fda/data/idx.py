"""MNIST and Fashion-MNIST: the idx file format (plain or .gz)."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import DatasetError, Source, register
from .images import load_image_dataset
from .paths import not_found

__all__ = ["read_idx"]

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DatasetError(
            f"{path}: corrupt or truncated gzip file ({e}); delete it and fetch it again"
        ) from e
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e


def read_idx(path: str | os.PathLike, expect_ndim: int | None = None) -> np.ndarray:
    """Parse an idx file (plain or .gz) into a read-only numpy array, checking magic and size."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatasetError(f"{path}: truncated idx file ({len(raw)} bytes, no header)")
    zero, code, ndim = int.from_bytes(raw[0:2], "big"), raw[2], raw[3]
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DatasetError(
            f"{path}: not an idx file (bad magic number 0x{raw[:4].hex()}; "
            "expected 0x00000801 for labels or 0x00000803 for images)"
        )
    if expect_ndim is not None and ndim != expect_ndim:
        raise DatasetError(
            f"{path}: idx file has {ndim} dimensions (magic 0x{raw[:4].hex()}), expected {expect_ndim}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated idx file (header needs {header} bytes, file has {len(raw)})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "corrupt (trailing bytes)"
        raise DatasetError(
            f"{path}: {kind} idx file: header says shape {dims} -> {expected} bytes, file has {len(raw)}; "
            "delete it and fetch it again"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    if dtype.byteorder == ">":
        arr = arr.astype(dtype.newbyteorder("="))
    return arr


def _find_idx_dir(dirs: Sequence[Path]) -> tuple[Path, dict[str, Path]] | None:
    for d in dirs:
        for sd in (d, d / "raw"):  # also torchvision's NAME/raw layout
            if not sd.is_dir():
                continue
            found: dict[str, Path] = {}
            for key, base in _IDX_FILES.items():
                dotted = base.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-ubyte
                for cand in (base, base + ".gz", dotted, dotted + ".gz"):
                    p = sd / cand
                    if p.is_file():
                        found[key] = p
                        break
            if len(found) == len(_IDX_FILES):
                return sd, found
    return None


def _locate(name: str, dirs: Sequence[Path]) -> tuple[Path, list[Path]]:
    hit = _find_idx_dir(dirs)
    if hit is None:
        raise not_found(name, dirs, f"{', '.join(_IDX_FILES.values())} (plain or .gz)")
    where, files = hit
    return where, [files[k] for k in _IDX_FILES]


def _read(where: Path, files: list[Path], name: str):
    xtr, ytr, xte, yte = (read_idx(p, nd) for p, nd in zip(files, (3, 1, 3, 1)))
    for x, y, split in ((xtr, ytr, "train"), (xte, yte, "test")):
        if x.shape[0] != y.shape[0]:
            raise DatasetError(
                f"{where}: {split} images ({x.shape[0]}) and labels ({y.shape[0]}) disagree in count"
            )
    if xtr.shape[1:] != xte.shape[1:]:
        raise DatasetError(f"{where}: train images {xtr.shape[1:]} and test images {xte.shape[1:]} differ in size")
    if xtr.dtype != np.uint8 or xte.dtype != np.uint8:
        raise DatasetError(f"{where}: expected unsigned-byte images (magic 0x00000803), got {xtr.dtype}")
    return xtr[:, None], ytr.astype(np.int64), xte[:, None], yte.astype(np.int64), 10


def _loader(name: str, norm):
    def load(data_dir=None, seed: int = 0):
        return load_image_dataset(name, data_dir, locate=_locate, read=_read, norm=norm)
    return load


# per-channel mean / std of the training sets (pixel values scaled to [0, 1])
register(Source("mnist", _loader("mnist", ((0.1307,), (0.3081,))), system_dir=True))
register(Source("fashion-mnist", _loader("fashion-mnist", ((0.2860,), (0.3530,))),
                aliases=("fashion_mnist", "fashionmnist", "fmnist"), system_dir=True,
                debian_package="dataset-fashion-mnist"))
