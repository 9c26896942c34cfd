"""A tiny VAE fitted on 2 CPU processes with ModelCheckpoint(monitor="train/loss") and a
max_time, then tested from the best checkpoint; run by tests/test_ddp_train_monitor.py. Usage:
python ddp_train_monitor_script.py OUT_DIR; each rank writes OUT_DIR/rank{r}.pt (its best path,
the train/loss it saw and the test metrics)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels import VAE
from lightning_genmodels.vae import ConvDecoder, ConvEncoder


def main(out_dir: str) -> None:
    seed_everything(0)
    loader = DataLoader(TensorDataset(torch.rand(16, 1, 28, 28)), batch_size=4)
    model = VAE(latent_dim=4, encoder=ConvEncoder(4, channels=(4, 8)), decoder=ConvDecoder(4, channels=(8, 4)),
                iwae_k=2, val_iwae_k=2)
    best = ModelCheckpoint(dirpath=out_dir, monitor="train/loss", filename="{epoch}-{train/loss:.4f}",
                           auto_insert_metric_name=False)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, max_time="00:00:10:00",
                      logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[best])
    trainer.fit(model, loader)
    loss = float(trainer.callback_metrics["train/loss"])
    tested = trainer.test(model, loader, ckpt_path="best", verbose=False)  # each rank loads its best path
    torch.save({"best": best.best_model_path, "loss": loss, "test": tested},
               Path(out_dir) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
