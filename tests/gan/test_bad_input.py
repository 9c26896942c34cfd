"""Bad real images reach the GAN's steps as errors naming them: integer images (an ATen error
from the first convolution), an empty batch (NaN losses blamed on the learning rates), NaN/inf
held-out images (NaN val/test losses logged silently)."""
from __future__ import annotations

from types import SimpleNamespace

import lightning
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels import GAN
from lightning_genmodels.gan import Discriminator, Generator

TINY = {"latent_dim": 8, "features": 4}


def images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("step", ["training_step", "validation_step", "predict_step"])
@pytest.mark.parametrize("batch, match", [
    (images().add(1).mul(127).to(torch.uint8), r"floating-point images in \[-1, 1\], got dtype torch.uint8"),
    (images(0), r"empty batch of images, shape \(0, 1, 28, 28\)"),
], ids=["uint8", "empty"])
def test_bad_batches_name_the_problem(step: str, batch: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        getattr(GAN(**TINY), step)((batch, torch.zeros(len(batch))), 0)


def test_discriminator_refuses_integer_images() -> None:
    with pytest.raises(ValueError, match="Discriminator expects floating-point images"):
        GAN(**TINY).discriminator(torch.zeros(2, 1, 28, 28, dtype=torch.long))


def test_a_non_finite_validation_batch_is_an_error_not_a_nan_loss() -> None:
    x = images(8)
    x[5, 0, 3, 3] = float("nan")
    trainer = lightning.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False)
    with pytest.raises(ValueError, match=r"GAN val losses are d_loss=nan.*holds 1 NaN or infinite values"):
        trainer.validate(GAN(**TINY), DataLoader(TensorDataset(x, torch.zeros(8)), batch_size=4))


@pytest.mark.parametrize("make, match", [
    (lambda: Generator(latent_dim=0), "latent_dim=0 must be an integer >= 1"),
    (lambda: Generator(latent_dim=1.5), "latent_dim=1.5 must be an integer >= 1"),  # (a TypeError from torch.empty)
    (lambda: Discriminator(features=0), "features=0 must be an integer >= 1"),
    (lambda: Generator(8, 1, 4)(torch.ones(2, 8, dtype=torch.long)), "floating-point z, got dtype torch.int64"),
], ids=["latent_zero", "latent_float", "features_zero", "integer_z"])
def test_networks_name_bad_sizes_and_inputs(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_a_rank_with_a_finite_loss_points_to_the_other_rank() -> None:
    """(it advised lower learning rates for its own finite loss)"""
    model = GAN(**TINY)
    model._trainer = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda d, all=True: False),
                                     checkpoint_callback=None, current_epoch=0, global_step=0)
    with pytest.raises(FloatingPointError, match=r"discriminator loss is 1.0 .*Another rank's loss is not finite"):
        model._stop_if_not_finite("discriminator", torch.tensor(1.0), images())


def test_decode_latents_names_nan_and_bad_shapes() -> None:
    """NaN latents gave NaN images, silently."""
    model = GAN(**TINY)
    with pytest.raises(ValueError, match="GAN.decode_latents: the latents hold 2 NaN or infinite values"):
        model.decode_latents(torch.full((1, 8), float("inf")).index_fill(1, torch.arange(6), 0.0))
    with pytest.raises(ValueError, match=r"latents must be \[B, 8\], got shape \(2, 5\)"):
        model.decode_latents(torch.zeros(2, 5))
