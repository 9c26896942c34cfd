"""Per-batch times of ``Trainer.fit`` for the training-overhead benchmarks (gan_train, vae_train)."""
from __future__ import annotations

import time

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

WARMUP = 5  # batches left out of every run's times


class BatchClock(Callback):
    """Time stamps at the start of every training batch, and one after the last."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.stamps.append(time.perf_counter())


def per_batch(stamps: list[float]) -> list[float]:
    """Seconds of each batch after the warm-up, from consecutive batch-start stamps."""
    return [b - a for a, b in zip(stamps[WARMUP:-1], stamps[WARMUP + 1:])]


def lightning_batch_times(model: LightningModule, loader, batches: int) -> list[float]:
    """Seconds of each steady-state batch of one epoch of ``Trainer.fit`` (no logger, no checkpoints)."""
    clock = BatchClock()
    trainer = Trainer(
        accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=batches, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[clock], num_sanity_val_steps=0,
    )
    torch.manual_seed(1)
    trainer.fit(model, train_dataloaders=loader)
    return per_batch(clock.stamps)
