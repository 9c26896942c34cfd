"""Under DDP each rank draws its own training noise, also after seed_everything."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_ranks_draw_different_noise_and_keep_equal_weights(tmp_path):
    """seed_everything(0) gave both ranks one generator state: the same z for the GAN's
    generator (two ranks trained it on one rank's fakes), the same ε and timesteps."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_rank_noise_script.py"), str(tmp_path)],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"DDP run hung:\n{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for z0, z1 in zip(ranks[0]["gan"]["z"], ranks[1]["gan"]["z"], strict=True):
        assert not torch.equal(z0, z1)
    for family in ("gan", "vae", "diffusion"):
        assert not torch.equal(ranks[0][family]["rng"][0], ranks[1][family]["rng"][0]), family
        for name, value in ranks[0][family]["state"].items():  # DDP still averages the gradients
            torch.testing.assert_close(value, ranks[1][family]["state"][name], msg=f"{family} {name}")
