"""A user's VAE subclass whose configure_optimizers adds a scheduler stepped on a training metric
every step: training metrics are logged only on the batches Lightning writes, and
ReduceLROnPlateau raised that train/loss was "not available" on the others."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels import VAE

from .test_vae import L, tiny_nets, trainer


class PlateauVAE(VAE):
    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.plateau, "monitor": "train/loss", "interval": "step"}}


def test_a_plateau_scheduler_stepped_every_step_reads_the_training_loss(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = PlateauVAE(latent_dim=L, **tiny_nets())
    x = torch.rand(40, 1, 28, 28).round()
    trainer(tmp_path, max_epochs=1, limit_val_batches=0, log_every_n_steps=50).fit(
        model, DataLoader(TensorDataset(x, torch.zeros(40)), batch_size=8))
    assert model.plateau.last_epoch == 5  # stepped on each of the 5 batches
