"""A tiny Diffusion fit with FIDCallback and SampleGrid on 1 or 2 CPU processes; run by
tests/diffusion/test_ddp_sampling.py.

Usage: python ddp_fit_script.py DATA_DIR CACHE_DIR OUT_DIR DEVICES. Lightning's DDP launcher
re-executes this command for rank 1; every rank writes OUT_DIR/rank{r}.json, and rank 0 also
OUT_DIR/after.pt: images it draws alone after fit (the other rank has left by then).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer

from lightning_genmodels import Diffusion, MNISTDataModule
from lightning_genmodels.callbacks import FIDCallback, SampleGrid

TINY = dict(base_channels=8, channel_mults=(1, 2), groups=4, attention_heads=2, num_train_timesteps=100)


def main(data_dir: str, cache_dir: str, out_dir: str, devices: int) -> None:
    torch.manual_seed(0)
    # lr 1e-12: the weights stay put to ~1e-12, so 1 and 2 processes sample alike
    model = Diffusion(**TINY, sample_steps=2, ema_decay=0.0, lr=1e-12)
    # 3 chunks of 4: rank 0 draws two, rank 1 one (was: each call split over the ranks, a deadlock)
    fid = FIDCallback(data_dir=data_dir, cache_dir=cache_dir, num_samples=12, batch_size=4, num_real=100,
                      kid_subset_size=4)
    grid = SampleGrid(path=str(Path(out_dir, f"grid{devices}.png")), num_samples=1)  # fewer images than ranks
    flags = {"strategy": "ddp"} if devices > 1 else {}
    trainer = Trainer(accelerator="cpu", devices=devices, max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[fid, grid], **flags)
    trainer.fit(model, MNISTDataModule(data_dir=data_dir, batch_size=4, val_split=8, num_workers=0))
    Path(out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps({"fid": fid.last}))
    if trainer.is_global_zero:  # alone: no collective once fit has ended
        torch.save(model.sample(3, seed=5), Path(out_dir, f"after{devices}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
