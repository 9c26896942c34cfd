"""NumPy numbers given to the constructors are saved as Python numbers: a checkpoint holding
np.float64(1e-3) (``for lr in np.logspace(...)``) did not load with load_from_checkpoint's
weights_only unpickler: the trained model was lost to the default loader."""
from __future__ import annotations

from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels import GAN, VAE, Diffusion, MNISTDataModule

SMALL = dict(base_channels=8, image_size=8, groups=4, attention_heads=1)


@pytest.mark.parametrize("make", [
    lambda: Diffusion(**SMALL, num_train_timesteps=np.int64(20), sample_steps=np.int64(2), lr=np.float64(1e-3),
                      eta=np.float32(0.5), channel_mults=(np.int64(1),)),
    lambda: VAE(latent_dim=2, lr=np.float64(1e-3), beta=np.float32(0.5)),
    lambda: GAN(latent_dim=8, features=4, lr_g=np.float64(1e-3), betas_d=(np.float64(0.5), 0.9)),
    lambda: MNISTDataModule(batch_size=np.int64(8), seed=np.int64(1)),
], ids=["diffusion", "vae", "gan", "datamodule"])
def test_numpy_hyperparameters_are_saved_as_python_numbers(make) -> None:
    obj = make()
    for hparams in (obj.hparams, obj.hparams_initial):
        for key, value in hparams.items():
            for v in value if isinstance(value, (list, tuple)) else [value]:
                assert not isinstance(v, np.generic), (key, type(v))


def test_a_checkpoint_of_numpy_hyperparameters_loads_weights_only(tmp_path: Path) -> None:
    model = Diffusion(**SMALL, channel_mults=(1,), num_train_timesteps=np.int64(20), sample_steps=2, lr=np.float64(1e-3))
    trainer = lightning.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(TensorDataset(torch.rand(4, 1, 8, 8) * 2 - 1), batch_size=4))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = Diffusion.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    assert loaded.hparams.lr == 1e-3 and loaded.hparams.num_train_timesteps == 20


@pytest.mark.parametrize("make", [
    lambda: VAE(latent_dim=np.int64(2), in_channels=np.int32(1), kl_warmup_steps=np.int64(0)),
    lambda: GAN(latent_dim=np.int64(8), features=np.int64(4), n_critic=np.int64(1)),
], ids=["vae", "gan"])
def test_numpy_integers_are_integers(make) -> None:
    model = make()  # ("latent_dim=np.int64(2) must be an integer >= 1")
    assert type(model.latent_dim) is int and model.sample(2, seed=0).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("value, expected", [(np.int64(100), 100), (np.float32(0.5), 0.5)])
def test_val_split_takes_numpy_numbers(value, expected) -> None:
    dm = MNISTDataModule(val_split=value)  # (np.int64(100): "give a count >= 0 or a fraction in [0, 1)")
    assert dm.hparams.val_split == expected and type(dm.hparams.val_split) is type(expected)
