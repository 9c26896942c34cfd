"""Generative models on PyTorch Lightning: GMM (EM), VAE, GAN and diffusion, sharing one
MNIST DataModule, with hot loops in a JIT-compiled C++/CUDA extension."""
__version__ = "0.1.0"
