"""Validation and test metrics under DDP: each image counted once, as one process counts it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.utils import run_script

# the metrics that do not depend on random draws (the VAE's ELBO and IWAE bound draw z)
DETERMINISTIC = {"vae": ("val/kl", "test/kl"), "gmm": ("val/log_likelihood", "test/log_likelihood"),
                 "diffusion": ("val/loss", "test/loss"),
                 "gan": ("val/d_loss", "val/g_loss", "test/d_loss", "test/g_loss")}  # fakes from z = 0


def _eval_run(devices: int, out: Path) -> dict:
    out.mkdir()
    run_script("ddp_eval_script.py", devices, out, cwd=out)
    return torch.load(out / "metrics.pt")


def test_two_processes_weight_out_the_padded_image(tmp_path):
    """5 images on 2 ranks: DistributedSampler gives rank 1 image 0 again; it counted twice
    (the VAE's val/kl 2% off, the GMM's log-likelihood, the diffusion and GAN losses too)."""
    one, two = _eval_run(1, tmp_path / "one"), _eval_run(2, tmp_path / "two")
    for family, keys in DETERMINISTIC.items():
        assert one[family].keys() == two[family].keys()
        for key in keys:
            assert two[family][key] == pytest.approx(one[family][key], rel=1e-5), (family, key)
