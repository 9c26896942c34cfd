"""Shared fixtures: the real MNIST files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mnist_dir() -> Path:
    return Path(os.environ.get("LGM_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """Folder with the four MNIST IDX .gz files (../shared/data/mnist or $LGM_MNIST_DIR)."""
    path = _mnist_dir()
    if not (path / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"MNIST not found at {path}; set LGM_MNIST_DIR to the folder of IDX files")
    return path

