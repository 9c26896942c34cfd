"""Fixtures shared by the metrics tests: the MNIST test set and its features, computed once."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_genmodels.metrics import MNISTFeatures, real_features
from lightning_genmodels.metrics.train_features import load_split


@pytest.fixture(scope="session")
def fid_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh real-feature cache folder."""
    return tmp_path_factory.mktemp("fid_cache")


@pytest.fixture(scope="session")
def test_set(mnist_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST test images uint8 [10000, 28, 28] and labels [10000]."""
    return load_split(str(mnist_dir), "test")


@pytest.fixture(scope="session")
def test_features(test_set: tuple[torch.Tensor, torch.Tensor], fid_cache: Path) -> torch.Tensor:
    """Features [10000, 128] of the test set through the shipped network (one pass)."""
    return real_features(MNISTFeatures(), test_set[0], fid_cache)
