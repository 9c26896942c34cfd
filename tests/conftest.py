"""Shared fixtures (the real MNIST files) and warning rules for every test."""
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



_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture(autouse=True)
def _no_leaked_process_group():
    """An in-process DDP Trainer leaves MASTER_PORT in os.environ (and its process group's store
    listening on it); a later multi-process test would inherit that port and fail with
    EADDRINUSE. Clear both after every test."""
    yield
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key in _DIST_ENV:
        os.environ.pop(key, None)


def pytest_configure(config: pytest.Config) -> None:
    # An op that falls back to its reference warns "lightning_genmodels: ..." (RuntimeWarning):
    # in tests that is a failure, so a kernel that did not build never passes as success.
    config.addinivalue_line("filterwarnings", "error:lightning_genmodels:RuntimeWarning")
    # Named third-party notices that are not ours to fix: Lightning 2.6's use of a torch pytree
    # API that torch 2.14 deprecates, and jsonargparse's deprecations inside LightningCLI.
    config.addinivalue_line("filterwarnings", r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated")
    config.addinivalue_line("filterwarnings", "ignore::jsonargparse._deprecated.JsonargparseDeprecationWarning")
