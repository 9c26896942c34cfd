"""Generative models on PyTorch Lightning: GMM (EM), VAE, GAN and diffusion, sharing one
MNIST DataModule, with hot loops in a JIT-compiled C++/CUDA extension."""
from .callbacks import FIDCallback, LatentInterpolation, SampleGrid
from .data import MNISTDataModule
from .diffusion import Diffusion
from .gan import GAN
from .gmm import GaussianMixture
from .idx import IDXFileNotFoundError, IDXFormatError
from .metrics import SampleQuality
from .vae import VAE

__version__ = "0.1.0"
__all__ = [
    "Diffusion",
    "FIDCallback",
    "GAN",
    "GaussianMixture",
    "IDXFileNotFoundError",
    "IDXFormatError",
    "LatentInterpolation",
    "MNISTDataModule",
    "SampleGrid",
    "SampleQuality",
    "VAE",
]
