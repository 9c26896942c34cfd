"""Precision/recall against a brute-force reference, class coverage, and the NLL bound."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_genmodels.metrics import ClassCoverage, PrecisionRecall, SampleQuality, dequantized_bits_per_dim


def brute_force_pr(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019 eq. 1-2 with explicit loops over pairs."""
    def radii(x):
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]

    def inside(q, p, r):
        return np.mean([any(np.linalg.norm(qi - pj) <= rj for pj, rj in zip(p, r)) for qi in q])

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_matches_brute_force(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    real = torch.randn(60, 5, generator=g, dtype=torch.float64)
    fake = 0.7 * torch.randn(45, 5, generator=g, dtype=torch.float64) + 0.8
    metric = PrecisionRecall(k=k)
    metric.update(real[:30], real=True)
    metric.update(real[30:], real=True)
    metric.update(fake, real=False)
    out = metric.compute()
    p, r = brute_force_pr(real.numpy(), fake.numpy(), k)
    assert 0 < p < 1 and 0 < r < 1
    assert float(out["precision"]) == pytest.approx(p) and float(out["recall"]) == pytest.approx(r)


def test_precision_recall_extremes_and_reset() -> None:
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    metric = PrecisionRecall()
    metric.update(x, real=True)
    metric.update(x, real=False)
    assert float(metric.compute()["precision"]) == 1.0 and float(metric.compute()["recall"]) == 1.0
    metric.reset()  # keeps the real features
    metric.update(x + 100, real=False)
    out = metric.compute()
    assert float(out["precision"]) == 0.0 and float(out["recall"]) == 0.0
    metric.reset()
    metric.update(x[:3], real=False)
    with pytest.raises(RuntimeError, match="more than 3 generated"):
        metric.compute()


class FixedClassifier(nn.Module):
    """Predicts class ``round(mean pixel * 10)`` with logit margin 5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = (x.flatten(1).mean(1) * 10).round().long().clamp(0, 9)
        return 5.0 * nn.functional.one_hot(label, 10).float()


def test_class_coverage_histogram_missing_and_confidence() -> None:
    metric = ClassCoverage(FixedClassifier(), min_share=0.02)
    levels = torch.tensor([0.0] * 50 + [0.1] * 30 + [0.5] * 19 + [0.9] * 1)  # classes 0, 1, 5, 9
    metric.update(levels.view(-1, 1, 1, 1).expand(-1, 1, 28, 28).contiguous())
    out = metric.compute()
    expected = torch.zeros(10, dtype=torch.float64)
    expected[[0, 1, 5, 9]] = torch.tensor([0.5, 0.3, 0.19, 0.01], dtype=torch.float64)
    torch.testing.assert_close(out["histogram"], expected)
    assert int(out["missing"]) == 7 and float(out["coverage"]) == pytest.approx(0.3)  # 9 is under 2%
    conf = math.exp(5) / (math.exp(5) + 9)
    assert float(out["confidence"]) == pytest.approx(conf)


def test_train_mode_leaves_the_feature_and_class_networks_in_eval_mode() -> None:
    """SampleQuality held by a LightningModule gets train() every epoch, as torchmetrics metrics
    do: its networks' batch norm used the samples' statistics (other features, another FID) and
    moved its running statistics for good; torchmetrics' Inception stays in eval mode."""
    images = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    quality = SampleQuality(kid_subset_size=4)
    quality.set_real(quality.extractor(images[:20]))
    quality.update(images[20:])
    expected = quality.compute()
    quality.reset()
    bn = quality.extractor.net.conv[1]
    stats = bn.running_mean.clone()
    quality.train()
    assert not any(m.training for m in quality.extractor.modules())
    quality.update(images[20:])
    got = quality.compute()
    assert torch.equal(bn.running_mean, stats)
    for key in ("fid", "kid", "precision", "recall", "histogram", "confidence"):
        torch.testing.assert_close(got[key], expected[key], msg=key)
    metric = ClassCoverage(nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(784, 10))).train()
    assert metric.training and not any(m.training for m in metric.classifier.modules())


def test_uniform_density_has_8_bits_per_dim() -> None:
    """log p(y) = 0 on the unit cube: the bound is exactly log2(256) = 8 bits per dimension."""
    batches = [(torch.rand(10, 784).clamp(1e-6, 1 - 1e-6), None) for _ in range(3)]
    assert dequantized_bits_per_dim(lambda y: torch.zeros(len(y)), batches) == pytest.approx(8.0)
    # a density twice as high everywhere (mass 2^D, not normalised) saves exactly one bit per dim
    assert dequantized_bits_per_dim(lambda y: torch.full((len(y),), 784 * math.log(2)), batches) == pytest.approx(7.0)


def test_nll_rejects_data_outside_the_unit_interval() -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        dequantized_bits_per_dim(lambda y: torch.zeros(len(y)), [torch.ones(2, 4)])
    with pytest.raises(ValueError, match="NaN"):
        dequantized_bits_per_dim(lambda y: torch.full((len(y),), float("nan")), [torch.full((2, 4), 0.5)])
