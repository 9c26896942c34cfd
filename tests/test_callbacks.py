"""SampleGrid: the PNG at fit end, periodic grids, clamping, and modules that cannot sample."""
from __future__ import annotations

from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels.callbacks import SampleGrid

SIDE = 8  # stub images are [1, 8, 8]; make_grid pads each by 2 pixels



class NoSampler(lightning.LightningModule):
    """A tiny regression module, trained for a few steps, that has no ``sample_images``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(16, 4, generator=generator), torch.randn(16, 1, generator=generator))
        return DataLoader(data, batch_size=8)


class Sampler(NoSampler):
    """Samples are left half ``low``, right half ``high``: [n, 1, 8, 8], outside [0, 1] if asked."""

    def __init__(self, low: float = 0.0, high: float = 1.0) -> None:
        super().__init__()
        self.low, self.high = low, high
        self.calls: list[tuple[int, int, bool]] = []  # (n, seed, grad enabled)

    def sample_images(self, n: int, seed: int = 0) -> Tensor:
        self.calls.append((n, seed, torch.is_grad_enabled()))
        images = torch.full((n, 1, SIDE, SIDE), self.low)
        images[..., SIDE // 2:] = self.high
        return images


def fit(module: NoSampler, callback: SampleGrid, max_epochs: int = 2) -> None:
    trainer = lightning.Trainer(
        accelerator="cpu", max_epochs=max_epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
    )
    trainer.fit(module)


def read_png(path: Path) -> np.ndarray:
    """[H, W] grey levels 0..255 of a PNG file."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("L"))


def test_grid_written_at_fit_end(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "samples.png"
    module, callback = Sampler(), SampleGrid(str(path), num_samples=6, nrow=3, seed=5)
    fit(module, callback)

    assert callback.last_path == path
    assert module.calls == [(6, 5, False)]  # once, at the end, with the seed and without grad
    grid = read_png(path)
    assert grid.shape == (2 * (SIDE + 2) + 2, 3 * (SIDE + 2) + 2)  # 2 rows of 3
    first = grid[2:2 + SIDE, 2:2 + SIDE]  # the first image, inside the padding
    assert (first[:, : SIDE // 2] == 0).all() and (first[:, SIDE // 2:] == 255).all()


def test_periodic_grids_fill_in_epoch(tmp_path: Path) -> None:
    module = Sampler()
    callback = SampleGrid(str(tmp_path / "grid_{epoch}.png"), num_samples=4, nrow=2, every_n_epochs=2)
    fit(module, callback, max_epochs=4)

    periodic = {tmp_path / "grid_1.png", tmp_path / "grid_3.png"}  # after epochs 2 and 4
    written = set(tmp_path.glob("grid_*.png"))
    assert periodic <= written and callback.last_path in written
    assert len(written) == len(periodic | {callback.last_path})
    assert len(module.calls) == 3  # two periodic grids and the one at fit end


def test_every_epoch(tmp_path: Path) -> None:
    callback = SampleGrid(str(tmp_path / "grid_{epoch}.png"), num_samples=4, every_n_epochs=1)
    fit(Sampler(), callback, max_epochs=2)
    assert (tmp_path / "grid_0.png").is_file() and (tmp_path / "grid_1.png").is_file()


def test_values_outside_unit_interval_are_clamped(tmp_path: Path) -> None:
    path = tmp_path / "samples.png"
    fit(Sampler(low=-3.0, high=7.5), SampleGrid(str(path), num_samples=2, nrow=2))
    first = read_png(path)[2:2 + SIDE, 2:2 + SIDE]
    assert (first[:, : SIDE // 2] == 0).all() and (first[:, SIDE // 2:] == 255).all()


def test_module_without_sample_images_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="NoSampler has no sample_images"):
        fit(NoSampler(), SampleGrid(str(tmp_path / "samples.png")))
    assert not (tmp_path / "samples.png").exists()
