"""Users' GAN subclasses: LR schedulers from their configure_optimizers, which Lightning steps
not under manual optimisation (they stayed put, silently)."""
from __future__ import annotations

import warnings

import lightning
import pytest
import torch

from lightning_genmodels import GAN

from .test_gan import QUIET, TINY, loader


class ScheduledGAN(GAN):
    def configure_optimizers(self):
        opt_g, opt_d = super().configure_optimizers()
        return [opt_g, opt_d], [torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5) for opt in (opt_g, opt_d)]


class SteppingGAN(ScheduledGAN):
    def on_train_epoch_end(self) -> None:
        for scheduler in self.lr_schedulers():
            scheduler.step()


def fit(model: GAN) -> lightning.Trainer:
    trainer = lightning.Trainer(**QUIET, max_epochs=2, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=loader())
    return trainer


def test_schedulers_nothing_steps_are_named() -> None:
    with pytest.warns(UserWarning, match="ScheduledGAN.configure_optimizers returned LR schedulers"):
        trainer = fit(ScheduledGAN(**TINY))
    assert [opt.param_groups[0]["lr"] for opt in trainer.optimizers] == [2e-4, 2e-4]


@pytest.mark.parametrize("cls", [GAN, SteppingGAN])
def test_no_warning_without_schedulers_or_where_a_hook_steps_them(cls: type) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*LR schedulers")
        trainer = fit(cls(**TINY))
    want = 2e-4 / 4 if cls is SteppingGAN else 2e-4
    assert [opt.param_groups[0]["lr"] for opt in trainer.optimizers] == [want, want]
