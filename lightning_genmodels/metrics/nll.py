"""Negative log-likelihood in bits per dimension for models of dequantised pixels.

A model with a density p(y) on dequantised pixels y = (x + u) / 256 (x in {0..255}^D the bytes,
u ~ U[0, 1)^D; Theis, van den Oord & Bethge 2016, sec. 3.1) defines a discrete model
P(x) = ∫ p((x + u) / 256) / 256^D du, and by Jensen's inequality

    -log2 P(x) <= E_u[-log p((x + u) / 256)] / ln 2 + D log2 256.

Per dimension this is ``-E[log p(y)] / (D ln 2) + 8``: the 1/256 scaling Jacobian is the +8 bits.
One u per image (the DataModule's ``dequantized`` format draws it) gives an unbiased estimate of
the bound. A density that puts mass outside [0, 1]^D (a GMM) only loosens the bound.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

__all__ = ["dequantized_bits_per_dim"]


@torch.no_grad()
def dequantized_bits_per_dim(log_density: Callable[[Tensor], Tensor], batches: Iterable) -> float:
    """Upper bound on the discrete NLL in bits per dimension (module docstring).

    Args:
        log_density: y [B, D] (or [B, 1, H, W]) dequantised into (0, 1) -> log p(y) [B] in nats.
        batches: (y, labels) or y batches, e.g. the test loader of an MNISTDataModule with
            ``input_format="dequantized_flat"``.
    """
    total, count, dims = 0.0, 0, None
    for batch in batches:
        y = batch[0] if isinstance(batch, (tuple, list)) else batch
        if len(y) == 0:
            continue
        if not (y.min() > 0 and y.max() < 1):  # (NaN passed the test as it was written)
            raise ValueError(f"dequantised data must lie in (0, 1), got [{y.min().item()}, {y.max().item()}]")
        if dims is not None and y[0].numel() != dims:  # (the last batch's D was used for all)
            raise ValueError(f"batches of {dims} and {y[0].numel()} dimensions per image")
        log_p = log_density(y).double()
        if log_p.shape != (len(y),):  # (a [B, K] or a scalar result was summed as it came)
            raise ValueError(f"log_density must return log p(y) [B] = [{len(y)}], got shape {tuple(log_p.shape)}")
        if not torch.isfinite(log_p).all():
            raise ValueError("log_density returned NaN or infinite values")
        total += log_p.sum().item()
        count += len(y)
        dims = y[0].numel()
    if count == 0:
        raise ValueError("no batches to evaluate the NLL on")
    return -total / (count * dims * math.log(2)) + 8.0
