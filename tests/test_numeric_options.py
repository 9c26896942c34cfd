"""Numeric constructor options of the VAE, GAN and Diffusion that are not numbers get a
ValueError naming the option (math.isfinite's TypeError named nothing); Diffusion's lr and
weight_decay are checked when built (AdamW refused them only when fit began),
its bool options refuse strings (set_alpha_to_one="no" was True)."""
from __future__ import annotations

import numpy as np
import pytest

from lightning_genmodels import GAN, VAE, Diffusion

SMALL = dict(base_channels=8, channel_mults=(1,), image_size=8, groups=4, attention_heads=1,
             num_train_timesteps=20, sample_steps=2)


@pytest.mark.parametrize("make, match", [
    (lambda: VAE(latent_dim=2, beta="1"), "beta='1' must be a real number"),
    (lambda: VAE(latent_dim=2, lr=None), "lr=None must be a real number"),
    (lambda: GAN(latent_dim=8, features=4, lr_g="1"), "lr_g='1' must be a real number"),
    (lambda: GAN(latent_dim=8, features=4, gp_weight=None), "gp_weight=None must be a real number"),
    (lambda: GAN(latent_dim=8, features=4, ema_decay="0.9"), "ema_decay='0.9' must be a real number"),
    (lambda: GAN(latent_dim=8, features=4, betas_g=0.5), r"betas_g=0.5 must be two numbers in \[0, 1\)"),
    (lambda: Diffusion(**SMALL, min_snr_gamma="5"), "min_snr_gamma='5' must be a real number"),
    (lambda: Diffusion(**SMALL, beta_end="0.02"), "beta_end='0.02' must be a real number"),
    (lambda: Diffusion(**SMALL, lr=-1.0), "lr=-1.0 must be a finite number > 0"),
    (lambda: Diffusion(**SMALL, lr=float("nan")), "lr=nan must be a finite number > 0"),
    (lambda: Diffusion(**SMALL, weight_decay=-0.1), "weight_decay=-0.1 must be a finite number >= 0"),
    (lambda: Diffusion(**SMALL, set_alpha_to_one="no"), "set_alpha_to_one must be True or False, got 'no'"),
    (lambda: Diffusion(**SMALL, clip_sample="yes"), "clip_sample must be True or False, got 'yes'"),
], ids=["vae_beta", "vae_lr", "gan_lr", "gan_gp", "gan_ema", "gan_betas", "diff_snr", "diff_beta_end",
        "diff_lr_negative", "diff_lr_nan", "diff_weight_decay", "diff_alpha_one", "diff_clip"])
def test_bad_numbers_name_the_option(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_numpy_numbers_pass() -> None:
    VAE(latent_dim=2, beta=np.float32(0.5))
    GAN(latent_dim=8, features=4, lr_d=np.float64(1e-3))
    Diffusion(**SMALL, lr=np.float32(1e-3))
