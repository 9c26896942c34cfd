"""Improved precision and recall of generative models (Kynkäänniemi, Karras, Laine, Lehtinen &
Aila, NeurIPS 2019, "Improved Precision and Recall Metric for Assessing Generative Models").

Each set's manifold is the union of balls around its feature vectors, the radius of each being
the distance to its k-th nearest neighbour in the same set (eq. 1-2 of the paper, k = 3 there).
Precision is the fraction of generated samples inside the real manifold, recall the fraction of
real samples inside the generated manifold.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ..module_utils import check_integer

__all__ = ["PrecisionRecall", "in_manifold", "knn_radii"]


def knn_radii(x: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Distance of each row of x [N, F] to its k-th nearest other row: radii [N]."""
    if not 1 <= k < len(x):
        raise ValueError(f"k={k} nearest neighbours need more than k points, got {len(x)}")
    radii = [torch.cdist(x[i : i + chunk], x).topk(k + 1, dim=1, largest=False).values[:, k]
             for i in range(0, len(x), chunk)]  # column 0 is the point itself (distance 0)
    return torch.cat(radii)


def in_manifold(queries: Tensor, points: Tensor, radii: Tensor, chunk: int = 1024) -> Tensor:
    """Whether each query [Q, F] lies within radii[j] of some points[j] ([P, F], [P]): bool [Q]."""
    return torch.cat([(torch.cdist(queries[i : i + chunk], points) <= radii).any(dim=1)
                      for i in range(0, len(queries), chunk)])


def _check_features(features: Tensor, real: bool, *sets: list[Tensor]) -> None:
    """ValueError unless features is a finite real [B, F] with the F of the features already
    held; NaN/inf had given a silently wrong precision, another F an error only at compute."""
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() != 2:
        raise ValueError(f"features must be [B, F], got shape {list(features.shape)}")
    if features.is_complex() or features.dtype == torch.bool:
        raise ValueError(f"features must be real numbers, got dtype {features.dtype}")
    if not isinstance(real, (bool, np.bool_)):
        raise ValueError(f"real must be True or False, got {real!r}")
    held = next((held[0] for held in sets if isinstance(held, list) and held), None)
    if held is not None and features.shape[1] != held.shape[1]:
        raise ValueError(f"features have {features.shape[1]} columns, the features held so far {held.shape[1]}")
    finite = torch.isfinite(features).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(f"features contain NaN or inf ({int((~finite).sum())} of {len(features)} rows)")


class PrecisionRecall(Metric):
    """Improved precision and recall (Kynkäänniemi et al. 2019) of features.

    ``update(features [B, F], real)`` gathers features of either set (all-gathered across DDP
    ranks at ``compute``); ``compute()`` returns ``{"precision": [], "recall": []}``.

    Args:
        k: the k of the k-nearest-neighbour radii (3 in the paper).
        reset_real_features: whether ``reset()`` also clears the real features.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: int = 3, reset_real_features: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.k = check_integer("k", k, 1)  # (1.5 failed in topk at compute, "3" with a TypeError)
        self.reset_real_features = reset_real_features
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, features: Tensor, real: bool) -> None:
        """Add features [B, F] of real (``real=True``) or generated samples."""
        _check_features(features, real, self.real_features, self.fake_features)
        (self.real_features if real else self.fake_features).append(features.double())

    def compute(self) -> dict[str, Tensor]:
        real, fake = dim_zero_cat(self.real_features), dim_zero_cat(self.fake_features)
        for name, x in (("real", real), ("generated", fake)):
            if len(x) <= self.k:
                raise RuntimeError(f"precision/recall with k={self.k} needs more than {self.k} {name} samples, "
                                   f"got {len(x)}")
        precision = in_manifold(fake, real, knn_radii(real, self.k)).double().mean()
        recall = in_manifold(real, fake, knn_radii(fake, self.k)).double().mean()
        return {"precision": precision, "recall": recall}

    def reset(self) -> None:
        """Clear the generated features (and the real ones if ``reset_real_features``)."""
        real = list(self.real_features)
        super().reset()
        if not self.reset_real_features:
            self.real_features = real
