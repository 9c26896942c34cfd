"""Trainer.predict of a tiny VAE with a PredictionWriter, on 1 or 2 CPU processes (DDP); run by
tests/test_predict.py in a subprocess. Usage: python ddp_predict_script.py DEVICES OUT_DIR."""
from __future__ import annotations

import sys

import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels import VAE, PredictionWriter
from lightning_genmodels.vae import ConvDecoder, ConvEncoder


def main(devices: int, out_dir: str) -> None:
    torch.manual_seed(0)
    model = VAE(latent_dim=4, encoder=ConvEncoder(4, channels=(4, 8)), decoder=ConvDecoder(4, channels=(8, 4)))
    images = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(1))  # 7: ranks differ
    loader = DataLoader(TensorDataset(images), batch_size=2)
    trainer = Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                      logger=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[PredictionWriter(out_dir)])
    trainer.predict(model, loader, return_predictions=False)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
