"""Bad input to the metric helpers names the problem instead of a silently wrong number:
dequantized_bits_per_dim (NaN data passed its range check, a [B, K] or scalar log-density was
summed as it came, batches of different D used the last D), SampleQuality.set_real (complex
features lost their imaginary part, a rank outside the world kept nothing), real_features (no
images: torch.cat's error; a failed cache write left its .tmp file)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_genmodels.metrics import (
    ClassCoverage, EMStatistics, MNISTFeatures, SampleQuality, dequantized_bits_per_dim, real_features,
)


def half(*shape: int) -> torch.Tensor:
    return torch.full(shape, 0.5)


@pytest.mark.parametrize("log_density, batches, match", [
    (lambda y: torch.zeros(len(y)), [torch.full((2, 4), float("nan"))], r"must lie in \(0, 1\), got \[nan, nan\]"),
    (lambda y: torch.zeros(len(y), 3), [half(2, 4)], r"log p\(y\) \[B\] = \[2\], got shape \(2, 3\)"),
    (lambda y: torch.tensor(0.0), [half(2, 4)], r"log p\(y\) \[B\] = \[2\], got shape \(\)"),
    (lambda y: torch.zeros(len(y)), [half(2, 4), half(2, 5)], "batches of 4 and 5 dimensions per image"),
], ids=["nan", "2d", "scalar", "dims"])
def test_bits_per_dim_refuses_bad_batches_and_densities(log_density, batches, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dequantized_bits_per_dim(log_density, batches)


@pytest.fixture(scope="module")
def quality() -> SampleQuality:
    return SampleQuality(kid_subset_size=2)


@pytest.mark.parametrize("kwargs, match", [
    ({"features": torch.randn(8, 128, dtype=torch.complex64)}, "real numbers, got dtype torch.complex64"),
    ({"features": torch.randn(8, 128), "rank": 2, "world_size": 2}, r"rank must be in \[0, world_size\)"),
], ids=["complex", "rank"])
def test_set_real_refuses(quality: SampleQuality, kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        quality.set_real(**kwargs)


def test_real_features_of_no_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"uint8 \[N, H, W\] with N >= 1, got torch.uint8 \[0, 28, 28\]"):
        real_features(MNISTFeatures(), torch.zeros(0, 28, 28, dtype=torch.uint8), tmp_path)


def test_a_failed_cache_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        real_features(MNISTFeatures(), torch.zeros(3, 28, 28, dtype=torch.uint8), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_generated_features_leave_every_metric_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    quality = SampleQuality(kid_subset_size=2)
    quality.set_real(torch.randn(8, 128, generator=torch.Generator().manual_seed(0)).abs())
    monkeypatch.setattr(quality.extractor.net, "features", lambda x: torch.full((len(x), 128), float("nan")))
    with pytest.raises(ValueError, match=r"features contain NaN or inf \(2 of 2 rows\)"):
        quality.update(torch.rand(2, 1, 28, 28))
    # (FID and KID had taken the batch before precision/recall refused it)
    assert int(quality.fid.fake_features_num_samples) == 0 and quality.kid.fake_features == []
    assert quality.pr.fake_features == [] and int(quality.classes.counts.sum()) == 0


@pytest.mark.parametrize("width", [9, 12])
def test_class_coverage_names_a_classifier_of_another_width(width: int) -> None:
    coverage = ClassCoverage(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, width)))
    with pytest.raises(ValueError, match=rf"logits of shape \(2, {width}\), expected \[B, num_classes\] = \[2, 10\]"):
        coverage.update(torch.rand(2, 1, 28, 28))


def test_class_coverage_needs_classes() -> None:
    with pytest.raises(ValueError, match="num_classes=0 must be an integer >= 1"):
        ClassCoverage(torch.nn.Identity(), num_classes=0)


@pytest.mark.parametrize("args, match", [
    ((2, 3, "foo"), "covariance_type must be one of .*, got 'foo'"),  # (a KeyError: 'foo')
    ((0, 3, "full"), "n_components=0 must be an integer >= 1"),
    ((2, 1.5, "diag"), "n_features=1.5 must be an integer >= 1"),
], ids=["type", "k", "d"])
def test_em_statistics_options(args, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EMStatistics(*args)
