"""Models of the FDA paper's experiments (docs/algorithm.md, "Models").

``build_model(name, input_shape, num_classes)``:

- ``lenet5``: conv(C->6, 5x5, pad 2) - ReLU - maxpool2 - conv(6->16, 5x5) - ReLU - maxpool2 -
  FC 400->120->84->classes (ReLU); 61,706 parameters on 1x28x28 / 10 classes.
- ``mlp``: flatten - FC (C*H*W)->200 - ReLU - FC 200->classes (159,010 params on MNIST).
- ``vgg16star``: the paper's VGG16*: VGG16 without its 512-channel blocks and with FC 4096
  replaced by 512: conv3x3 'same' 64,64 - pool - 128,128 - pool - 256,256 - pool - flatten
  (256*3*3 = 2304 on 28x28) - FC 512 - FC 512 - FC classes, ReLU, no batch norm:
  exactly 2,592,202 parameters on 1x28x28 / 10 classes (the only natural variant that matches:
  three 256 convs, batch norm or a BN'd FC all give other counts).
- ``charlm``: a causal character model for ``shakespeare``, LEAF's Shakespeare LSTM made smaller to
  train in minutes on 2 CPU cores: embedding 8 - 2-layer LSTM, hidden 64 - FC 64->vocabulary at
  every position (logits N x vocabulary x L, cross-entropy's layout for sequences); 57,699
  parameters with the 75-character vocabulary (LEAF: hidden 256, ~820k).
- ``densenet121`` / ``densenet201`` (torchvision, classifier resized to ``num_classes``:
  6,964,106 / 18,112,138 params on CIFAR-10, the paper's counts).
- ``convnext_large`` (torchvision ConvNeXt-Large backbone, its LayerNorm head kept, then
  FC 1536->512 - ReLU - FC 512->classes: 197,068,580 params on CIFAR-100, the paper's count,
  which matches Keras' ConvNeXtLarge(include_top=False) + Dense(512) + Dense(100)).
  ImageNet weights are loaded from ``weights=PATH`` or the torch hub cache if present, else the
  model is randomly initialised with a warning (nothing is downloaded).

The torchvision models need ``torchvision`` (``pip install fda[vision]``); without it
``build_model`` raises :class:`ModelError` saying so. Initialisation is deterministic given
``torch.manual_seed``.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["MODEL_NAMES", "TORCHVISION_MODELS", "CharLM", "ModelError", "build_model", "count_params",
           "torchvision_available"]


class ModelError(ValueError):
    """Unknown model name, unusable input shape, or a missing optional dependency."""


MODEL_NAMES: tuple[str, ...] = ("lenet5", "mlp", "vgg16star", "charlm", "densenet121", "densenet201", "convnext_large")
TORCHVISION_MODELS: tuple[str, ...] = ("densenet121", "densenet201", "convnext_large")

_ALIASES = {
    "lenet": "lenet5",
    "lenet-5": "lenet5",
    "vgg16*": "vgg16star",
    "vgg16_star": "vgg16star",
    "vgg16-star": "vgg16star",
    "densenet-121": "densenet121",
    "densenet-201": "densenet201",
    "convnextlarge": "convnext_large",
    "convnext-large": "convnext_large",
    "char-lm": "charlm",
    "char_lm": "charlm",
}

# ImageNet checkpoints torchvision would download (looked for in the torch hub cache only).
_HUB_FILES = {"convnext_large": "convnext_large-ea097f82.pth", "densenet121": "densenet121-a639ec97.pth",
              "densenet201": "densenet201-c1103571.pth"}


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _shape(input_shape) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in input_shape)
    except (TypeError, ValueError) as e:
        raise ModelError(f"input_shape must be (C, H, W), got {input_shape!r}") from e
    if min(c, h, w) < 1:
        raise ModelError(f"input_shape must be positive, got {input_shape!r}")
    return c, h, w


class LeNet5(nn.Module):
    def __init__(self, input_shape=(1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        c, h, w = _shape(input_shape)
        fh, fw = (h // 2 - 4) // 2, (w // 2 - 4) // 2
        if fh < 1 or fw < 1:
            raise ModelError(f"lenet5 needs inputs of at least 12x12, got {h}x{w}")
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * fh * fw, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    def __init__(self, input_shape=(1, 28, 28), num_classes: int = 10, hidden: int = 200) -> None:
        super().__init__()
        c, h, w = _shape(input_shape)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VGG16Star(nn.Module):
    """VGG16 without the 512-channel blocks, FC 4096 -> 512 (the FDA paper's VGG16*)."""

    CFG = (64, 64, "M", 128, 128, "M", 256, 256, "M")

    def __init__(self, input_shape=(1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        c, h, w = _shape(input_shape)
        if h < 8 or w < 8:
            raise ModelError(f"vgg16star needs inputs of at least 8x8, got {h}x{w}")
        layers: list[nn.Module] = []
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * h * w, 512), nn.ReLU(),
            nn.Linear(512, 512), nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class CharLM(nn.Module):
    """Next-character logits at every position of a window of character indices (N x L)."""

    def __init__(self, input_shape=(80,), num_classes: int = 75, embed: int = 8, hidden: int = 64,
                 layers: int = 2) -> None:
        super().__init__()
        if len(tuple(input_shape)) != 1 or int(tuple(input_shape)[0]) < 1:
            raise ModelError(f"charlm needs windows of character indices (input shape (L,)), got {input_shape!r}; "
                             "use dataset=shakespeare")
        self.embed = nn.Embedding(num_classes, embed)  # inputs and targets share the vocabulary
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(x))
        return self.head(h).transpose(1, 2)


def torchvision_available() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or a torchvision built for another torch failing on import
        return False
    return True


def _torchvision(name: str):
    try:
        import torchvision.models as tvm
    except Exception as e:  # noqa: BLE001 - a mismatched torchvision raises RuntimeError/OSError too
        raise ModelError(
            f"model {name!r} needs torchvision, which is not installed or does not import with this torch "
            f"({torch.__version__}): {type(e).__name__}: {e}. Install the torchvision release matching your "
            "torch (pip install 'fda[vision]' with a matching pin), or use lenet5 / mlp / vgg16star."
        ) from e
    return tvm


def _load_weights(model: nn.Module, name: str, weights) -> bool:
    """Load ImageNet weights from ``weights`` (a path) or the torch hub cache; True if loaded."""
    candidates: list[Path] = []
    if weights not in (None, "", False, True, "imagenet"):
        p = Path(os.fspath(weights)).expanduser()
        if not p.is_file():
            raise ModelError(f"weights file not found: {p}")
        candidates.append(p)
    else:
        candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / _HUB_FILES[name])
    for p in candidates:
        if p.is_file():
            state = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            if name.startswith("densenet"):  # old torchvision DenseNet checkpoints: "norm.1" -> "norm1"
                pat = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
                state = {(pat.sub(lambda m: m.group(1) + m.group(2), k)): v for k, v in state.items()}
            own = model.state_dict()
            # the classifier (and a non-RGB stem) are replaced: load everything whose name and shape match
            keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            if not keep:
                raise ModelError(f"{p}: no parameter of {name} matches this checkpoint")
            model.load_state_dict(keep, strict=False)
            missing = [k for k in own if k not in keep]
            if len(missing) > 8:
                warnings.warn(
                    f"{name}: loaded {len(keep)} of {len(own)} tensors from {p}; {len(missing)} left at "
                    f"random init (e.g. {missing[:3]})",
                    stacklevel=4,
                )
            return True
    return False


