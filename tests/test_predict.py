"""Trainer.predict for every family the README's `predict` subcommand covers (it crashed for the
VAE, GAN and Diffusion: no predict_step)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels import GAN, VAE, Diffusion, MNISTDataModule, PredictionWriter
from lightning_genmodels.vae import ConvDecoder, ConvEncoder

from tests.utils import run_script


def tiny(family: str):
    torch.manual_seed(0)
    if family == "vae":
        return VAE(latent_dim=4, encoder=ConvEncoder(4, channels=(4, 8)), decoder=ConvDecoder(4, channels=(8, 4)))
    if family == "gan":
        return GAN(latent_dim=8, features=4)
    return Diffusion(base_channels=8, channel_mults=(1, 2), groups=4, attention_heads=2, num_train_timesteps=100)


@pytest.mark.parametrize("family, keys", [
    ("vae", {"mean": (6, 4), "log_var": (6, 4), "reconstruction": (6, 1, 28, 28)}),
    ("gan", {"logits": (6,)}),
    ("diffusion", {"loss": (6,)}),
])
def test_predict_returns_per_image_outputs(family, keys, mnist_dir):
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=6, val_split=12)
    trainer = Trainer(accelerator="cpu", limit_predict_batches=2, logger=False, enable_progress_bar=False,
                      enable_model_summary=False)
    out = trainer.predict(tiny(family), data)
    assert len(out) == 2
    for batch in out:
        assert {k: tuple(v.shape) for k, v in batch.items()} == keys
        assert all(torch.isfinite(v).all() for v in batch.values())
    if family == "diffusion":  # the per-image loss at the validation draws: the same on another run
        torch.testing.assert_close(trainer.predict(tiny(family), data)[0]["loss"], out[0]["loss"])


def test_prediction_writer_saves_the_rows_in_dataset_order(mnist_dir, tmp_path):
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=6, val_split=12)
    trainer = Trainer(accelerator="cpu", limit_predict_batches=2, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[PredictionWriter(str(tmp_path))])
    out = trainer.predict(tiny("vae"), data)
    saved = torch.load(tmp_path / "predictions.pt")
    assert trainer.callbacks[0].path == str(tmp_path / "predictions.pt")
    torch.testing.assert_close(saved["index"], torch.arange(12))
    for key in ("mean", "log_var", "reconstruction"):
        torch.testing.assert_close(saved[key], torch.cat([batch[key] for batch in out]))


def test_prediction_writer_keeps_other_outputs_batch_by_batch(tmp_path):
    class Strings(VAE):
        def predict_step(self, batch, batch_idx):
            return [f"batch {batch_idx}"]

    loader = DataLoader(TensorDataset(torch.rand(3, 1, 28, 28)), batch_size=2)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[PredictionWriter(str(tmp_path), filename="out.pt")])
    with pytest.warns(UserWarning, match="batch by batch"):
        trainer.predict(Strings(latent_dim=2, encoder=ConvEncoder(2, channels=(4, 8)),
                                decoder=ConvDecoder(2, channels=(8, 4))), loader)
    saved = torch.load(tmp_path / "out.pt")
    assert saved == {"batches": [[["batch 0"], ["batch 1"]]], "batch_indices": [[[0, 1], [2]]]}


def test_prediction_writer_refuses_a_path_as_file_name():
    with pytest.raises(ValueError, match="filename"):
        PredictionWriter(filename="a/b.pt")


def _predict_run(devices: int, out: Path) -> dict:
    run_script("ddp_predict_script.py", devices, out, cwd=out)
    return torch.load(out / "predictions.pt")


def test_prediction_writer_under_ddp_writes_what_one_process_writes(tmp_path):
    """7 images over 2 ranks (4 and 3): rank 0 gathers them into one file, in dataset order."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one, two = _predict_run(1, tmp_path / "one"), _predict_run(2, tmp_path / "two")
    torch.testing.assert_close(two["index"], torch.arange(7))
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], msg=key)
