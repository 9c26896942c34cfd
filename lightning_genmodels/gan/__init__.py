"""The GAN family: DCGAN networks, the losses, and the LightningModule."""
from .module import GAN
from .nets import Discriminator, Generator, dcgan_init

__all__ = ["GAN", "Discriminator", "Generator", "dcgan_init"]
