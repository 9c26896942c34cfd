"""Run FIDCallback on 2 CPU processes with DDP; run by tests/metrics/test_fid_callback.py.

Usage: python ddp_fid_script.py DATA_DIR CACHE_DIR OUT_DIR [CALLBACK_ARGS_JSON]. Lightning's DDP
launcher re-executes this command for rank 1; every rank writes the logged metrics to
OUT_DIR/rank{r}.json. The JSON overrides entries of CALLBACK_ARGS.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels.callbacks import FIDCallback
from lightning_genmodels.metrics import load_real_images

CALLBACK_ARGS = {"num_samples": 300, "batch_size": 64, "num_real": 1000, "kid_subset_size": 100}


class NoisyBank(LightningModule):
    """A 'generator' whose samples are seeded noisy copies of 256 training digits."""

    def __init__(self, data_dir: str) -> None:
        super().__init__()
        self.register_buffer("bank", load_real_images(data_dir, "train", num=256).float().div(255).unsqueeze(1))
        self.w = torch.nn.Parameter(torch.zeros(1))

    def sample_images(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, len(self.bank), (n,), generator=g)
        return (self.bank[idx] + 0.1 * torch.randn(n, 1, 28, 28, generator=g)).clamp(0, 1)

    def training_step(self, batch, batch_idx):
        return (self.w - batch[0].mean()).pow(2).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", (self.w - batch[0].mean()).pow(2).sum())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(16, 1)), batch_size=4)


def run(data_dir: str, cache_dir: str, devices: int, **overrides) -> tuple[Trainer, FIDCallback]:
    callback = FIDCallback(data_dir=data_dir, cache_dir=cache_dir, **{**CALLBACK_ARGS, **overrides})
    flags = {"strategy": "ddp"} if devices > 1 else {}
    trainer = Trainer(accelerator="cpu", devices=devices, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[callback], **flags)
    trainer.fit(NoisyBank(data_dir), loader(), loader())
    return trainer, callback


def main(data_dir: str, cache_dir: str, out_dir: str, overrides: str = "{}") -> None:
    trainer, callback = run(data_dir, cache_dir, devices=2, **json.loads(overrides))
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    Path(out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps({"last": callback.last, "logged": logged}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
