"""SampleGrid: the PNG at fit end, periodic grids, clamping, loggers, and modules that cannot
sample; slerp and LatentInterpolation."""
from __future__ import annotations

from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels.callbacks import LatentInterpolation, SampleGrid, slerp

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
    assert set(tmp_path.glob("grid_*.png")) == periodic and callback.last_path == tmp_path / "grid_3.png"
    # the fit-end grid is the last epoch's (the same weights): not drawn again as grid_4.png
    assert len(module.calls) == 2


def test_fit_end_grid_is_drawn_again_when_the_weights_changed_after_the_last_epoch(tmp_path: Path) -> None:
    """As a GaussianMixture's best restart, restored when the Trainer stops a fit early."""

    class Restoring(Sampler):
        def on_train_end(self) -> None:
            with torch.no_grad():
                self.layer.weight.add_(1.0)

    module = Restoring()
    callback = SampleGrid(str(tmp_path / "s_{epoch}.png"), num_samples=2, every_n_epochs=1)
    fit(module, callback, max_epochs=1)
    assert set(tmp_path.glob("s_*.png")) == {tmp_path / "s_0.png", tmp_path / "s_1.png"}
    assert len(module.calls) == 2


def test_fit_end_grid_after_epochs_that_wrote_none(tmp_path: Path) -> None:
    module = Sampler()
    callback = SampleGrid(str(tmp_path / "grid_{epoch}.png"), num_samples=4, nrow=2, every_n_epochs=2)
    fit(module, callback, max_epochs=3)  # epoch 2 writes grid_1; epoch 3 none, so fit end does
    assert set(tmp_path.glob("grid_*.png")) == {tmp_path / "grid_1.png", tmp_path / "grid_3.png"}
    assert callback.last_path == tmp_path / "grid_3.png" and len(module.calls) == 2


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


# ----- grids sent to loggers ------------------------------------------------------------------
class _Experiment:
    """TensorBoard's SummaryWriter face: ``add_image(tag, image, global_step)``."""

    def __init__(self) -> None:
        self.images: list[tuple[str, Tensor, int]] = []

    def add_image(self, tag: str, image: Tensor, global_step: int) -> None:
        self.images.append((tag, image, global_step))


class BoardLikeLogger(lightning.pytorch.loggers.Logger):
    """A logger whose experiment has ``add_image``, like TensorBoardLogger."""

    def __init__(self) -> None:
        super().__init__()
        self._experiment = _Experiment()

    @property
    def experiment(self) -> _Experiment:
        return self._experiment

    name, version = "board", 0

    def log_metrics(self, metrics, step=None) -> None: ...

    def log_hyperparams(self, params, *args, **kwargs) -> None: ...


