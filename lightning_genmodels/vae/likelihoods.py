"""Per-pixel observation models p(x | z) of the VAE, from the decoder's unconstrained output.

Each likelihood has a data convention (the MNISTDataModule ``input_format`` it is trained on)
and a mean image in [0, 1] (what ``decode`` and ``sample`` return):

- ``bernoulli``: logits; dynamically binarised pixels (Salakhutdinov & Murray 2008); mean
  sigmoid(logits). Its NLL in nats is directly comparable with the MNIST literature.
- ``continuous_bernoulli``: logits of the continuous Bernoulli on [0, 1] pixel intensities
  (Loaiza-Ganem & Cunningham 2019, eq. 7); its mean is the CB mean, not sigmoid(logits).
- ``gaussian``: N(sigmoid(out), sigma^2) per pixel, sigma fixed or learned, on uniformly
  dequantised pixels (x + u) / 256 (Theis et al. 2016), so its NLL plus D log 256 bounds the
  NLL of the discrete 8-bit data.
"""
from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor
from torch.distributions import ContinuousBernoulli, Normal
from torch.nn import functional as F

Likelihood = Literal["bernoulli", "continuous_bernoulli", "gaussian"]
LIKELIHOODS: tuple[str, ...] = get_args(Likelihood)
# the MNISTDataModule input_format each likelihood is trained and evaluated on
INPUT_FORMATS: dict[str, str] = {
    "bernoulli": "binarized",
    "continuous_bernoulli": "unit",
    "gaussian": "dequantized",
}


def check_likelihood(likelihood: str) -> str:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood={likelihood!r} is not one of {', '.join(LIKELIHOODS)}")
    return likelihood


def log_likelihood(x: Tensor, out: Tensor, likelihood: Likelihood, log_scale: Tensor | None = None) -> Tensor:
    """log p(x | z) summed over pixels.

    Args:
        x: data [B, C, H, W] in the likelihood's convention.
        out: decoder output [B, C, H, W].
        likelihood: one of ``LIKELIHOODS``.
        log_scale: log sigma of the Gaussian, a scalar or broadcastable to ``x``.

    Returns:
        [B] log-likelihoods in nats.
    """
    if likelihood == "bernoulli":
        ll = -F.binary_cross_entropy_with_logits(out, x, reduction="none")
    elif likelihood == "continuous_bernoulli":
        ll = ContinuousBernoulli(logits=out, validate_args=False).log_prob(x)
    else:
        ll = Normal(torch.sigmoid(out), log_scale.exp(), validate_args=False).log_prob(x)
    return ll.flatten(1).sum(1)


def mean_image(out: Tensor, likelihood: Likelihood) -> Tensor:
    """E[x | z] in [0, 1], same shape as ``out``."""
    if likelihood == "continuous_bernoulli":
        return ContinuousBernoulli(logits=out, validate_args=False).mean.clamp(0, 1)
    return torch.sigmoid(out)


def discrete_offset(likelihood: Likelihood, num_pixels: int) -> float:
    """Nats to add to a continuous NLL on dequantised data to bound the 8-bit data's NLL:
    D log 256 for the Gaussian (density on [0, 1]^D vs on the 256^D integer grid), else 0."""
    return num_pixels * math.log(256.0) if likelihood == "gaussian" else 0.0
