"""The shipped GAN config and the user subclasses in examples/my_gan.py, trained through the CLI
for a few steps on real MNIST, with their sample grids and checkpoints."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from examples.my_gan import LSGAN, MLPGAN
from lightning_genmodels import GAN
from lightning_genmodels.gan import Discriminator, Generator
from lightning_genmodels.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "gan_mnist.yaml"



def fit_args(mnist_dir: Path, tmp_path: Path, *extra: str, steps: int = 6) -> list[str]:
    """A few optimizer steps of the shipped config, tiny validation, every output in tmp_path."""
    return [
        "fit", "--config", str(CONFIG), *extra,
        "--data.data_dir", str(mnist_dir),
        "--data.batch_size", "16",
        "--trainer.max_steps", str(steps),
        "--trainer.limit_val_batches", "1",
        "--trainer.accelerator", "cpu",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.callbacks", f'[{{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
        f'"init_args": {{"dirpath": "{tmp_path}", "filename": "gan"}}}}, '
        f'{{"class_path": "lightning_genmodels.SampleGrid", "init_args": {{"path": "{tmp_path}/grid.png", '
        f'"num_samples": 8, "nrow": 4}}}}, '
        f'{{"class_path": "lightning_genmodels.LatentInterpolation", "init_args": {{"path": "{tmp_path}/interp.png", '
        f'"num_rows": 2, "num_steps": 5}}}}]',
    ]


def check_outputs(tmp_path: Path) -> None:
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (4 * 30 + 2, 2 * 30 + 2)
    with Image.open(tmp_path / "interp.png") as interp:
        assert interp.size == (5 * 30 + 2, 2 * 30 + 2)
    assert (tmp_path / "gan.ckpt").is_file()


def test_shipped_config_checkpointing_every_n_train_steps_warns_nothing(mnist_dir: Path, tmp_path: Path) -> None:
    """The shipped config's ModelCheckpoint(every_n_train_steps=...) made Lightning 2.6 print a
    20-line note about manual optimisation at every checkpoint: the GAN saves its state after the
    step, as intended, so the CLI keeps it quiet."""
    args = [a for a in fit_args(mnist_dir, tmp_path, "--model.features", "4") if not a.startswith("[")]
    args.remove("--trainer.callbacks")
    args += ["--trainer.callbacks", f'[{{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
             f'"init_args": {{"dirpath": "{tmp_path}", "filename": "gan", "every_n_train_steps": 2}}}}]']
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(args=args)
    assert (tmp_path / "gan.ckpt").is_file()
    assert not [w for w in caught if "manual optimization" in str(w.message)]


def test_shipped_config(mnist_dir: Path, tmp_path: Path) -> None:
    cli = main(args=fit_args(mnist_dir, tmp_path, "--model.features", "4"))
    assert type(cli.model) is GAN and cli.model.hparams.loss == "non_saturating"
    assert cli.trainer.global_step == 6
    assert cli.datamodule.input_format == "symmetric"  # adopted from GAN.input_format
    check_outputs(tmp_path)
    loaded = GAN.load_from_checkpoint(tmp_path / "gan.ckpt")
    torch.testing.assert_close(loaded.sample(4, seed=0), cli.model.sample(4, seed=0), rtol=0, atol=0)


def test_subclass_swapping_the_networks(mnist_dir: Path, tmp_path: Path) -> None:
    cli = main(args=fit_args(mnist_dir, tmp_path, "--model", "examples.my_gan.MLPGAN", "--model.hidden", "16"))
    assert type(cli.model) is MLPGAN and cli.model.hparams.hidden == 16
    assert isinstance(cli.model.generator[0], torch.nn.Linear) and cli.model.generator[0].out_features == 16
    check_outputs(tmp_path)
    loaded = MLPGAN.load_from_checkpoint(tmp_path / "gan.ckpt")  # rebuilt from the saved hidden=16
    torch.testing.assert_close(loaded.sample(4, seed=0), cli.model.sample(4, seed=0), rtol=0, atol=0)


def test_networks_by_class_path_reload_from_the_checkpoint(mnist_dir: Path, tmp_path: Path) -> None:
    # The networks' configuration is kept in the checkpoint, as the VAE's: it loads with no arguments.
    nets = {"class_path": "lightning_genmodels.gan.Generator", "init_args": {"latent_dim": 8, "features": 4}}
    critic = {"class_path": "lightning_genmodels.gan.Discriminator", "init_args": {"features": 4}}
    cli = main(args=fit_args(mnist_dir, tmp_path, "--model.latent_dim", "8", "--model.generator", json.dumps(nets),
                             "--model.discriminator", json.dumps(critic), steps=2))
    assert cli.model.hparams.generator["init_args"]["features"] == 4
    loaded = GAN.load_from_checkpoint(tmp_path / "gan.ckpt")
    assert isinstance(loaded.generator, Generator) and isinstance(loaded.discriminator, Discriminator)
    torch.testing.assert_close(loaded.sample(4, seed=0), cli.model.sample(4, seed=0), rtol=0, atol=0)


def test_subclass_changing_the_loss(mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # With a tiny learning rate D(x) stays near 0, where the least squares D loss is about
    # 0.5 * (1 + 0) = 0.5 and the non-saturating one 2 log 2 = 1.39.
    cli = main(args=fit_args(mnist_dir, tmp_path, "--model", "examples.my_gan.LSGAN", "--model.features", "4",
                             "--model.lr_d", "1e-7", "--model.lr_g", "1e-7", steps=2))
    assert type(cli.model) is LSGAN
    assert abs(cli.trainer.callback_metrics["train/d_loss"].item() - 0.5) < 0.15
    assert "train/d_loss" in capsys.readouterr().out  # the CLI's metrics table
    check_outputs(tmp_path)
