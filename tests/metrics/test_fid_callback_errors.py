"""FIDCallback.evaluate forgets a failed call's samples: a sampler error midway had left its
first chunks in the metrics, counted in the next evaluation (a silently wrong FID)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightning_genmodels.callbacks import FIDCallback
from lightning_genmodels.metrics import SampleQuality


def callback() -> FIDCallback:
    cb = FIDCallback(num_samples=8, batch_size=4, kid_subset_size=2)
    cb.quality = SampleQuality(kid_subset_size=2)
    cb.quality.set_real(torch.randn(16, 128, generator=torch.Generator().manual_seed(0)).abs())
    return cb


def module(nan_from_seed: int | None = None) -> SimpleNamespace:
    def sample_images(n: int, seed: int = 0) -> torch.Tensor:
        x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
        return x * float("nan") if nan_from_seed is not None and seed >= nan_from_seed else x

    return SimpleNamespace(device=torch.device("cpu"), sample_images=sample_images)


def test_a_failed_evaluation_leaves_no_samples_behind() -> None:
    cb = callback()
    with pytest.raises(ValueError, match="generated images contain NaN"):
        cb.evaluate(module(nan_from_seed=1))  # chunk 0 went in, chunk 1 failed
    assert cb.evaluate(module()) == callback().evaluate(module())