def _build_torchvision(name: str, input_shape, num_classes: int, weights) -> nn.Module:
    tvm = _torchvision(name)
    c, h, w = _shape(input_shape)
    if h < 32 or w < 32:
        raise ModelError(f"{name} needs inputs of at least 32x32 (5 stride-2 stages), got {h}x{w}")
    if name in ("densenet121", "densenet201"):
        model = getattr(tvm, name)(weights=None, num_classes=num_classes)
        if c != 3:
            old = model.features.conv0
            model.features.conv0 = nn.Conv2d(c, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
            nn.init.kaiming_normal_(model.features.conv0.weight)
    else:  # convnext_large
        model = tvm.convnext_large(weights=None)
        if c != 3:
            old = model.features[0][0]
            model.features[0][0] = nn.Conv2d(c, old.out_channels, old.kernel_size, old.stride, old.padding)
        in_f = model.classifier[2].in_features  # classifier = LayerNorm2d, Flatten, Linear
        head = nn.Sequential(nn.Linear(in_f, 512), nn.ReLU(), nn.Linear(512, num_classes))
        for m in head:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        model.classifier[2] = head
    want = weights is not None and weights is not False
    if name == "convnext_large" and weights is None:
        want = True  # the paper fine-tunes an ImageNet-pretrained ConvNeXt-Large
    if want:
        if not _load_weights(model, name, weights):
            warnings.warn(
                f"{name}: ImageNet weights not found (looked in {Path(torch.hub.get_dir()) / 'checkpoints'} "
                f"for {_HUB_FILES[name]}); nothing is downloaded, the model is randomly initialised. "
                "Pass weights=PATH to fine-tune from a local checkpoint.",
                stacklevel=3,
            )
    return model


def build_model(name: str, input_shape, num_classes: int, *, weights=None) -> nn.Module:
    """Build model ``name`` (one of ``MODEL_NAMES``) for inputs ``(C, H, W)`` and ``num_classes``.

    ``weights``: only for torchvision models: a checkpoint path, or None (convnext_large then
    tries the torch hub cache, the others start from random init), or False (never load).
    """
    key = _ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in MODEL_NAMES:
        raise ModelError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    num_classes = int(num_classes)
    if num_classes < 2:
        raise ModelError(f"num_classes must be >= 2, got {num_classes}")
    text_input = len(tuple(input_shape)) == 1
    if key == "charlm" or text_input:
        if not (key == "charlm" and text_input):
            raise ModelError(f"model {key!r} does not fit {'a text' if text_input else 'an image'} dataset "
                             f"(input shape {tuple(input_shape)}): use model=charlm with dataset=shakespeare, "
                             "an image model with the image datasets")
        return CharLM(input_shape, num_classes)
    if key == "lenet5":
        return LeNet5(input_shape, num_classes)
    if key == "mlp":
        return MLP(input_shape, num_classes)
    if key == "vgg16star":
        return VGG16Star(input_shape, num_classes)
    return _build_torchvision(key, input_shape, num_classes, weights)

