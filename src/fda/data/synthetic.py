"""A generated classification task: no files, deterministic by seed."""

from __future__ import annotations

import numpy as np
import torch

from .base import Dataset, DatasetError, Source, register

__all__ = ["make_synthetic", "SYNTHETIC_TRAIN", "SYNTHETIC_TEST", "SYNTHETIC_CLASSES"]

SYNTHETIC_TRAIN = 4096
SYNTHETIC_TEST = 1024
SYNTHETIC_CLASSES = 10


def _smooth_pattern(rng: np.random.Generator, n: int, size: int = 28, coarse: int = 7) -> np.ndarray:
    """n random smooth images (size x size): coarse Gaussian noise, bilinearly upsampled."""
    g = rng.standard_normal((n, coarse, coarse)).astype(np.float32)
    t = torch.from_numpy(g)[:, None]
    up = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=True)
    return up[:, 0].numpy()


def make_synthetic(
    num_train: int = SYNTHETIC_TRAIN,
    num_test: int = SYNTHETIC_TEST,
    *,
    seed: int = 0,
    num_classes: int = SYNTHETIC_CLASSES,
    size: int = 28,
    noise: float = 3.0,
) -> Dataset:
    """A procedurally generated 1 x size x size classification task (no files), deterministic by seed.

    Each class has a smooth random prototype image; a sample is its class prototype, scaled by a
    random contrast, shifted by up to 2 pixels, plus a smooth random "distractor" pattern and
    per-pixel Gaussian noise (std ``noise``, ~3x the prototype's std by default). With Adam and
    batch 32 (seed 0), an MLP reaches ~90% test accuracy in ~25-50 steps and LeNet-5 in
    ~100-200; both plateau near 97-98% (the noise makes 100% unreachable).
    """
    if num_train < 1 or num_test < 1 or num_classes < 2:
        raise DatasetError("synthetic dataset needs num_train >= 1, num_test >= 1, num_classes >= 2")
    rng = np.random.default_rng([int(seed), 0x5EED])
    protos = _smooth_pattern(rng, num_classes, size)
    protos /= protos.std(axis=(1, 2), keepdims=True)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, num_classes, n)
        contrast = rng.uniform(0.6, 1.4, (n, 1, 1)).astype(np.float32)
        x = protos[y] * contrast
        shifts = rng.integers(-2, 3, (n, 2))
        for dy in range(-2, 3):  # vectorised per shift value (25 groups), not per sample
            for dx in range(-2, 3):
                m = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
                if m.any():
                    x[m] = np.roll(x[m], (dy, dx), axis=(1, 2))
        x += 0.7 * _smooth_pattern(rng, n, size)
        x += noise * rng.standard_normal(x.shape).astype(np.float32)
        return x[:, None].astype(np.float32), y.astype(np.int64)

    xtr, ytr = sample(int(num_train))
    xte, yte = sample(int(num_test))
    mean, std = float(xtr.mean()), float(xtr.std())
    xtr = (xtr - mean) / std
    xte = (xte - mean) / std
    return Dataset(
        x_train=torch.from_numpy(np.ascontiguousarray(xtr)),
        y_train=torch.from_numpy(ytr),
        x_test=torch.from_numpy(np.ascontiguousarray(xte)),
        y_test=torch.from_numpy(yte),
        num_classes=num_classes,
        input_shape=(1, size, size),
        name="synthetic",
        source="",
    )


register(Source("synthetic", lambda data_dir=None, seed=0: make_synthetic(seed=seed)))
