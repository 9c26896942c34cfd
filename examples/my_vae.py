"""Two user subclasses of :class:`lightning_genmodels.VAE`, each trained through the CLI:

    python -m lightning_genmodels fit --config configs/vae_mnist.yaml --model examples.my_vae.MLPVAE
    python -m lightning_genmodels fit --config configs/vae_mnist.yaml \\
        --model examples.my_vae.FreeBitsVAE --model.free_bits 0.5

(run from the repository root, so that ``examples`` is importable).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_genmodels import VAE


class MLPEncoder(nn.Module):
    """Images [B, 1, 28, 28] -> [B, 2L] through one hidden layer (Kingma & Welling 2014, §5)."""

    def __init__(self, latent_dim: int = 32, hidden: int = 512, image_size: int = 28) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(image_size**2, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 2 * latent_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    """Latents [B, L] -> logits [B, 1, 28, 28] through one hidden layer."""

    def __init__(self, latent_dim: int = 32, hidden: int = 512, image_size: int = 28) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, image_size**2),
                                 nn.Unflatten(1, (1, image_size, image_size)))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class MLPVAE(VAE):
    """Swaps the networks: the VAE of Kingma & Welling (2014) with MLPs of width ``hidden``.

    The networks are built from this class's own arguments, so a checkpoint reloads with
    ``MLPVAE.load_from_checkpoint(path)`` and nothing else.
    """

    def __init__(self, hidden: int = 512, latent_dim: int = 32, **kwargs: Any) -> None:
        super().__init__(latent_dim=latent_dim, encoder=MLPEncoder(latent_dim, hidden),
                         decoder=MLPDecoder(latent_dim, hidden), **kwargs)


class FreeBitsVAE(VAE):
    """Changes the loss: "free bits" (Kingma et al. 2016, eq. 15). The KL of each latent
    dimension, averaged over the batch, counts as at least ``free_bits`` nats, so the optimiser
    gains nothing by collapsing a dimension below that; the reported ELBO is unchanged."""

    def __init__(self, free_bits: float = 0.25, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not free_bits >= 0:
            raise ValueError(f"free_bits={free_bits!r} must be >= 0")
        self.free_bits = free_bits

    def training_loss(self, rec: Tensor, kl: Tensor, beta: float) -> Tensor:
        return beta * kl.mean(0).clamp(min=self.free_bits).sum() - rec.mean()
