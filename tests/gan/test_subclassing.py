"""Users' GAN subclasses and what their configure_optimizers gives training_step: LR schedulers,
which Lightning steps not under manual optimisation (they stayed put, silently), and one
optimizer where the players need two (LightningCLI's --optimizer)."""
from __future__ import annotations

import warnings
from pathlib import Path

import lightning
import pytest
import torch

from lightning_genmodels import GAN
from lightning_genmodels.cli import main

from .test_gan import QUIET, TINY, loader
from .test_gan_cli import CONFIG


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


class OneOptimizerGAN(GAN):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_one_optimizer_is_named() -> None:
    """One optimizer (a subclass's, or LightningCLI's --optimizer) failed inside training_step:
    "cannot unpack non-iterable LightningAdam object"."""
    with pytest.raises(ValueError, match="OneOptimizerGAN needs two optimizers .* got 1"):
        fit(OneOptimizerGAN(**TINY))


def test_cli_optimizer_flag_is_named(mnist_dir: Path, tmp_path: Path) -> None:
    args = ["fit", "--config", str(CONFIG), "--optimizer", "Adam", "--data.data_dir", str(mnist_dir),
            "--data.batch_size", "8", "--trainer.fast_dev_run", "1", "--trainer.accelerator", "cpu",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks", "[]"]
    with pytest.raises(ValueError, match="LightningCLI's --optimizer"):
        main(args=args)
