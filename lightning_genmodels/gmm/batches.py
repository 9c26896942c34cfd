"""Plumbing for streamed EM: passes over the rank-local batches, cross-rank collectives, the
weights that cancel DistributedSampler padding.

Padding: rows that DistributedSampler repeats get sample weight 0 (``padding_weights``, shared
with the other families in ``lightning_genmodels/ddp.py``), so each data point counts once.
"""
from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import RandomSampler

from ..ddp import padding_weights

# A zero-argument callable that starts one pass over the (rank-local) data, yielding
# ``(x [B, D], sample_weight [B] or None)``; called once per pass.
Batches = Callable[[], Iterable[tuple[Tensor, Tensor | None]]]


# The world size of the Trainer running a GaussianMixture fit (set by its setup hook, None outside
# one): a process group left open by an earlier DDP fit must not join a single-process fit.
_trainer_world: list[int | None] = [None]


def set_trainer_world(world_size: int | None) -> None:
    _trainer_world[0] = world_size


def is_distributed() -> bool:
    """Whether the collectives run: a torch.distributed process group with more than one rank,
    and, inside a fit, a Trainer of more than one rank."""
    world = _trainer_world[0]
    if world is not None and world <= 1:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(*tensors: Tensor) -> None:
    """Sum each tensor over ranks in place (no-op in a single process)."""
    if is_distributed():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def all_gather_cat(t: Tensor) -> Tensor:
    """Concatenate a same-shaped tensor from every rank along dim 0 (itself in one process)."""
    if not is_distributed():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def broadcast_(*tensors: Tensor, src: int = 0) -> None:
    """Copy each tensor from rank ``src`` to every rank, in place."""
    if is_distributed():
        for t in tensors:
            dist.broadcast(t, src=src)


def rank() -> int:
    """This process's global rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def shared_seed(seed: int | None, device: torch.device) -> int:
    """``seed``, or a fresh random seed drawn on rank 0 and shared by every rank (``device``:
    where the collective runs, the CUDA device under NCCL)."""
    if seed is not None:
        return int(seed)
    drawn = torch.randint(0, 2**62, (1,), dtype=torch.int64).to(device)
    broadcast_(drawn)
    return int(drawn.item())


def batch_tensor(batch: Any) -> Tensor:
    """The input tensor of a batch: ``batch`` itself or the first item of a tuple/list/dict."""
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    elif isinstance(batch, dict):
        batch = next(iter(batch.values()))
    return batch.reshape(batch.shape[0], -1)


def all_finite(x: Tensor) -> bool:
    """Whether x holds no NaN or infinity: its min and max in one reduction (both propagate NaN),
    where ``torch.isfinite(x).all()`` wrote an [N, D] bool copy first (24x as long on the MNIST
    pixels, 289 against 12 ms on two cores)."""
    if x.numel() == 0:
        return True
    low, high = torch.aminmax(x)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def loader_batches(
    loader: Iterable[Any], sampler: Any, device: torch.device, dtype: torch.dtype, check_finite: bool = True,
    max_batches: int | None = None, order_seed: int | None = None,
) -> Batches:
    """A :data:`Batches` over a DataLoader: rows flattened to [B, D], moved to device/dtype, with
    the padding weights of ``sampler`` (the loader's, possibly a DistributedSampler); each batch
    is checked for NaN/inf unless ``check_finite`` is False (data checked once beforehand).
    ``max_batches``: the first batches only (the Trainer's ``limit_train_batches``).
    ``order_seed``: a shuffling ``RandomSampler`` draws every pass's order from this seed, so that
    every pass reads the same rows in the same order whatever torch's global generator holds."""

    def passes() -> Iterator[tuple[Tensor, Tensor | None]]:
        seen = 0
        with _fixed_order(sampler, order_seed):
            for batch in itertools.islice(loader, max_batches):  # None: all of them
                x = batch_tensor(batch).to(device=device, dtype=dtype)
                if check_finite and not all_finite(x):
                    raise ValueError("the data contain NaN or infinite values")
                w = padding_weights(sampler, seen, x.shape[0], device)
                seen += x.shape[0]
                yield x, (None if w is None else w.to(dtype))

    return passes


@contextmanager
def _fixed_order(sampler: Any, seed: int | None) -> Iterator[None]:
    """A RandomSampler's generator seeded by ``seed`` inside the block, its own restored after."""
    if seed is None or not isinstance(sampler, RandomSampler):
        yield
        return
    saved = sampler.generator
    sampler.generator = torch.Generator().manual_seed(seed)
    try:
        yield
    finally:
        sampler.generator = saved
