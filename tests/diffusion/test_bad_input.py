"""Bad training images stop Diffusion with an error naming them, before any update: integer
images, an empty batch, NaN/inf (which had turned every weight NaN, silently)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels import Diffusion

SMALL = dict(base_channels=8, channel_mults=(1,), image_size=8, groups=4, attention_heads=1,
             num_train_timesteps=20, sample_steps=2)


def images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("batch, match", [
    (images().mul(127).to(torch.uint8), r"floating-point images in \[-1, 1\], got dtype torch.uint8"),
    (images(0), r"train batch is empty, shape \(0, 1, 8, 8\)"),
], ids=["uint8", "empty"])
def test_bad_training_batch_names_the_problem(batch: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Diffusion(**SMALL).training_step((batch,), 0)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_batch_stops_training_before_the_update(value: float) -> None:
    x = images(16)
    x[9, 0, 3, 3] = value  # in the second batch
    model = Diffusion(**SMALL)
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0)
    with pytest.raises(FloatingPointError, match=r"train/loss is nan .* global step 1; stopped before the "
                                                 r"update: this rank's batch holds 1 NaN or infinite values"):
        trainer.fit(model, train_dataloaders=DataLoader(TensorDataset(x), batch_size=8))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(model.sample(2, steps=2)).all()


@pytest.mark.parametrize("t, noise, match", [
    (torch.tensor([0.0, 5.0]), images(2), "timesteps must be integers, got dtype torch.float32"),
    (torch.tensor([0, 5, 6]), images(2), r"need t \[N\] and noise of x0's shape \(2, 1, 8, 8\), got t \(3,\)"),
    (torch.tensor([0, 5]), images(2)[:, :, :4, :4], r"got t \(2,\) and noise \(2, 1, 4, 4\)"),
], ids=["float_t", "t_count", "noise_shape"])
def test_q_sample_names_bad_arguments(t: torch.Tensor, noise: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):  # (an IndexError; ATen's broadcast errors)
        Diffusion(**SMALL).q_sample(images(2), t, noise)


def test_a_rank_with_a_finite_loss_points_to_the_other_rank() -> None:
    """(it advised a lower lr for its own finite loss)"""
    model = Diffusion(**SMALL)
    model._trainer = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda d, all=True: False),
                                     current_epoch=0, global_step=0)
    with pytest.raises(FloatingPointError, match=r"train/loss is [0-9.]+ .*another rank's loss is not finite"):
        model.training_step((images(),), 0)
