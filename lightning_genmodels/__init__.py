"""Generative models on PyTorch Lightning: GMM (EM), VAE, GAN and diffusion, sharing one
MNIST DataModule, with hot loops in a JIT-compiled C++/CUDA extension."""
from .callbacks import SampleGrid
from .data import MNISTDataModule
from .diffusion import Diffusion
from .gmm import GaussianMixture
from .idx import IDXFileNotFoundError, IDXFormatError

__version__ = "0.1.0"
__all__ = ["Diffusion", "GaussianMixture", "IDXFileNotFoundError", "IDXFormatError", "MNISTDataModule", "SampleGrid"]
