"""FIDCallback in a one-process Trainer after a DDP fit in the same script."""
from __future__ import annotations

import math

import torch

from tests.utils import run_script


def test_one_process_validate_after_a_ddp_fit(mnist_dir, tmp_path):
    """The fit leaves its 2-rank process group open; FIDCallback's metrics synced over it and
    failed ("Connection closed by peer": the other rank had left; a hang while it runs on)."""
    run_script("metrics/fid_after_ddp_script.py", mnist_dir, tmp_path / "cache", tmp_path, cwd=tmp_path)
    scores = torch.load(tmp_path / "fid.pt")
    assert math.isfinite(scores["fid"]) and 0.0 <= scores["precision"] <= 1.0
