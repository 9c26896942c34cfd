"""The shipped MNIST feature network: accuracy, size, hash check, input checks."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from lightning_genmodels.metrics import FeatureWeightsError, MNISTFeatures, features, load_feature_net
from lightning_genmodels.metrics.features import DEFAULT_WEIGHTS, WEIGHTS_SHA256, file_sha256
from lightning_genmodels.metrics.real import load_real_images
from lightning_genmodels.metrics.train_features import accuracy


def test_shipped_weights_are_small_match_their_hash_and_stated_size() -> None:
    assert DEFAULT_WEIGHTS.stat().st_size < 2_000_000
    assert file_sha256(DEFAULT_WEIGHTS) == WEIGHTS_SHA256
    stated = float(re.search(r"~([\d.]+) MB", features.__doc__).group(1))  # the docstring's size
    assert stated == pytest.approx(DEFAULT_WEIGHTS.stat().st_size / 1e6, abs=0.01)


def test_test_set_accuracy_at_least_99_3_percent(test_set, test_features: torch.Tensor) -> None:
    """All 10,000 test images: the classifier head on the network's features (one pass)."""
    net = load_feature_net()
    logits = net.head(test_features.float())
    acc = (logits.argmax(1) == test_set[1]).double().mean().item()
    print(f"feature network test accuracy: {acc:.4%}")
    assert acc >= 0.993
    images, labels = test_set[0][:500], test_set[1][:500]  # the full forward agrees with the head
    assert accuracy(net, images, labels) == (logits[:500].argmax(1) == labels).double().mean().item()


def test_missing_weights_give_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FeatureWeightsError, match="not found.*train_features"):
        load_feature_net(tmp_path / "nothing.pt")


def test_hash_mismatch_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    shutil.copy(DEFAULT_WEIGHTS, path)
    with pytest.raises(FeatureWeightsError, match="SHA-256 .* expected 0000"):
        load_feature_net(path, sha256="0" * 64)
    with open(path, "ab") as f:  # a corrupted copy of the shipped file
        f.write(b"x")
    with pytest.raises(FeatureWeightsError, match=f"expected {WEIGHTS_SHA256}"):
        load_feature_net(path, sha256=WEIGHTS_SHA256)


def test_features_shape_dtype_and_determinism(mnist_dir: Path) -> None:
    x = load_real_images(mnist_dir, "test", num=64).float().div(255).unsqueeze(1)
    extractor = MNISTFeatures()
    f = extractor(x)
    assert f.shape == (64, extractor.num_features) and f.dtype == torch.float64
    torch.testing.assert_close(extractor(x[:10]), f[:10], rtol=1e-5, atol=1e-5)  # batch-independent (eval BN)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.rand(4, 28, 28), r"shape \[N, 1, 28, 28\]"),
        (torch.rand(4, 3, 28, 28), r"shape \[N, 1, 28, 28\]"),
        (torch.randint(0, 255, (4, 1, 28, 28), dtype=torch.uint8), "float tensor"),
        (torch.full((4, 1, 28, 28), float("nan")), "NaN"),
        (torch.rand(4, 1, 28, 28) * 2 - 1, r"\[0, 1\]"),
    ],
)
def test_bad_images_are_rejected(images: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MNISTFeatures()(images)
