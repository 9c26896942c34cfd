"""A tiny VAE fitted on 2 CPU processes, then, on rank 0 alone, a one-process Trainer.validate
with FIDCallback (the other rank has left); run by tests/metrics/test_fid_after_ddp.py. Usage:
python fid_after_ddp_script.py DATA_DIR CACHE_DIR OUT_DIR; rank 0 writes OUT_DIR/fid.pt."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels import VAE
from lightning_genmodels.callbacks import FIDCallback
from lightning_genmodels.vae import ConvDecoder, ConvEncoder

QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def main(data_dir: str, cache_dir: str, out_dir: str) -> None:
    torch.manual_seed(0)
    model = VAE(latent_dim=4, encoder=ConvEncoder(4, channels=(4, 8)), decoder=ConvDecoder(4, channels=(8, 4)),
                val_iwae_k=2)
    loader = DataLoader(TensorDataset(torch.rand(8, 1, 28, 28)), batch_size=4)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, **QUIET)
    trainer.fit(model, loader)  # leaves its process group initialised
    if trainer.is_global_zero:
        fid = FIDCallback(data_dir=data_dir, cache_dir=cache_dir, num_samples=8, batch_size=4, num_real=100,
                          kid_subset_size=4)
        Trainer(accelerator="cpu", devices=1, callbacks=[fid], **QUIET).validate(model, loader, verbose=False)
        torch.save(fid.last, Path(out_dir) / "fid.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
