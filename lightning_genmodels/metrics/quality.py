"""SampleQuality: FID, KID, improved precision/recall and mode coverage of generated digits,
all against one cached set of real features, all synchronised across DDP ranks by torchmetrics.

    quality = SampleQuality(data_dir="../shared/data/mnist")       # test set, cached features
    for images in batches_of_samples:                              # [B, 1, 28, 28] in [0, 1]
        quality.update(images)
    quality.compute()  # {"fid", "kid", "kid_std", "precision", "recall", "coverage", "missing",
                       #  "confidence", "histogram"}
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities import dim_zero_cat

from ..module_utils import as_integer
from .classes import ClassCoverage
from .extractors import FeatureName, Logits, build_extractor
from .features import check_images, load_feature_net
from .precision_recall import PrecisionRecall
from .real import load_real_images, real_features

__all__ = ["KID_MIN_SUBSET", "SampleQuality", "min_samples", "sample_chunks"]

KID_MIN_SUBSET = 2  # KID's unbiased MMD² divides by m (m - 1): a subset of 1 gives NaN


def min_samples(k: int = 3) -> int:
    """Fewest images of either set that SampleQuality scores: precision/recall's k-th
    neighbour radii need k + 1 (FID's covariance and KID need only 2)."""
    return k + 1


def sample_chunks(num_samples: int, batch_size: int, seed: int, rank: int = 0,
                  world_size: int = 1) -> list[tuple[int, int]]:
    """(seed, size) of the chunks of ``batch_size`` generated images that ``rank`` of
    ``world_size`` draws: chunk j has seed ``seed + j`` and goes to rank ``j % world_size``, so
    the union over ranks is the same set of samples for any number of processes."""
    starts = range(0, num_samples, batch_size)
    return [(seed + j, min(batch_size, num_samples - s)) for j, s in enumerate(starts) if j % world_size == rank]


def canonical_order(x: Tensor) -> Tensor:
    """Rows of x [N, F] sorted by a fixed random projection: the same order for any permutation."""
    w = torch.randn(x.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return x[torch.argsort(x.double() @ w.to(x.device), stable=True)]


class FiniteFID(FrechetInceptionDistance):
    """torchmetrics' FID, refusing statistics that would make Σ_real Σ_fake non-finite: the
    matrix square root (LAPACK's DGEBAL in torch.linalg.eigvals) kills the process on NaN/inf
    instead of raising. Checked after the DDP sync, so every rank raises together."""

    def compute(self) -> Tensor:
        bounds = [_covariance_bound(self, which) for which in ("real", "fake")]
        # |(Σ_r Σ_f)_ij| <= F max_i Σ_r,ii max_i Σ_f,ii (Cauchy-Schwarz), Σ_ii <= cov_sum_ii / (n - 1)
        if not bounds[0] * bounds[1] * len(self.real_features_sum) < 1e300:
            raise ValueError(
                f"FID statistics are too large (largest feature variances: real {bounds[0]:.3g}, generated "
                f"{bounds[1]:.3g}): Σ_real Σ_fake would overflow float64; rescale the features"
            )
        return super().compute()


def _covariance_bound(fid: FrechetInceptionDistance, which: str) -> float:
    """max_i cov_sum_ii / (n - 1) of the ``which`` ("real"/"fake") features; ValueError if a
    statistic is NaN or infinite."""
    total, cov_sum = getattr(fid, f"{which}_features_sum"), getattr(fid, f"{which}_features_cov_sum")
    if not (torch.isfinite(total).all() and torch.isfinite(cov_sum).all()):
        name = "real" if which == "real" else "generated"
        raise ValueError(f"FID statistics of the {name} features contain NaN or inf: check the {name} "
                         f"features (or the feature network's output) for NaN, inf or huge values")
    n = int(getattr(fid, f"{which}_features_num_samples"))
    return cov_sum.diagonal().max().item() / max(n - 1, 1) if n else 0.0


class OrderFreeKID(KernelInceptionDistance):
    """torchmetrics' KID, with the features put in a canonical order before its random subsets
    are drawn: DDP gathers them rank by rank, so without it KID would depend on the world size."""

    def compute(self) -> tuple[Tensor, Tensor]:
        self.real_features = [canonical_order(dim_zero_cat(self.real_features))]
        self.fake_features = [canonical_order(dim_zero_cat(self.fake_features))]
        return super().compute()


class SampleQuality(nn.Module):
    """Sample-quality metrics of generated MNIST-like images against real images.

    FID and KID are torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` with
    our extractor as ``feature`` (Heusel et al. 2017; Bińkowski et al. 2018); precision/recall
    and class coverage are :class:`PrecisionRecall` and :class:`ClassCoverage`. The real features
    are set once (never recomputed per evaluation); ``reset()`` clears only generated samples.

    Under DDP pass ``rank`` and ``world_size`` to :meth:`set_real`: each rank keeps the rows
    ``rank::world_size`` of the real features, so the states summed/gathered by torchmetrics at
    ``compute()`` are exactly those of the whole real set, and the generated samples may be split
    across ranks in any way.

    Args:
        feature: "mnist" (the shipped network, 128 features) or an Inception layer (2048 needs
            torch-fidelity and ``weights_path``).
        weights_path: weights of the feature network (None: the shipped MNIST weights).
        kid_subsets: KID subsets (torchmetrics' ``subsets``).
        kid_subset_size: KID subset size (>= 2), capped at the sample counts at compute time.
        k: neighbours for the precision/recall radii.
        min_class_share: share below which a digit counts as missing.
        seed: seed of KID's random subsets, so ``compute()`` is repeatable.
    """

    def __init__(
        self,
        feature: FeatureName = "mnist",
        weights_path: str | Path | None = None,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        k: int = 3,
        min_class_share: float = 0.02,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if kid_subset_size < KID_MIN_SUBSET:
            raise ValueError(f"kid_subset_size must be >= {KID_MIN_SUBSET}, got {kid_subset_size}")
        if feature == "mnist":
            self.extractor = build_extractor("mnist", weights_path)
            classifier = Logits(self.extractor)  # the class histogram reuses the feature pass
        else:
            self.extractor = build_extractor(feature, weights_path)
            classifier = load_feature_net()
        # no cached compute(): set_real and compute's KID subset size change states behind update()'s
        # back, and a cached result would then be stale
        self.fid = FiniteFID(feature=self.extractor, reset_real_features=False, normalize=True,
                             compute_with_cache=False)
        self.fid.orig_dtype = torch.float64  # update() sets it (our features are float64): a rank with none needs it
        with warnings.catch_warnings():  # we keep 10k features, not a large dataset
            warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance` will save all")
            self.kid = OrderFreeKID(
                feature=self.extractor, subsets=kid_subsets, subset_size=kid_subset_size,
                reset_real_features=False, normalize=True, compute_with_cache=False,
            )
        self.pr = PrecisionRecall(k=k, compute_with_cache=False)
        self.classes = ClassCoverage(classifier, min_share=min_class_share)
        self.kid_subset_size = kid_subset_size
        self.seed = seed
        self.num_real = 0

    @property
    def device(self) -> torch.device:
        return self.fid.real_features_sum.device

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> "SampleQuality":
        # follow device moves, never dtype casts: module.to(torch.bfloat16) (a bf16-true fit of a
        # LightningModule holding this) cast the float64 FID sums and the feature network, whose
        # float32 input then failed with a dtype mismatch
        return super()._apply(lambda t: t.to(fn(t).device), recurse)

    def set_real(self, features: Tensor, rank: int = 0, world_size: int = 1) -> None:
        """Use real features [N, F] (this rank keeps rows ``rank::world_size``); ValueError if
        any is NaN or inf, or so large that their float64 second moments overflow."""
        n_feat = self.extractor.num_features
        if features.dim() != 2 or features.shape[1] != n_feat:
            raise ValueError(f"real features must be [N, {n_feat}], got {list(features.shape)}")
        if features.is_complex():  # (the cast to float64 dropped the imaginary part)
            raise ValueError(f"real features must be real numbers, got dtype {features.dtype}")
        if not 0 <= rank < world_size:  # (rank 2 of 2 kept a share of nothing, silently)
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if not torch.isfinite(features).all():
            bad = int((~torch.isfinite(features)).any(dim=1).sum())
            raise ValueError(f"real features contain NaN or inf ({bad} of {len(features)} rows)")
        if not torch.isfinite(features.double().square().sum(dim=0)).all():  # the diagonal of f^T f
            raise ValueError(f"real features are too large for FID (max |value| {features.abs().max().item():.3g}): "
                             f"their float64 sum of squares overflows")
        self.num_real = len(features)
        f = features[rank::world_size].to(self.device, torch.float64)
        self.fid.real_features_sum = f.sum(dim=0)
        self.fid.real_features_cov_sum = f.T @ f
        self.fid.real_features_num_samples = torch.tensor(len(f), device=self.device)
        self.kid.real_features = [f]
        self.pr.real_features = [f]

    def set_real_from_data(
        self,
        data_dir: str | Path | None,
        split: Literal["train", "test"] = "test",
        num: int | None = None,
        cache_dir: str | Path | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        """Real features of MNIST's ``split`` (a seeded subset of ``num`` images if given),
        computed once and cached on disk (see real.py), then :meth:`set_real`."""
        images = load_real_images(data_dir, split, num)
        self.set_real(real_features(self.extractor, images, cache_dir), rank, world_size)

    @torch.no_grad()
    def update(self, imgs: Tensor) -> None:
        """Add generated images [B, 1, 28, 28] in [0, 1]."""
        check_images(imgs, "generated images")
        imgs = imgs.to(self.device, torch.float32)
        with getattr(self.extractor, "remembering", nullcontext)():  # one feature pass for all
            # precision/recall first: it refuses NaN/inf features before FID and KID took the batch
            self.pr.update(self.extractor(imgs), real=False)
            self.fid.update(imgs, real=False)
            self.kid.update(imgs, real=False)
            self.classes.update(imgs)

    def compute(self, num_generated: int | None = None) -> dict[str, Tensor]:
        """All metrics (synchronised across DDP ranks).

        Args:
            num_generated: generated samples over all ranks (an integer >= 1 of any kind), which
                caps KID's subset size; None takes this process's count (right on one process).
        """
        if self.num_real == 0:
            raise RuntimeError("SampleQuality has no real features: call set_real or set_real_from_data first")
        if num_generated is None:
            n_fake = int(self.fid.fake_features_num_samples)
        elif (n_fake := as_integer(num_generated)) is None or n_fake < 1:
            raise ValueError(f"num_generated={num_generated!r} must be None or an integer >= 1")
        self.kid.subset_size = min(self.kid_subset_size, n_fake, self.num_real)
        # torchmetrics gathers KID's list states (dist_reduce_fx=None) element by element, and turns
        # an empty list state of P&R into a 1-D tensor: ranks with different update counts (or
        # none) would deadlock or fail. One [n, F] tensor per rank keeps them even.
        self.kid.fake_features = [self._fake_rows(self.kid.fake_features)]
        self.pr.fake_features = [self._fake_rows(self.pr.fake_features)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            kid_mean, kid_std = self.kid.compute()
        out = {"fid": self.fid.compute(), "kid": kid_mean, "kid_std": kid_std}
        out.update(self.pr.compute())
        out.update(self.classes.compute())
        return out

    def _fake_rows(self, feats: list[Tensor]) -> Tensor:
        """A list state of generated features as one float64 tensor [n, F] (n may be 0)."""
        if feats:
            return torch.cat(feats)
        return torch.empty(0, self.extractor.num_features, dtype=torch.float64, device=self.device)

    def reset(self) -> None:
        """Forget the generated samples; the real features stay."""
        for metric in (self.fid, self.kid, self.pr, self.classes):
            metric.reset()
