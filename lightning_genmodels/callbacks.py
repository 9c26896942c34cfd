"""Callbacks shared by the model families."""
from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchvision.utils import save_image


class SampleGrid(Callback):
    """Write a PNG grid of samples at the end of fitting (and every ``every_n_epochs``).

    The module must provide ``sample_images(n, seed) -> [n, C, H, W]`` with values in [0, 1];
    every model family in this package does.

    Args:
        path: PNG file; ``{epoch}`` in it is filled in for the periodic grids.
        num_samples: images in the grid.
        nrow: images per row.
        every_n_epochs: also write during training; 0 writes only at the end of ``fit``.
        seed: sampling seed, so grids from different epochs are comparable.
    """

    def __init__(
        self,
        path: str = "outputs/samples.png",
        num_samples: int = 64,
        nrow: int = 8,
        every_n_epochs: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.path = path
        self.num_samples = num_samples
        self.nrow = nrow
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.last_path: Path | None = None

    def _write(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not hasattr(pl_module, "sample_images"):
            raise TypeError(f"{type(pl_module).__name__} has no sample_images(n, seed) for SampleGrid")
        images = pl_module.sample_images(self.num_samples, seed=self.seed)
        if not trainer.is_global_zero:
            return
        path = Path(self.path.format(epoch=trainer.current_epoch))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(images.detach().float().clamp(0, 1).cpu(), path, nrow=self.nrow, padding=2)
        self.last_path = path
        print(f"wrote {len(images)} samples to {path}")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            with torch.no_grad():
                self._write(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with torch.no_grad():
            self._write(trainer, pl_module)
