"""A callback that monitors a training metric under DDP sees one value on every rank."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_best_checkpoint_of_a_training_metric_is_one_file_on_every_rank(tmp_path):
    """Each rank logged its own train/loss: rank 1's best checkpoint was named after its loss, a
    file rank 0 never wrote, and trainer.test(ckpt_path="best") raised FileNotFoundError there."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_train_monitor_script.py"), str(tmp_path)],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"DDP run hung:\n{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["best"] == ranks[1]["best"] and Path(ranks[0]["best"]).is_file()
    assert ranks[0]["loss"] == ranks[1]["loss"]
    assert ranks[0]["test"] == ranks[1]["test"]
