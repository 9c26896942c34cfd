"""The VAE's default networks: a convolutional encoder and decoder for small square images.

Plain ``nn.Module``s with a fixed contract, so any replacement that keeps it works in
:class:`~lightning_genmodels.vae.module.VAE`:

- encoder: images [B, C, H, W] -> [B, 2 * latent_dim], the mean and the log-variance of the
  diagonal Gaussian posterior q(z | x), concatenated in that order;
- decoder: latents [B, latent_dim] -> [B, C, H, W], the unconstrained parameters of p(x | z)
  per pixel (logits for the Bernoulli likelihoods, the pre-sigmoid mean for the Gaussian).

Architecture after the DCGAN-style MNIST VAEs (two stride-2 4x4 convolutions, 28 -> 14 -> 7,
then a linear layer; the decoder mirrors it with transposed convolutions).
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["ConvDecoder", "ConvEncoder", "check_image_shape"]


def check_image_shape(x: Tensor, in_channels: int, image_size: int, who: str) -> None:
    """Raise ValueError naming the shape when ``x`` is not [B, in_channels, image_size, image_size]."""
    if x.dim() != 4 or tuple(x.shape[1:]) != (in_channels, image_size, image_size):
        raise ValueError(
            f"{who} was built for images [B, {in_channels}, {image_size}, {image_size}] "
            f"but got a tensor of shape {tuple(x.shape)}"
        )


def _check_geometry(latent_dim: int, in_channels: int, image_size: int, channels: Sequence[int], hidden: int) -> None:
    if hidden < 0:
        raise ValueError(f"hidden={hidden} must be >= 0 (0: no hidden layer)")
    if latent_dim < 1:
        raise ValueError(f"latent_dim={latent_dim} must be >= 1")
    if in_channels < 1:
        raise ValueError(f"in_channels={in_channels} must be >= 1")
    if len(channels) < 1 or any(c < 1 for c in channels):
        raise ValueError(f"channels={list(channels)} must be a non-empty list of positive widths")
    if image_size < 1 or image_size % (2 ** len(channels)):
        raise ValueError(
            f"image_size={image_size} must be a positive multiple of {2 ** len(channels)} "
            f"(one halving per entry of channels={list(channels)})"
        )


class ConvEncoder(nn.Module):
    """Images to the mean and log-variance of q(z | x).

    Args:
        latent_dim: size L of z.
        in_channels: image channels C.
        image_size: image height = width S; a multiple of ``2 ** len(channels)``.
        channels: widths of the stride-2 convolutions, each halving the image.
        hidden: width of a fully connected layer before the output; 0 for none.

    Shapes: ``forward(x: [B, C, S, S]) -> [B, 2 * L]``.
    """

    def __init__(
        self,
        latent_dim: int = 32,
        in_channels: int = 1,
        image_size: int = 28,
        channels: Sequence[int] = (32, 64),
        hidden: int = 0,
    ) -> None:
        super().__init__()
        _check_geometry(latent_dim, in_channels, image_size, channels, hidden)
        self.latent_dim, self.in_channels, self.image_size = latent_dim, in_channels, image_size
        layers: list[nn.Module] = []
        width = in_channels
        for c in channels:
            layers += [nn.Conv2d(width, c, 4, stride=2, padding=1), nn.SiLU()]
            width = c
        side = image_size // 2 ** len(channels)
        layers.append(nn.Flatten())
        features = width * side * side
        if hidden:
            layers += [nn.Linear(features, hidden), nn.SiLU()]
            features = hidden
        layers.append(nn.Linear(features, 2 * latent_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        check_image_shape(x, self.in_channels, self.image_size, type(self).__name__)
        return self.net(x)


class ConvDecoder(nn.Module):
    """Latents to per-pixel parameters of p(x | z); the mirror image of :class:`ConvEncoder`.

    Args:
        latent_dim: size L of z.
        out_channels: image channels C.
        image_size: image height = width S; a multiple of ``2 ** len(channels)``.
        channels: widths of the transposed convolutions' inputs, widest first.
        hidden: width of a fully connected layer after the input; 0 for none.

    Shapes: ``forward(z: [B, L]) -> [B, C, S, S]``.
    """

    def __init__(
        self,
        latent_dim: int = 32,
        out_channels: int = 1,
        image_size: int = 28,
        channels: Sequence[int] = (64, 32),
        hidden: int = 0,
    ) -> None:
        super().__init__()
        _check_geometry(latent_dim, out_channels, image_size, channels, hidden)
        self.latent_dim = latent_dim
        side = image_size // 2 ** len(channels)
        layers: list[nn.Module] = [nn.Linear(latent_dim, hidden), nn.SiLU()] if hidden else []
        layers += [nn.Linear(hidden or latent_dim, channels[0] * side * side), nn.SiLU(),
                   nn.Unflatten(1, (channels[0], side, side))]
        widths = [*channels, out_channels]
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            if i < len(channels) - 1:
                layers.append(nn.SiLU())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"{type(self).__name__} expects latents [B, {self.latent_dim}], got shape {tuple(z.shape)}"
            )
        return self.net(z)
