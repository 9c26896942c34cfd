"""GAN losses as pure functions of discriminator logits (and, for WGAN-GP, the critic).

Each ``*_d`` returns the discriminator's loss from logits on real and generated images, each
``*_g`` the generator's loss from logits on generated images; all are batch means, 0-d.
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Loss = Literal["non_saturating", "hinge", "wgan_gp"]
LOSSES: tuple[str, ...] = ("non_saturating", "hinge", "wgan_gp")


def non_saturating_d(real: Tensor, fake: Tensor) -> Tensor:
    """-log σ(D(x)) - log(1 - σ(D(G(z)))) (Goodfellow et al. 2014, eq. 1), written with softplus."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def non_saturating_g(fake: Tensor) -> Tensor:
    """-log σ(D(G(z))): the non-saturating generator loss (Goodfellow et al. 2014, section 3)."""
    return F.softplus(-fake).mean()


def hinge_d(real: Tensor, fake: Tensor) -> Tensor:
    """max(0, 1 - D(x)) + max(0, 1 + D(G(z))) (Lim & Ye 2017; Miyato et al. 2018, eq. 16)."""
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def wasserstein_d(real: Tensor, fake: Tensor) -> Tensor:
    """D(G(z)) - D(x): the critic's Wasserstein loss (Arjovsky et al. 2017); add the penalty."""
    return fake.mean() - real.mean()


def wasserstein_g(fake: Tensor) -> Tensor:
    """-D(G(z)): the generator loss of the hinge and Wasserstein GANs."""
    return -fake.mean()


def gradient_penalty(
    critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """E[(||∇_x̂ D(x̂)||_2 - 1)^2] at x̂ = ε x + (1 - ε) x̃, ε ~ U[0, 1] per sample
    (Gulrajani et al. 2017, eq. 3 and Algorithm 1, lines 6-7).

    Args:
        critic: images [B, ...] -> scores [B].
        real: x, [B, ...].
        fake: x̃, [B, ...] (detached from the generator).
        generator: for ε; None uses torch's global generator.

    Returns:
        0-d penalty, differentiable in the critic's parameters (create_graph=True).
    """
    eps = torch.rand((real.shape[0],) + (1,) * (real.ndim - 1), generator=generator, device=real.device)
    mixed = (eps * real + (1.0 - eps) * fake).detach().requires_grad_(True)
    scores = critic(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1.0).square().mean()


def discriminator_loss(loss: str, real: Tensor, fake: Tensor) -> Tensor:
    """The discriminator loss named ``loss`` (without the WGAN-GP penalty)."""
    if loss == "non_saturating":
        return non_saturating_d(real, fake)
    if loss == "hinge":
        return hinge_d(real, fake)
    return wasserstein_d(real, fake)


def generator_loss(loss: str, fake: Tensor) -> Tensor:
    """The generator loss named ``loss``."""
    return non_saturating_g(fake) if loss == "non_saturating" else wasserstein_g(fake)
