"""PrecisionRecall refuses bad features at update, naming them, and keeps what it holds:
NaN/inf had given a silently wrong precision, another width an error only at compute (the
metric then unusable), a fractional k an error inside topk."""
from __future__ import annotations

import pytest
import torch

from lightning_genmodels.metrics import PrecisionRecall


def feats(n: int = 12, f: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, f, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("k", [1.5, "3", True, 0])
def test_k_must_be_an_integer(k) -> None:
    with pytest.raises(ValueError, match=f"k={k!r} must be an integer >= 1"):
        PrecisionRecall(k=k)


@pytest.mark.parametrize("bad, match", [
    (feats().index_fill(0, torch.tensor([2]), float("nan")), r"NaN or inf \(1 of 12 rows\)"),
    (feats().index_fill(0, torch.tensor([0, 5]), float("inf")), r"NaN or inf \(2 of 12 rows\)"),
    (feats(f=5), "features have 5 columns, the features held so far 4"),
    (feats().to(torch.complex128), "real numbers, got dtype torch.complex128"),
], ids=["nan", "inf", "width", "complex"])
def test_bad_generated_features_are_refused_and_the_metric_still_computes(bad: torch.Tensor, match: str) -> None:
    metric = PrecisionRecall()
    metric.update(feats(), real=True)
    metric.update(feats(seed=1), real=False)
    expected = metric.compute()
    with pytest.raises(ValueError, match=match):
        metric.update(bad, real=False)
    assert metric.compute() == expected


def test_real_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="real must be True or False, got 'no'"):
        PrecisionRecall().update(feats(), real="no")  # (a truthy string counted as real)
