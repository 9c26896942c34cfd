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


# ---------------------------------------------------------------------------- FID tracking


class FIDCallback(Callback):
    """Every ``every_n_epochs`` validation epochs, generate ``num_samples`` images with the
    module's ``sample_images(n, seed)`` and log ``val/fid``, ``val/kid``, ``val/precision``,
    ``val/recall``, ``val/mode_coverage`` and ``val/confidence`` (see
    :class:`~lightning_genmodels.metrics.SampleQuality`), so that
    ``ModelCheckpoint(monitor="val/fid", mode="min", every_n_epochs=N)`` keeps the best model.

    The samples are chunks of ``batch_size`` images, chunk j drawn with seed ``seed + j`` (the
    same seeds every time, so epochs are compared on the same noise). Under DDP rank r draws the
    chunks j = r, r + W, ... and torchmetrics sums the statistics across ranks, so any number of
    processes evaluates exactly the same samples as one. Runs at the end of validation on epochs
    where ``(epoch + 1) % every_n_epochs == 0`` (ModelCheckpoint's rule for ``every_n_epochs``).

    Args:
        data_dir: MNIST IDX folder for the real images (None: ``$LGM_DATA_DIR``).
        every_n_epochs: evaluate every N epochs.
        num_samples: generated images per evaluation, over all ranks.
        batch_size: images per ``sample_images`` call.
        seed: base seed of the samples.
        split: real reference set; its features are cached on disk.
        num_real: a seeded subset of the real split (None: all of it).
        feature: "mnist" or an Inception layer (see SampleQuality).
        weights_path: feature-network weights (None: shipped MNIST weights).
        cache_dir: real-feature cache folder (None: the default in metrics/real.py).
        kid_subset_size: KID subset size (capped by the sample counts).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        every_n_epochs: int = 1,
        num_samples: int = 10_000,
        batch_size: int = 500,
        seed: int = 0,
        split: str = "test",
        num_real: int | None = None,
        feature: str | int = "mnist",
        weights_path: str | None = None,
        cache_dir: str | None = None,
        kid_subset_size: int = 1000,
    ) -> None:
        super().__init__()
        for name, value in (("every_n_epochs", every_n_epochs), ("num_samples", num_samples), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"FIDCallback: {name} must be >= 1, got {value}")
        self.data_dir, self.every_n_epochs, self.num_samples = data_dir, every_n_epochs, num_samples
        self.batch_size, self.seed, self.split, self.num_real = batch_size, seed, split, num_real
        self.feature, self.weights_path, self.cache_dir = feature, weights_path, cache_dir
        self.kid_subset_size = kid_subset_size
        self.quality = None
        self.last: dict[str, float] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "sample_images"):
            raise TypeError(f"{type(pl_module).__name__} has no sample_images(n, seed) for FIDCallback")
        if self.quality is None:
            from .metrics import SampleQuality

            self.quality = SampleQuality(self.feature, self.weights_path, kid_subset_size=self.kid_subset_size)
            self.quality.to(pl_module.device)
            self.quality.set_real_from_data(self.data_dir, self.split, self.num_real, self.cache_dir,
                                            trainer.global_rank, trainer.world_size)

    @torch.no_grad()
    def evaluate(self, pl_module: LightningModule, rank: int = 0, world_size: int = 1) -> dict[str, float]:
        """Draw this rank's chunks, update the metrics, compute (synchronised) and reset."""
        from .metrics.quality import sample_chunks

        self.quality.to(pl_module.device)
        for seed, size in sample_chunks(self.num_samples, self.batch_size, self.seed, rank, world_size):
            self.quality.update(pl_module.sample_images(size, seed=seed).float().clamp(0, 1))
        out = self.quality.compute(num_generated=self.num_samples)
        self.quality.reset()
        return {name: float(out[key]) for name, key in (
            ("fid", "fid"), ("kid", "kid"), ("precision", "precision"), ("recall", "recall"),
            ("mode_coverage", "coverage"), ("confidence", "confidence"))}

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.last = self.evaluate(pl_module, trainer.global_rank, trainer.world_size)
        for name, value in self.last.items():
            pl_module.log(f"val/{name}", value, sync_dist=False)  # already synchronised
