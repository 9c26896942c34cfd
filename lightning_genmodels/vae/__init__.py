"""The variational autoencoder: the LightningModule, its default networks and likelihoods."""
from .likelihoods import LIKELIHOODS, Likelihood
from .module import VAE
from .nets import ConvDecoder, ConvEncoder

__all__ = ["LIKELIHOODS", "ConvDecoder", "ConvEncoder", "Likelihood", "VAE"]
