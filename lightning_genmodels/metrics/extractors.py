"""Feature extractors in the form torchmetrics' FID and KID take as ``feature``: an nn.Module
with ``num_features`` that maps images [N, 1, 28, 28] in [0, 1] to features [N, F] (float64, so
that FID is computed in float64 end to end), plus ``sha256`` naming its weights (a cache key).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Union

import torch
from torch import Tensor, nn

from .features import MNISTFeatureNet, check_images, file_sha256, load_feature_net

__all__ = ["FeatureName", "InceptionFeatures", "MNISTFeatures", "build_extractor"]

# "mnist": our classifier's 128 penultimate features; an int: torch-fidelity's Inception-v3 layer
FeatureName = Union[Literal["mnist"], Literal[64, 192, 768, 2048]]
INCEPTION_LAYERS = (64, 192, 768, 2048)


def weights_sha256(net: nn.Module) -> str:
    """Hex SHA-256 of a network's state dict (names and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class MNISTFeatures(nn.Module):
    """The MNIST feature network's penultimate layer as a torchmetrics ``feature``.

    Args:
        net: a trained :class:`MNISTFeatureNet`; None loads the shipped weights. Its ``sha256``
            (the weights file's) keys the real-feature cache; a network without one is keyed
            by its weights when wrapped.
    """

    def __init__(self, net: MNISTFeatureNet | None = None) -> None:
        super().__init__()
        self.net = load_feature_net() if net is None else net
        self.num_features = self.net.num_features
        # the real-feature cache key: the weights file's (load_feature_net sets it), else the
        # weights' own (one fixed key gave every such network the cached features of the first)
        self.sha256 = getattr(self.net, "sha256", None) or weights_sha256(self.net)
        self._memo: tuple[Tensor, Tensor] | None = None
        self._remembering = False

    def train(self, mode: bool = True) -> "MNISTFeatures":
        """Stays in eval mode, as torchmetrics' Inception does: ``train()`` on a module holding the
        metric (Lightning calls it every epoch) turned on dropout and batch statistics, which
        changed the features and moved the network's running statistics for good."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, imgs: Tensor) -> Tensor:
        """imgs [N, 1, 28, 28] in [0, 1] -> features float64 [N, 128].

        Inside :meth:`remembering` the features of the last batch are kept: FID, KID,
        precision/recall and the class histogram all call this on the same tensor, and only the
        first call runs the network.
        """
        memo = self._memo
        if memo is not None and memo[0] is imgs:
            return memo[1]
        check_images(imgs)
        feats = self.net.features(imgs.float()).double()
        if self._remembering:
            self._memo = (imgs, feats)
        return feats

    @torch.no_grad()
    def logits(self, imgs: Tensor) -> Tensor:
        """Class logits [N, 10] from the (remembered) features of imgs [N, 1, 28, 28]."""
        return self.net.head(self.forward(imgs).float())

    @contextmanager
    def remembering(self) -> Iterator[None]:
        """Remember the features of the last batch until the scope ends. The batch is matched by
        identity only (inference tensors have no version counter), so the caller must not change
        it in place inside the scope."""
        self._remembering = True
        try:
            yield
        finally:
            self._remembering, self._memo = False, None


class Logits(nn.Module):
    """``extractor.logits`` as a module (the classifier of ClassCoverage, sharing the features)."""

    def __init__(self, extractor: MNISTFeatures) -> None:
        super().__init__()
        self.extractor = [extractor]  # a list: not registered twice as a submodule

    def forward(self, imgs: Tensor) -> Tensor:
        return self.extractor[0].logits(imgs)


class InceptionFeatures(nn.Module):
    """torch-fidelity's Inception-v3 (the one FID is usually quoted with) on digits: the grey
    images are repeated to 3 channels and rounded to bytes; torch-fidelity resizes them to 299.

    Needs ``pip install torch-fidelity`` and the weights file
    ``pt_inception-2015-12-05-6726825d.pth`` (torch-fidelity's release) on disk, given as
    ``weights_path`` or ``$LGM_INCEPTION_WEIGHTS``: nothing is downloaded.

    Args:
        layer: which Inception feature layer: 64, 192, 768 or 2048.
        weights_path: the weights file.
    """

    def __init__(self, layer: int = 2048, weights_path: str | Path | None = None) -> None:
        super().__init__()
        if layer not in INCEPTION_LAYERS:
            raise ValueError(f"Inception feature layer must be one of {INCEPTION_LAYERS}, got {layer!r}")
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

        if not _TORCH_FIDELITY_AVAILABLE:
            raise ModuleNotFoundError(
                f"feature={layer} (Inception-v3) needs torch-fidelity: pip install torch-fidelity, "
                f"or use feature='mnist' (the shipped MNIST network)"
            )
        weights_path = weights_path or os.environ.get("LGM_INCEPTION_WEIGHTS")
        if not weights_path or not Path(weights_path).is_file():
            raise FileNotFoundError(
                f"feature={layer} (Inception-v3) needs its weights file on disk "
                f"(pt_inception-2015-12-05-6726825d.pth); pass weights_path or set "
                f"$LGM_INCEPTION_WEIGHTS (got {weights_path!r})"
            )
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.inception = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=[str(layer)], feature_extractor_weights_path=str(weights_path)
        )
        self.num_features = layer
        self.sha256 = hashlib.sha256(f"inception-v3:{layer}:{file_sha256(weights_path)}".encode()).hexdigest()

    @torch.no_grad()
    def forward(self, imgs: Tensor) -> Tensor:
        """imgs [N, 1, 28, 28] in [0, 1] -> features float64 [N, layer]."""
        check_images(imgs)
        as_bytes = (imgs.expand(-1, 3, -1, -1) * 255).round().to(torch.uint8)
        return self.inception(as_bytes).double()


def build_extractor(
    feature: FeatureName = "mnist", weights_path: str | Path | None = None, net: MNISTFeatureNet | None = None
) -> nn.Module:
    """The extractor named by ``feature``: "mnist" (our network; ``weights_path`` overrides the
    shipped weights) or an Inception layer 64/192/768/2048 (``weights_path``: Inception's file)."""
    if feature == "mnist":
        return MNISTFeatures(net if net is not None else load_feature_net(weights_path))
    if isinstance(feature, int) and not isinstance(feature, bool):
        return InceptionFeatures(feature, weights_path)
    raise ValueError(f"feature must be 'mnist' or an Inception layer in {INCEPTION_LAYERS}, got {feature!r}")
