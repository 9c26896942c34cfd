"""FIDCallback in a one-process Trainer after a DDP fit in the same script."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_one_process_validate_after_a_ddp_fit(mnist_dir, tmp_path):
    """The fit leaves its 2-rank process group open; FIDCallback's metrics synced over it and
    failed ("Connection closed by peer": the other rank had left; a hang while it runs on)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    script = ROOT / "tests" / "metrics" / "fid_after_ddp_script.py"
    try:
        proc = subprocess.run([sys.executable, str(script), str(mnist_dir), str(tmp_path / "cache"), str(tmp_path)],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"validate hung:\n{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    scores = torch.load(tmp_path / "fid.pt")
    assert math.isfinite(scores["fid"]) and 0.0 <= scores["precision"] <= 1.0
