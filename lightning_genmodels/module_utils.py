"""Helpers shared by the families' LightningModules."""
from __future__ import annotations

import operator
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from torch import Tensor, nn


def save_hparams_keeping_configs(module: LightningModule, frame: FrameType) -> None:
    """``module.save_hyperparameters`` from the ``__init__`` at ``frame`` (and a subclass's above
    it), minus the arguments that are ``nn.Module`` objects: their weights are in the state dict,
    a module is no hyperparameter, and a pickled one made ``load_from_checkpoint`` fail
    (``weights_only``). That includes a subclass's own (``MyVAE(backbone=...)``), which it could
    not ``ignore`` in our call; load them with ``load_from_checkpoint(path, backbone=...)``.
    Under LightningCLI networks arrive as config dicts (class path and init args) and are kept,
    so that ``load_from_checkpoint`` rebuilds them with no arguments."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Attribute '\w+' is an instance of `nn.Module`")
        module.save_hyperparameters(frame=frame)
    for key in [k for k, v in module.hparams.items() if isinstance(v, nn.Module)]:
        module.hparams.pop(key)
        module._hparams_initial.pop(key, None)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode inside the block (no dropout, batch norm's running statistics),
    each submodule's own mode restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def as_integer(value: object) -> int | None:
    """``value`` as an int if it is an integer (Python's, NumPy's, a 0-d integer tensor), not a
    bool or a float (which would be truncated silently); else None."""
    if isinstance(value, bool) or (isinstance(value, Tensor) and (value.dim() != 0 or value.dtype == torch.bool)):
        return None  # (torch indexes [3] as 3, and True as 1)
    if isinstance(value, Tensor) and value.dtype == torch.uint64:  # (__index__ goes through int64)
        return int(value.item())
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_integer(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an int if it is an integer (:func:`as_integer`) in [low, high], else a
    ValueError naming ``name``."""
    v = as_integer(value)
    if v is None or v < low or (high is not None and v > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value!r} must be an integer {bounds}")
    return v


def seed_ranks_apart(module: LightningModule) -> None:
    """Under DDP, reseed torch's generators (CPU and CUDA) on each rank with a seed drawn from
    the current state plus the global rank, so that the ranks draw different training noise.
    ``seed_everything`` (``seed_everything: 0`` in every shipped config) gives all ranks the same
    state, and each drew the same noise (the GAN's z, the VAE's ε and binarisation, the diffusion
    timesteps and ε): two ranks trained the GAN's generator on one rank's fakes (Lightning issue
    #16166). Still reproducible from the seed; DDP keeps the weights equal."""
    trainer = module._trainer
    if trainer is None or trainer.world_size <= 1:
        return
    base = int(torch.randint(0, 2**62, (1,)))  # the same on every rank seeded alike
    torch.manual_seed(base + trainer.global_rank)


def broadcast_buffers(module: LightningModule) -> None:
    """Under DDP, copy every buffer of ``module`` from rank 0 to the other ranks, in place. DDP
    broadcasts them before each training forward, but a training step's own updates (batch
    norm's running statistics, spectral norm's vectors, an EMA copy's) then differ by rank."""
    trainer = module._trainer
    if trainer is None or trainer.world_size <= 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
