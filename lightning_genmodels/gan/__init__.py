"""The GAN family: DCGAN networks, the losses, and the LightningModule."""
from .module import GAN
from .nets import Discriminator, Generator

__all__ = ["GAN", "Discriminator", "Generator"]
