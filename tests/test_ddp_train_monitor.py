"""A callback that monitors a training metric under DDP sees one value on every rank."""
from __future__ import annotations

from pathlib import Path

import torch

from tests.utils import run_script


def test_best_checkpoint_of_a_training_metric_is_one_file_on_every_rank(tmp_path):
    """Each rank logged its own train/loss: rank 1's best checkpoint was named after its loss, a
    file rank 0 never wrote, and trainer.test(ckpt_path="best") raised FileNotFoundError there."""
    run_script("ddp_train_monitor_script.py", tmp_path, cwd=tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["best"] == ranks[1]["best"] and Path(ranks[0]["best"]).is_file()
    assert ranks[0]["loss"] == ranks[1]["loss"]
    assert ranks[0]["test"] == ranks[1]["test"]
