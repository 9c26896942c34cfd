"""The GAN under DDP on 2 CPU processes: no unused-parameter errors, ranks stay in sync."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("loss", ["wgan_gp"])  # n_critic=2 and the penalty's double backward
def test_ddp_two_processes(loss: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    script = ROOT / "tests" / "gan" / "ddp_gan_script.py"
    try:
        proc = subprocess.run([sys.executable, str(script), loss, str(tmp_path)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"DDP run hung:\n{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    n_critic = 2 if loss == "wgan_gp" else 1
    assert ranks[0]["global_step"] == 4 + 4 // n_critic
    assert int(ranks[0]["generator_ema.n_averaged"]) == 4 // n_critic
    for name, value in ranks[0].items():
        if isinstance(value, torch.Tensor) and "num_batches_tracked" not in name:
            # gradients are averaged across ranks, so weights (and the EMA) agree
            torch.testing.assert_close(value, ranks[1][name], msg=name)
