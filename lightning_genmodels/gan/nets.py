"""DCGAN-style networks for 28x28 images (Radford, Metz & Chintala 2016), plain nn.Modules.

The generator maps noise z: [B, latent_dim] to images [B, C, 28, 28] in [-1, 1] (tanh); the
discriminator (critic) maps images [B, C, 28, 28] to one real-valued logit per image, [B].
As in the DCGAN paper: strided (transposed) convolutions, batch norm in the generator, leaky
ReLU in the discriminator. The discriminator has no batch norm, so that the WGAN-GP penalty,
which needs per-sample gradients, stays valid (Gulrajani et al. 2017, section 4).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from ..module_utils import check_integer

IMAGE_SIZE = 28


def check_images(x: Tensor, channels: int, who: str) -> None:
    """Raise ValueError naming the shape or dtype unless ``x`` is a float [B, channels, 28, 28]."""
    if x.ndim != 4 or tuple(x.shape[1:]) != (channels, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"{who} was built for images [B, {channels}, {IMAGE_SIZE}, {IMAGE_SIZE}] "
            f"but got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():  # (integer images failed in the first convolution)
        raise ValueError(f"{who} expects floating-point images in [-1, 1], got dtype {x.dtype}")


@torch.no_grad()
def dcgan_init(net: nn.Module) -> nn.Module:
    """The DCGAN paper's initialisation, in place (Radford et al. 2016, section 4): convolution
    and linear weights from N(0, 0.02), batch-norm scales from N(1, 0.02), biases 0. Under spectral
    normalisation the weight before normalisation is drawn. Returns ``net``."""
    for module in net.modules():
        conv = isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
        if not conv and not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        weight = (module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight")
                  else module.weight)
        if weight is not None:
            weight.normal_(0.0 if conv else 1.0, 0.02)
        if module.bias is not None:
            module.bias.zero_()
    return net


def _sizes(**sizes: object) -> list[int]:
    """The networks' sizes as ints, each an integer >= 1 (0 built a network that could not run)."""
    return [check_integer(name, value, 1) for name, value in sizes.items()]


class Generator(nn.Module):
    """z [B, latent_dim] -> images [B, channels, 28, 28] in [-1, 1].

    Linear to [2F, 7, 7], then two stride-2 transposed convolutions (7 -> 14 -> 28).

    Args:
        latent_dim: size of z.
        channels: image channels (1 for MNIST).
        features: F, the width of the last hidden layer (the first has 2F).
    """

    def __init__(self, latent_dim: int = 64, channels: int = 1, features: int = 64) -> None:
        super().__init__()
        latent_dim, channels, features = _sizes(latent_dim=latent_dim, channels=channels, features=features)
        self.latent_dim, self.channels = latent_dim, channels
        self.project = nn.Sequential(
            nn.Linear(latent_dim, 2 * features * 7 * 7, bias=False),
            nn.Unflatten(1, (2 * features, 7, 7)),
            nn.BatchNorm2d(2 * features),
            nn.ReLU(inplace=True),
        )
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(2 * features, features, 4, stride=2, padding=1, bias=False),  # 14x14
            nn.BatchNorm2d(features),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(features, channels, 4, stride=2, padding=1),  # 28x28
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"Generator was built for z [B, {self.latent_dim}] but got shape {tuple(z.shape)}")
        if not z.is_floating_point():  # (an integer z failed in the first matmul)
            raise ValueError(f"Generator expects floating-point z, got dtype {z.dtype}")
        return self.upsample(self.project(z))


class Discriminator(nn.Module):
    """images [B, channels, 28, 28] -> logits [B].

    Two stride-2 convolutions (28 -> 14 -> 7) with leaky ReLU, then a linear layer.

    Args:
        channels: image channels (1 for MNIST).
        features: F, the width of the first convolution (the second has 2F).
        spectral_norm: divide every weight by its largest singular value (Miyato et al. 2018).
    """

    def __init__(self, channels: int = 1, features: int = 64, spectral_norm: bool = False) -> None:
        super().__init__()
        channels, features = _sizes(channels=channels, features=features)
        self.channels = channels
        norm = _spectral_norm if spectral_norm else (lambda layer: layer)
        self.features = nn.Sequential(
            norm(nn.Conv2d(channels, features, 4, stride=2, padding=1)),  # 14x14
            nn.LeakyReLU(0.2, inplace=True),
            norm(nn.Conv2d(features, 2 * features, 4, stride=2, padding=1)),  # 7x7
            nn.LeakyReLU(0.2, inplace=True),
            nn.Flatten(),
        )
        self.head = norm(nn.Linear(2 * features * 7 * 7, 1))

    def forward(self, x: Tensor) -> Tensor:
        check_images(x, self.channels, "Discriminator")
        return self.head(self.features(x)).squeeze(1)
