"""Noise schedules: the betas β_t of the forward process q(x_t | x_{t-1}) = N(√(1-β_t) x_{t-1}, β_t I).

Pure functions, computed in float64 (the module registers them as float32 buffers), with the
definitions of diffusers' ``DDPMScheduler`` so that a model moves between the two:

- ``linear``: β_t evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020, §4).
- ``cosine``: ᾱ(t) = cos²(((t/T) + s) / (1 + s) · π/2), s = 0.008, β_t = 1 - ᾱ(t+1)/ᾱ(t) capped at
  0.999 (Nichol & Dhariwal 2021, eq. 17; diffusers' ``squaredcos_cap_v2``).
- ``sigmoid``: β_t = σ(linspace(-6, 6, T)) · (beta_end - beta_start) + beta_start (GeoDiff,
  Xu et al. 2022; diffusers' ``sigmoid``).
"""
from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

BetaSchedule = Literal["linear", "cosine", "sigmoid"]
BETA_SCHEDULES: tuple[str, ...] = get_args(BetaSchedule)
# Our names for diffusers' beta_schedule values.
DIFFUSERS_NAMES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "sigmoid": "sigmoid"}


def check_schedule(name: str) -> str:
    if name not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {name!r}")
    return name


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """β [T] float64, evenly spaced (Ho et al. 2020)."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int, max_beta: float = 0.999, s: float = 0.008) -> Tensor:
    """β [T] float64 from the cosine ᾱ(t) of Nichol & Dhariwal (2021), eq. 17."""
    t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def sigmoid_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """β [T] float64: a sigmoid ramp from beta_start to beta_end (GeoDiff)."""
    x = torch.linspace(-6, 6, num_timesteps, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


def make_betas(
    schedule: BetaSchedule, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Tensor:
    """β [T] float64 of a named schedule; raises ValueError naming a bad value."""
    check_schedule(schedule)
    if int(num_timesteps) < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_timesteps}")
    if schedule != "cosine" and not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
    if schedule == "linear":
        return linear_betas(num_timesteps, beta_start, beta_end)
    if schedule == "cosine":
        return cosine_betas(num_timesteps)
    return sigmoid_betas(num_timesteps, beta_start, beta_end)


def alphas_cumprod(betas: Tensor) -> Tensor:
    """ᾱ_t = Π_{s<=t} (1 - β_s) [T], in the dtype of betas (Ho et al. 2020, eq. 4)."""
    return torch.cumprod(1.0 - betas, dim=0)
