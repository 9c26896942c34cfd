"""Generative models on PyTorch Lightning: GMM (EM), VAE, GAN and diffusion, sharing one
MNIST DataModule, with hot loops in a JIT-compiled C++/CUDA extension."""
from .callbacks import SampleGrid
from .data import IDXFileNotFoundError, IDXFormatError, MNISTDataModule
from .gmm import ConvergenceWarning, GaussianMixture

__version__ = "0.1.0"
__all__ = [
    "ConvergenceWarning",
    "GaussianMixture",
    "IDXFileNotFoundError",
    "IDXFormatError",
    "MNISTDataModule",
    "SampleGrid",
]
