"""Under DDP each rank draws its own training noise, also after seed_everything."""
from __future__ import annotations

import torch

from tests.utils import run_script


def test_ranks_draw_different_noise_and_keep_equal_weights(tmp_path):
    """seed_everything(0) gave both ranks one generator state: the same z for the GAN's
    generator (two ranks trained it on one rank's fakes), the same ε and timesteps."""
    run_script("ddp_rank_noise_script.py", tmp_path, cwd=tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for z0, z1 in zip(ranks[0]["gan"]["z"], ranks[1]["gan"]["z"], strict=True):
        assert not torch.equal(z0, z1)
    for family in ("gan", "vae", "diffusion"):
        assert not torch.equal(ranks[0][family]["rng"][0], ranks[1][family]["rng"][0]), family
        for name, value in ranks[0][family]["state"].items():  # DDP still averages the gradients
            torch.testing.assert_close(value, ranks[1][family]["state"][name], msg=f"{family} {name}")
