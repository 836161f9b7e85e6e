"""Models of the FDA paper's experiments; see :mod:`fda.models.zoo` for the architectures."""

from .zoo import (
    MODEL_NAMES,
    TORCHVISION_MODELS,
    CharLM,
    LeNet5,
    MLP,
    ModelError,
    VGG16Star,
    build_model,
    count_params,
    torchvision_available,
)

__all__ = [
    "MODEL_NAMES",
    "TORCHVISION_MODELS",
    "CharLM",
    "LeNet5",
    "MLP",
    "ModelError",
    "VGG16Star",
    "build_model",
    "count_params",
    "torchvision_available",
]
