"""Helpers that several test modules share (test modules never import each other)."""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx_dataset(d: Path, n_train=20, n_test=8, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        IDX_NAMES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        IDX_NAMES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        IDX_NAMES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        IDX_NAMES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    d.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            with gzip.open(d / (name + ".gz"), "wb") as f:
                f.write(data)
        else:
            (d / name).write_bytes(data)
    return arrays


def write_cifar(d: Path, kind="cifar10", per_batch=6, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "cifar10":
        sub, files, key, ncls = d / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels", 10
    else:
        sub, files, key, ncls = d / "cifar-100-python", ["train", "test"], "fine_labels", 100
    sub.mkdir(parents=True, exist_ok=True)
    out = {}
    for f in files:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, ncls, per_batch).tolist()
        obj = {"batch_label": f, "data": data, key: labels, "filenames": [f"{i}.png" for i in range(per_batch)]}
        if kind == "cifar100":
            obj["coarse_labels"] = [0] * per_batch
        with open(sub / f, "wb") as fh:
            pickle.dump(obj, fh, protocol=2)
        out[f] = (data, labels)
    return out


def seeded_random():
    """A random.Random for a test's random choices. The seed is printed, so pytest shows it with a
    failure, and FDA_TEST_SEED=N repeats the same choices."""
    import os
    import random

    seed = int(os.environ.get("FDA_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"random choices seeded with {seed} (FDA_TEST_SEED={seed} repeats them)", flush=True)
    return random.Random(seed)
