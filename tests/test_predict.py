"""Trainer.predict for every family the README's `predict` subcommand covers (it crashed for the
VAE, GAN and Diffusion: no predict_step)."""
from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_genmodels import GAN, VAE, Diffusion, MNISTDataModule
from lightning_genmodels.vae import ConvDecoder, ConvEncoder


def tiny(family: str):
    torch.manual_seed(0)
    if family == "vae":
        return VAE(latent_dim=4, encoder=ConvEncoder(4, channels=(4, 8)), decoder=ConvDecoder(4, channels=(8, 4)))
    if family == "gan":
        return GAN(latent_dim=8, features=4)
    return Diffusion(base_channels=8, channel_mults=(1, 2), groups=4, attention_heads=2, num_train_timesteps=100)


@pytest.mark.parametrize("family, keys", [
    ("vae", {"mean": (6, 4), "log_var": (6, 4), "reconstruction": (6, 1, 28, 28)}),
    ("gan", {"logits": (6,)}),
    ("diffusion", {"loss": (6,)}),
])
def test_predict_returns_per_image_outputs(family, keys, mnist_dir):
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=6, val_split=12)
    trainer = Trainer(accelerator="cpu", limit_predict_batches=2, logger=False, enable_progress_bar=False,
                      enable_model_summary=False)
    out = trainer.predict(tiny(family), data)
    assert len(out) == 2
    for batch in out:
        assert {k: tuple(v.shape) for k, v in batch.items()} == keys
        assert all(torch.isfinite(v).all() for v in batch.values())
    if family == "diffusion":  # the per-image loss at the validation draws: the same on another run
        torch.testing.assert_close(trainer.predict(tiny(family), data)[0]["loss"], out[0]["loss"])
