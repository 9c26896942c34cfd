"""The MNIST feature network: a small CNN classifier whose penultimate layer is the feature
space for FID, KID and precision/recall on 28×28 digits (Inception features fit them poorly and
need weights downloaded at run time).

The weights ship in ``weights/mnist_features.pt`` (a float32 state dict, ~0.98 MB), rebuilt by
``python -m lightning_genmodels.metrics.train_features`` (seeded). They are loaded with
``torch.load(weights_only=True)`` after their SHA-256 is checked against ``WEIGHTS_SHA256``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_WEIGHTS",
    "WEIGHTS_SHA256",
    "FeatureWeightsError",
    "MNISTFeatureNet",
    "check_images",
    "file_sha256",
    "load_feature_net",
]

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "mnist_features.pt"
# SHA-256 of the shipped weights file; printed by train_features.py when it writes them.
WEIGHTS_SHA256 = "97916c3b6b1bef0c22298b07e2dbb4dbd9210ed3c32d64e81072064ef1d19a41"


class FeatureWeightsError(RuntimeError):
    """The feature network's weights file is missing, or its SHA-256 is not the expected one."""


def check_images(x: Tensor, name: str = "images") -> None:
    """Raise ValueError unless ``x`` is a finite float batch [N, 1, 28, 28] with values in [0, 1]."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"{name} must have shape [N, 1, 28, 28], got {list(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor with values in [0, 1], got dtype {x.dtype}")
    if x.numel() == 0:
        return
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    lo, hi = x.min().item(), x.max().item()
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")


class MNISTFeatureNet(nn.Module):
    """CNN classifier for 28×28 digits; ``features`` is its penultimate layer.

    conv3×3(1→32) → pool → conv3×3(32→64) → pool → conv3×3(64→128) → pool (each conv with batch
    norm and ReLU) → linear(1152→128) + ReLU = features [N, 128] → dropout → linear(128→10).

    Args:
        num_classes: outputs of the last layer.
        num_features: width of the feature layer.

    Inputs are images [N, 1, 28, 28] in [0, 1]; they are standardised inside with MNIST's pixel
    mean and standard deviation.
    """

    mean, std = 0.1307, 0.3081  # MNIST training-set pixel statistics

    def __init__(self, num_classes: int = 10, num_features: int = 128) -> None:
        super().__init__()
        blocks = []
        for c_in, c_out in ((1, 32), (32, 64), (64, 128)):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.conv = nn.Sequential(*blocks)  # 28 -> 14 -> 7 -> 3
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(128 * 3 * 3, num_features), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(num_features, num_classes)
        self.num_features = num_features

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations [N, num_features] of images x [N, 1, 28, 28] in [0, 1]."""
        return self.fc(self.conv((x - self.mean) / self.std))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits [N, num_classes]."""
        return self.head(self.dropout(self.features(x)))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_feature_net(path: str | Path | None = None, sha256: str | None = None) -> MNISTFeatureNet:
    """The trained feature network in eval mode, with gradients off.

    Args:
        path: weights file; None means the shipped ``DEFAULT_WEIGHTS``.
        sha256: expected hex digest; None means ``WEIGHTS_SHA256`` for the shipped file and no
            check for a file of your own.

    Raises:
        FeatureWeightsError: the file is missing, its SHA-256 differs from the expected one, or
            it is not a state dict of :class:`MNISTFeatureNet`.
    """
    path = Path(DEFAULT_WEIGHTS if path is None else path)
    if sha256 is None and path.resolve() == DEFAULT_WEIGHTS:
        sha256 = WEIGHTS_SHA256
    if not path.is_file():
        raise FeatureWeightsError(
            f"MNIST feature-network weights not found at {path}; reinstall lightning_genmodels "
            f"or rebuild them with `python -m lightning_genmodels.metrics.train_features --out {path}`"
        )
    digest = file_sha256(path)
    if sha256 is not None and digest != sha256:
        raise FeatureWeightsError(
            f"MNIST feature-network weights {path} have SHA-256 {digest}, expected {sha256}; the file "
            f"is corrupt or from another training run: reinstall the package or pass its own hash"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, zip or EOF errors (torch's text would advise weights_only=False)
        raise FeatureWeightsError(f"MNIST feature-network weights {path} are not a file torch.load can read "
                                  f"({type(err).__name__}); pass the file train_features.py wrote") from err
    net = MNISTFeatureNet()
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:  # wrong keys or shapes, or not a dict
        raise FeatureWeightsError(f"MNIST feature-network weights {path} are not an MNISTFeatureNet "
                                  f"state dict: {str(err)[:300]}") from err
    net.sha256 = digest
    return net.eval().requires_grad_(False)
