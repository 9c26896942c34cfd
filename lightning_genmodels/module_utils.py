"""Helpers shared by the families' LightningModules."""
from __future__ import annotations

import numbers
import operator
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import LightningDataModule, LightningModule
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
    plain_hparams(module)


def plain_hparams(module: LightningModule | LightningDataModule) -> None:
    """The saved hyperparameters with NumPy scalars as Python numbers (in lists and tuples too):
    a checkpoint holding ``np.float64(1e-3)`` (``for lr in np.logspace(...)``) did not load with
    ``load_from_checkpoint``'s ``weights_only`` unpickler, nor dump as plain YAML."""
    for hparams in (module.hparams, getattr(module, "_hparams_initial", None)):
        for key, value in (hparams or {}).items():
            hparams[key] = _python_scalars(value)


def _python_scalars(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if type(value) in (list, tuple):
        return type(value)(_python_scalars(v) for v in value)
    return value


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


def check_real(name: str, value: object) -> float:
    """``value`` as a float if it is a real number (Python's, NumPy's; not a bool), else a
    ValueError naming ``name`` (math.isfinite("1") raised a TypeError naming nothing)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r} must be a real number")
    return float(value)


def check_latents(z: Tensor, latent_dim: int, who: str) -> None:
    """A ValueError naming ``who`` unless z is a floating-point [B, latent_dim] tensor of finite
    values (NaN latents gave NaN images, silently; integer ones an ATen matmul error)."""
    if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[1] != latent_dim:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"{who}: latents must be [B, {latent_dim}], got shape {shape}")
    if not z.is_floating_point():
        raise ValueError(f"{who} needs floating-point latents, got dtype {z.dtype}")
    if not bool(torch.isfinite(z).all()):
        raise ValueError(f"{who}: the latents hold {int((~torch.isfinite(z)).sum())} NaN or infinite values")


def finite_on_every_rank(module: LightningModule, x: Tensor) -> bool:
    """Whether x is finite on this rank and, under a Trainer, on every rank: a bad batch must stop
    all ranks together (one rank raising alone left the others to fail in their next collective
    with gloo's "Connection reset by peer", naming nothing, or to wait in it)."""
    finite = bool(torch.isfinite(x).all())
    trainer = module._trainer
    return trainer.strategy.reduce_boolean_decision(finite, all=True) if trainer is not None else finite
