"""PredictionWriter writes its file atomically: a failed write (a full disk) leaves no truncated
file and the previous predictions as they were; '.' and '..' are no file names."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels import VAE, PredictionWriter
from lightning_genmodels.vae import ConvDecoder, ConvEncoder


def predict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VAE(latent_dim=2, encoder=ConvEncoder(2, channels=(4, 8)), decoder=ConvDecoder(2, channels=(8, 4)))
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[PredictionWriter(str(tmp_path))])
    trainer.predict(model, DataLoader(TensorDataset(torch.rand(3, 1, 28, 28)), batch_size=2))


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    predict(tmp_path)
    path = tmp_path / "predictions.pt"
    before = path.read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(before[:10])  # what a write cut short leaves
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        predict(tmp_path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["predictions.pt"]


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_names_are_no_file_names(name: str) -> None:
    with pytest.raises(ValueError, match="filename"):
        PredictionWriter(filename=name)