class ImageLogger(BoardLikeLogger):
    """A logger with ``log_image(key, images, step)``, like WandbLogger."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[str, list[Tensor], int]] = []

    def log_image(self, key: str, images: list[Tensor], step: int | None = None) -> None:
        self.logged.append((key, images, step))


def test_periodic_grids_go_to_every_logger_that_takes_images(tmp_path: Path) -> None:
    board, wandb_like = BoardLikeLogger(), ImageLogger()
    csv = lightning.pytorch.loggers.CSVLogger(tmp_path / "csv")  # takes no images: skipped
    module = Sampler()
    callback = SampleGrid(str(tmp_path / "grid_{epoch}.png"), num_samples=4, nrow=2, every_n_epochs=1, seed=3)
    trainer = lightning.Trainer(
        accelerator="cpu", max_epochs=2, logger=[board, wandb_like, csv], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
    )
    trainer.fit(module)

    steps = [2, 4]  # 2 batches per epoch; grids after epochs 1 and 2, not at fit end
    assert [(tag, step) for tag, _, step in board.experiment.images] == [("samples", s) for s in steps]
    assert [(key, step) for key, _, step in wandb_like.logged] == [("samples", s) for s in steps]
    assert board.experiment.images[0][1].shape == (3, 2 * (SIDE + 2) + 2, 2 * (SIDE + 2) + 2)
    assert torch.equal(board.experiment.images[0][1], wandb_like.logged[1][1][0])  # fixed seed: same grid
    assert all(seed == 3 for _, seed, _ in module.calls)
    assert (tmp_path / "grid_0.png").is_file() and (tmp_path / "grid_1.png").is_file()


def test_log_to_logger_false(tmp_path: Path) -> None:
    wandb_like = ImageLogger()
    callback = SampleGrid(str(tmp_path / "g.png"), num_samples=2, every_n_epochs=1, log_to_logger=False)
    trainer = lightning.Trainer(accelerator="cpu", max_epochs=1, logger=wandb_like, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(Sampler())
    assert wandb_like.logged == [] and (tmp_path / "g.png").is_file()


# ----- latent interpolation -------------------------------------------------------------------
class LatentSampler(Sampler):
    """decode_latents maps z [n, 2] to images whose every pixel is sigmoid(z[:, 0])."""

    latent_dim = 2

    def decode_latents(self, z: Tensor) -> Tensor:
        self.decoded = z
        return torch.sigmoid(z[:, :1, None, None]).expand(-1, 1, SIDE, SIDE)


def test_slerp_endpoints_norms_and_parallel_fallback() -> None:
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g)
    t = torch.linspace(0, 1, 5)
    path = slerp(z0, z1, t)
    assert path.shape == (3, 5, 16)
    torch.testing.assert_close(path[:, 0], z0)
    torch.testing.assert_close(path[:, -1], z1)
    # between two unit vectors slerp stays on the unit sphere, at equal angular steps
    u0, u1 = z0 / z0.norm(dim=1, keepdim=True), z1 / z1.norm(dim=1, keepdim=True)
    unit = slerp(u0, u1, t)
    torch.testing.assert_close(unit.norm(dim=2), torch.ones(3, 5))
    angles = torch.acos((unit[:, :-1] * unit[:, 1:]).sum(2).clamp(-1, 1))
    torch.testing.assert_close(angles, angles[:, :1].expand_as(angles))
    # parallel endpoints: the straight line
    torch.testing.assert_close(slerp(u0, 2 * u0, t), torch.lerp(u0[:, None], 2 * u0[:, None], t[None, :, None]))


@pytest.mark.parametrize("mode", ["slerp", "lerp"])
def test_latent_interpolation_grid(tmp_path: Path, mode: str) -> None:
    module = LatentSampler()
    callback = LatentInterpolation(str(tmp_path / "interp.png"), num_rows=2, num_steps=4, mode=mode, seed=1)
    fit(module, callback, max_epochs=1)
    z = module.decoded.reshape(2, 4, 2)
    z0, z1 = torch.randn(2, 2, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(z[:, 0], z0)  # fixed endpoints from the seed
    torch.testing.assert_close(z[:, -1], z1)
    if mode == "lerp":
        torch.testing.assert_close(z[:, 1], z0 + (z1 - z0) / 3)
    grid = read_png(tmp_path / "interp.png")
    assert grid.shape == (2 * (SIDE + 2) + 2, 4 * (SIDE + 2) + 2)  # rows = walks, columns = steps
    expected = torch.sigmoid(z[0, 1, 0]) * 255
    assert abs(float(grid[2, 2 + SIDE + 2]) - float(expected)) <= 1  # image (row 0, step 1)


def test_latent_interpolation_needs_latents_and_checks_options(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="Sampler needs latent_dim and decode_latents"):
        fit(Sampler(), LatentInterpolation(str(tmp_path / "i.png")), max_epochs=1)
    with pytest.raises(ValueError, match="mode='cubic'"):
        LatentInterpolation(mode="cubic")
    with pytest.raises(ValueError, match="num_steps=1"):
        LatentInterpolation(num_steps=1)


@pytest.mark.parametrize("option, value, match", [
    ("num_samples", 0, "num_samples=0 must be an integer >= 1"),  # each failed only when fit ended
    ("nrow", 0, "nrow=0 must be an integer >= 1"),
    ("nrow", -1, "nrow=-1 must be"),
    ("num_samples", 2.5, "num_samples=2.5 must be an integer"),
    ("seed", -1, r"seed=-1 must be an integer in \[0, 18446744073709551615\]"),
])
def test_sample_grid_checks_its_options_when_built(option, value, match):
    with pytest.raises(ValueError, match=match):
        SampleGrid(**{option: value})


@pytest.mark.parametrize("make, match", [
    (lambda: LatentInterpolation(num_rows=2.0), "num_rows=2.0 must be an integer >= 1"),  # failed when fit ended
    (lambda: LatentInterpolation(seed=1.5), r"seed=1.5 must be an integer in \[0, 18446744073709551615\]"),
    (lambda: LatentInterpolation(seed=-1), r"seed=-1 must be an integer in \[0, "),  # torch wrapped it
    (lambda: SampleGrid(every_n_epochs=0.5), "every_n_epochs=0.5 must be an integer >= 0"),  # wrote every epoch
    (lambda: SampleGrid(path="out/samples_{step}.png"), r"the only field it may hold is \{epoch\}.*KeyError: 'step'"),
    (lambda: LatentInterpolation(path="out/{}.png"), r"the only field it may hold is \{epoch\}.*IndexError"),
], ids=["rows_float", "seed_float", "seed_negative", "every_float", "path_step", "path_positional"])
def test_grid_options_are_checked_when_built(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_grid_path_may_be_a_path_with_a_formatted_epoch(tmp_path: Path) -> None:
    callback = SampleGrid(tmp_path / "s_{epoch:03d}.png", num_samples=2, every_n_epochs=1)
    fit(Sampler(), callback, max_epochs=1)
    # the fit-end grid is that epoch's (the same weights), not s_001.png again
    assert set(tmp_path.glob("s_*.png")) == {tmp_path / "s_000.png"} and callback.last_path == tmp_path / "s_000.png"


class CountingNoSampler(NoSampler):
    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.steps += 1
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("make, match", [
    (lambda path: SampleGrid(path), "has no sample_images"),
    (lambda path: LatentInterpolation(path), "needs latent_dim and decode_latents"),
], ids=["sample_grid", "latent_interpolation"])
def test_a_module_the_grid_cannot_draw_is_refused_before_training(tmp_path: Path, make, match: str) -> None:
    """The TypeError came only when the first grid was due: at the end of fit (or of an epoch)."""
    module = CountingNoSampler()
    with pytest.raises(TypeError, match=match):
        fit(module, make(str(tmp_path / "grid.png")))
    assert module.steps == 0
