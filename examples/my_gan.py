"""Two user subclasses of :class:`lightning_genmodels.GAN`, each trained through the CLI.

Swap the networks (an MLP generator and discriminator instead of the DCGAN convolutions)::

    python -m lightning_genmodels fit --config configs/gan_mnist.yaml \\
        --model examples.my_gan.MLPGAN --model.hidden 256 --data.data_dir /path/to/mnist

Change the loss (least squares GAN, Mao et al. 2017)::

    python -m lightning_genmodels fit --config configs/gan_mnist.yaml \\
        --model examples.my_gan.LSGAN --data.data_dir /path/to/mnist

Run them from the repository root (so that ``examples`` is importable), or put the file in
your own package and give its import path.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_genmodels import GAN


class MLPGAN(GAN):
    """A GAN whose players are multilayer perceptrons on the flattened 28x28 image.

    Args:
        hidden: width of the hidden layers.
        latent_dim: size of z.
        **kwargs: the other :class:`GAN` options (loss, lr_g, ema_decay, ...).
    """

    def __init__(self, hidden: int = 256, latent_dim: int = 64, **kwargs: Any) -> None:
        generator = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 28 * 28), nn.Tanh(),
            nn.Unflatten(1, (1, 28, 28)),
        )
        discriminator = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1), nn.Flatten(0),
        )
        super().__init__(latent_dim=latent_dim, generator=generator, discriminator=discriminator, **kwargs)


class LSGAN(GAN):
    """Least squares GAN (Mao et al. 2017, eq. 2 with a = 0, b = c = 1): the discriminator
    regresses real images to 1 and generated ones to 0, the generator pushes D(G(z)) to 1."""

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        return 0.5 * ((self.discriminator(real) - 1).square().mean() + self.discriminator(fake).square().mean())

    def generator_loss(self, fake: Tensor) -> Tensor:
        return 0.5 * (self.discriminator(fake) - 1).square().mean()
