"""CIFAR-10 and CIFAR-100: the python pickle batches, unpickled with only numpy's globals allowed."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import DatasetError, Source, register
from .images import load_image_dataset
from .paths import not_found

try:  # numpy >= 2
    import numpy._core.multiarray  # noqa: F401

    _HAS_NP_CORE = True
except ImportError:  # pragma: no cover - numpy 1.x
    _HAS_NP_CORE = False


class _SafeUnpickler(pickle.Unpickler):
    """Only the few globals a CIFAR batch needs (numpy arrays); anything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            if module.startswith("numpy.core") and _HAS_NP_CORE:
                module = "numpy._core" + module[len("numpy.core") :]  # numpy 2 renamed numpy.core
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e
    except Exception as e:  # noqa: BLE001 - pickle raises many types on corrupt input
        raise DatasetError(
            f"{path}: corrupt or truncated CIFAR batch ({type(e).__name__}: {e}); delete it and fetch it again"
        ) from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: not a CIFAR batch (expected a dict, got {type(obj).__name__})")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    obj = _unpickle(path)
    if "data" not in obj or label_key not in obj:
        raise DatasetError(f"{path}: not a CIFAR batch (keys {sorted(obj)}; need 'data' and {label_key!r})")
    data = np.asarray(obj["data"])
    labels = np.asarray(obj[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{path}: 'data' should be uint8 N x 3072, got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DatasetError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    return data.reshape(-1, 3, 32, 32), labels


_CIFAR = {
    # name: (subdir, train files, test files, label key, classes)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
        10,
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


def _locate(name: str, dirs: Sequence[Path]) -> tuple[Path, list[Path]]:
    subdir, train_files, test_files, _, _ = _CIFAR[name]
    for d in dirs:
        for cand in (d / subdir, d):
            if all((cand / f).is_file() for f in train_files + test_files):
                return cand, [cand / f for f in train_files + test_files]
    raise not_found(name, dirs, f"{subdir}/{{{', '.join(train_files + test_files)}}}")


def _read(where: Path, files: list[Path], name: str):
    _, train_files, _, key, ncls = _CIFAR[name]
    batches = [_read_batch(p, key) for p in files]
    tr, te = batches[: len(train_files)], batches[len(train_files) :]
    xtr = np.concatenate([a for a, _ in tr])
    ytr = np.concatenate([b for _, b in tr])
    xte = np.concatenate([a for a, _ in te])
    yte = np.concatenate([b for _, b in te])
    return xtr, ytr, xte, yte, ncls


def _loader(name: str, norm):
    def load(data_dir=None, seed: int = 0):
        return load_image_dataset(name, data_dir, locate=_locate, read=_read, norm=norm)
    return load


# per-channel mean / std of the training sets (pixel values scaled to [0, 1])
register(Source("cifar10", _loader("cifar10", ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))),
                aliases=("cifar-10", "cifar_10")))
register(Source("cifar100", _loader("cifar100", ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))),
                aliases=("cifar-100", "cifar_100")))
