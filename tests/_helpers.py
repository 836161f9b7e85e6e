"""Helpers that several test modules share (test modules never import each other)."""
import gzip
import importlib.util
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import torch

from fda.kernels import drift_state_out, packed_size
from fda.monitor import exact_variance

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


# ------------------------------------------------------------------ monitors
def drifts(kind: str, k: int, d: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn(k, d, generator=gen)
    if kind == "shared_direction":  # workers drift the same way: small variance, large ||mean u||
        base = torch.randn(d, generator=gen)
        return base + 0.05 * torch.randn(k, d, generator=gen)
    if kind == "one_hot":
        u = torch.zeros(k, d)
        u[:, int(torch.randint(d, (1,), generator=gen))] = torch.rand(k, generator=gen) + 0.5
        return u
    if kind == "constant":
        return torch.full((k, d), 0.3) * (1 + torch.rand(k, 1, generator=gen))
    if kind == "sparse":
        u = torch.zeros(k, d)
        idx = torch.randint(d, (k, max(1, d // 100)), generator=gen)
        u.scatter_(1, idx, torch.randn(idx.shape, generator=gen))
        return u
    raise ValueError(kind)


def local_state(monitor, u_k: torch.Tensor, xi=None, seed: int = 7) -> np.ndarray:
    """S_k as the synchronizer computes it: the kernel's packed output, mapped by the monitor."""
    depth, width = monitor.sketch_depth, monitor.sketch_width
    packed = torch.empty(packed_size(depth, width), dtype=torch.float64)
    drift_state_out(u_k.contiguous(), torch.zeros(u_k.numel()), packed, xi=xi, sketch_depth=depth,
                    sketch_width=width, seed=seed)
    return monitor.local_state(packed).numpy()


def true_variance(u: torch.Tensor) -> float:
    u = u.double()
    return exact_variance(float((u ** 2).sum(1).mean()), float((u.mean(0) ** 2).sum()))


def load_bench_script(name: str):
    """bench/<name>.py as a module (the bench scripts are not a package), registered as bench_<name>."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
