"""Users' subclasses that take their own nn.Module arguments: the module is left out of the
hyperparameters (it was pickled into them, and load_from_checkpoint failed under weights_only)."""
from __future__ import annotations

import warnings
from pathlib import Path

import lightning
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels import GAN, VAE, Diffusion

from tests.utils import Denoiser

QUIET = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
         "enable_model_summary": False, "max_steps": 1, "limit_val_batches": 0}


class Encoder(nn.Module):
    """A user's encoder around a ``body`` that the user's subclass takes as an argument."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body, self.head = body, nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class BodyVAE(VAE):
    def __init__(self, body: nn.Module, latent_dim: int = 4, **kwargs) -> None:
        super().__init__(latent_dim=latent_dim, encoder=Encoder(body), **kwargs)


class BodyGAN(GAN):
    def __init__(self, body: nn.Module, features: int = 4, **kwargs) -> None:
        discriminator = nn.Sequential(body, nn.Linear(16, 1), nn.Flatten(0))
        super().__init__(features=features, discriminator=discriminator, **kwargs)


class BodyDiffusion(Diffusion):
    def __init__(self, body: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.unet = body


def flat_body() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16))


TINY_UNET = {"base_channels": 8, "channel_mults": (1,), "groups": 4, "num_train_timesteps": 10, "sample_steps": 2}


@pytest.mark.parametrize("cls, body, kwargs, low", [(BodyVAE, flat_body, {}, 0.0), (BodyGAN, flat_body, {}, -1.0),
                                                    (BodyDiffusion, Denoiser, TINY_UNET, -1.0)])
def test_a_subclass_module_argument_is_no_hyperparameter(tmp_path: Path, cls, body, kwargs: dict, low: float) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning's "Attribute 'body' is an instance of `nn.Module`"
        model = cls(body(), **kwargs)
    assert "body" not in model.hparams
    x = torch.rand(8, 1, 28, 28) * (1 - low) + low
    trainer = lightning.Trainer(**QUIET)
    trainer.fit(model, DataLoader(TensorDataset(x, torch.zeros(8)), batch_size=8))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    torch.load(tmp_path / "model.ckpt", weights_only=True)  # no pickled network in it
    loaded = cls.load_from_checkpoint(tmp_path / "model.ckpt", body=body())
    state, reloaded = model.state_dict(), loaded.state_dict()
    assert state.keys() == reloaded.keys() and all(torch.equal(state[k], reloaded[k]) for k in state)
