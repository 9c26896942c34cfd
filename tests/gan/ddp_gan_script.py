"""Fit a tiny GAN on 2 CPU processes with DDP; run by tests/gan/test_gan_ddp.py in a subprocess.

Usage: python ddp_gan_script.py LOSS OUT_DIR. Lightning's DDP launcher re-executes this command
for rank 1; each rank writes its generator, EMA and discriminator weights to
OUT_DIR/rank{r}.pt. Plain ``strategy="ddp"`` (find_unused_parameters=False): a parameter that
got no gradient in a backward pass would make DDP raise.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels import GAN


def main(loss: str, out_dir: str) -> None:
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.manual_seed(0)
    x = torch.rand(64, 1, 28, 28) * 2 - 1
    loader = DataLoader(TensorDataset(x, torch.zeros(64, dtype=torch.long)), batch_size=8, shuffle=True)
    model = GAN(latent_dim=8, features=4, loss=loss, n_critic=2 if loss == "wgan_gp" else 1)
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_train_batches=4,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=loader)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state["global_step"] = trainer.global_step
    torch.save(state, Path(out_dir) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
