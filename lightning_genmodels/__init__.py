"""Generative models on PyTorch Lightning: GMM (EM), VAE, GAN and diffusion, sharing one
MNIST DataModule, with hot loops in a JIT-compiled C++/CUDA extension."""
from .callbacks import FIDCallback, LatentInterpolation, SampleGrid
from .data import IDXFileNotFoundError, IDXFormatError, MNISTDataModule
# gmm before the rest: ops/gmm.py uses gmm/em.py's math, and importing ops first would cycle.
from .gmm import ConvergenceWarning, GaussianMixture, NotFittedError  # isort: skip
from .diffusion import Diffusion
from .gan import GAN
from .metrics import SampleQuality
from .predictions import PredictionWriter
from .vae import VAE

__version__ = "0.1.0"
__all__ = [
    "ConvergenceWarning",
    "Diffusion",
    "FIDCallback",
    "GAN",
    "GaussianMixture",
    "IDXFileNotFoundError",
    "IDXFormatError",
    "LatentInterpolation",
    "MNISTDataModule",
    "NotFittedError",
    "PredictionWriter",
    "SampleGrid",
    "SampleQuality",
    "VAE",
]
