"""In-memory rows [N, D] for ``GaussianMixture.fit(X)``: batches are contiguous views, no copy.

Under DDP rank r of R takes the contiguous shard ``[r·N/R, (r+1)·N/R)`` (no padding, so every
row counts once). The loader is a plain sized iterable, not a DataLoader: Lightning then neither
swaps in a (padding) DistributedSampler nor asks for worker processes.
"""
from __future__ import annotations

from typing import Iterator

from lightning.pytorch import LightningDataModule
from torch import Tensor


class RowBatches:
    """Contiguous views ``x[i : i + batch_size]`` of one rank's shard, in order.

    Args:
        x: [N, D] rows (contiguous rows make contiguous views).
        batch_size: rows per batch.
        rank: this process's rank.
        world_size: number of ranks.
    """

    def __init__(self, x: Tensor, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = x.shape[0]
        self.x = x[rank * n // world_size : (rank + 1) * n // world_size]
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        for start in range(0, self.x.shape[0], self.batch_size):
            yield self.x[start : start + self.batch_size]


class TensorDataModule(LightningDataModule):
    """The rows of ``fit(X)`` as :class:`RowBatches`, sharded by rank once the trainer is known."""

    def __init__(self, x: Tensor, batch_size: int = 65536) -> None:
        super().__init__()
        self.x = x
        self.batch_size = batch_size

    def train_dataloader(self) -> RowBatches:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return RowBatches(self.x, self.batch_size, rank, world)

    def val_dataloader(self) -> list:
        return []  # fit(X) has no validation data (the trainer runs no validation batches)
