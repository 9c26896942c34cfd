"""Diffusion family: DDPM/DDIM on a UNet (module.py), schedules, samplers and the network."""
from .module import Diffusion
from .unet import UNet

__all__ = ["Diffusion", "UNet"]
