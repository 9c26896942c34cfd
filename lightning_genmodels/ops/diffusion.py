"""The fused sampler step of DDPM and DDIM: x_t and the model output in, x_{t'} out.

One op serves both samplers: the sampler is its coefficient table ``coef`` [T, 6] (see
:mod:`lightning_genmodels.diffusion.samplers`), gathered per sample at its timestep:

    x̂_0 = clip(a x_t + b o)    x_{t'} = c x̂_0 + d x_t + e o + σ z

z is drawn inside the kernel from the Philox stream of ``seed``: element i of the flattened
batch gets ``stream(seed)[offset + i]`` (:mod:`.philox`), so a sample's noise depends only on
(seed, offset, its position), never on the device or on how a batch is split. ``seed_offset``
and ``timestep`` are device tensors: a loop that advances them in place never waits on the host,
and a CUDA graph of model + step replays with new values.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .build import Impl, register_on_load, use_ext
from .philox import _philox_normal_ref, check_offset, philox_normal_traced

NUM_COEFFICIENTS = 6


def _check_inputs(x: Tensor, model_output: Tensor, timestep: Tensor, coef: Tensor, seed_offset: Tensor) -> None:
    """Raise ValueError/TypeError naming the argument; never reads device values (no sync)."""
    named = {"x": x, "model_output": model_output, "timestep": timestep, "coef": coef, "seed_offset": seed_offset}
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"x must be float32, got {x.dtype}")
    for name in ("model_output", "coef"):
        if named[name].dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {named[name].dtype}")
    for name in ("timestep", "seed_offset"):
        if named[name].dtype != torch.int64:
            raise TypeError(f"{name} must be int64, got {named[name].dtype}")
    for name, t in named.items():
        if t.device != x.device:
            raise ValueError(f"{name} must be on the device of x ({x.device}), got {t.device}")
    if x.dim() < 1:
        raise ValueError(f"x must be [N, ...], got shape {tuple(x.shape)}")
    if model_output.shape != x.shape:
        raise ValueError(f"model_output must have the shape of x {tuple(x.shape)}, got {tuple(model_output.shape)}")
    if tuple(timestep.shape) != (x.shape[0],):
        raise ValueError(f"timestep must be [N] = [{x.shape[0]}], got shape {tuple(timestep.shape)}")
    if coef.dim() != 2 or coef.shape[1] != NUM_COEFFICIENTS or coef.shape[0] < 1:
        raise ValueError(f"coef must be [T, {NUM_COEFFICIENTS}], got shape {tuple(coef.shape)}")
    if tuple(seed_offset.shape) != (2,):
        raise ValueError(f"seed_offset must be [2] = (seed, offset), got shape {tuple(seed_offset.shape)}")


def _capturing(x: Tensor) -> bool:
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def _check_timestep_range(timestep: Tensor, n_train: int) -> None:
    """ValueError naming the first timestep outside [0, n_train) (reads timestep on the host)."""
    bad = (timestep < 0) | (timestep >= n_train)
    if timestep.numel() and bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"timestep[{i}] = {int(timestep[i])} is outside [0, {n_train})")


def _check_noise_range(seed_offset: Tensor, numel: int) -> int:
    """The offset, if the step's noise ``offset .. offset + numel - 1`` lies in the stream, else
    ValueError (reads seed_offset on the host)."""
    return check_offset(int(seed_offset[1]), numel)


def _step_math(
    x: Tensor, model_output: Tensor, timestep: Tensor, coef: Tensor, seed: int, offset: int, clip_range: float,
    draw_noise: bool = True,
) -> Tensor:
    """The step in plain tensor operations, the noise's (seed, offset) as Python ints;
    ``draw_noise=False`` leaves the noise out (the same result where σ = 0, as DDIM with η = 0)."""
    c = coef[timestep].reshape(x.shape[0], NUM_COEFFICIENTS, *([1] * (x.dim() - 1))).unbind(1)
    # 1. predicted x_0, clipped when clip_range > 0
    x0 = c[0] * x + c[1] * model_output
    if clip_range > 0:
        x0 = x0.clamp(-clip_range, clip_range)
    # 2. mean of x_{t'} and the noise
    mean = c[2] * x0 + c[3] * x + c[4] * model_output
    if not draw_noise:
        return mean
    noise = _philox_normal_ref(seed % (1 << 64), offset, list(x.shape), x.device)
    return mean + c[5] * noise


def _diffusion_step_ref(
    x: Tensor, model_output: Tensor, timestep: Tensor, coef: Tensor, seed_offset: Tensor, clip_range: float
) -> Tensor:
    """Pure-PyTorch reference: the specification the kernels are held to (reads seed_offset and
    checks the timesteps on the host). While torch.compile traces, the same step in tensor
    operations only: the noise from seed_offset on the device, drawn for every sample (times
    σ = 0 where there is none), no host checks."""
    if torch.compiler.is_compiling():
        mean = _step_math(x, model_output, timestep, coef, 0, 0, clip_range, draw_noise=False)
        sigma = coef[timestep, NUM_COEFFICIENTS - 1].reshape(-1, *([1] * (x.dim() - 1)))
        return mean + sigma * philox_normal_traced(seed_offset, list(x.shape))
    _check_timestep_range(timestep, coef.shape[0])
    _check_noise_range(seed_offset, x.numel())
    seed, offset = (int(v) for v in seed_offset.tolist())
    draw_noise = bool(coef[timestep, NUM_COEFFICIENTS - 1].ne(0).any())  # as the kernels: only where σ != 0
    return _step_math(x, model_output, timestep, coef, seed, offset, clip_range, draw_noise)


def diffusion_step(
    x: Tensor,
    model_output: Tensor,
    timestep: Tensor,
    coef: Tensor,
    seed_offset: Tensor,
    clip_range: float = 0.0,
    *,
    impl: Impl = "auto",
    check_timesteps: bool | None = None,
) -> Tensor:
    """One DDPM or DDIM step, fused: ``x_{t'}`` from ``x_t`` and the model output.

    Args:
        x: x_t [N, ...] float32.
        model_output: the model's prediction [N, ...] float32 (ε, x_0 or v: the table knows).
        timestep: training timestep of each sample [N] int64, in [0, T).
        coef: the sampler's table [T, 6] float32 (``samplers.step_coefficients``).
        seed_offset: int64 [2] = (seed, offset) of the noise (seed's bits as signed int64).
        clip_range: clip x̂_0 to [-clip_range, clip_range]; 0 turns clipping off.
        impl: ``"ext"`` the compiled kernel, ``"ref"`` the reference, ``"auto"`` the kernel when
            it builds.
        check_timesteps: read ``timestep`` and ``seed_offset`` on the host and raise ValueError
            for a timestep outside [0, T) or an offset outside [0, 2**62 - x.numel()] (on CUDA
            one synchronisation). ``None`` (default): check, except while a CUDA graph is
            captured or torch.compile traces. ``False``: only the kernel checks (CPU: a
            RuntimeError; CUDA: a device-side assertion for the timesteps); the sampling loop
            passes it, as its timesteps and offsets come from the schedule.

    Returns:
        x_{t'} [N, ...] float32, a new tensor.
    """
    _check_inputs(x, model_output, timestep, coef, seed_offset)
    clip_range = float(clip_range)
    if not clip_range >= 0:
        raise ValueError(f"clip_range must be >= 0 (0: no clipping), got {clip_range}")
    if check_timesteps is None:
        check_timesteps = not (torch.compiler.is_compiling() or _capturing(x))
    if check_timesteps:
        _check_timestep_range(timestep, coef.shape[0])
        _check_noise_range(seed_offset, x.numel())
    if use_ext(impl, x.device, (x, model_output, coef)):
        return torch.ops.lightning_genmodels.diffusion_step(x, model_output, timestep, coef, seed_offset, clip_range)
    return _diffusion_step_ref(x, model_output, timestep, coef, seed_offset, clip_range)


def _register_fake() -> None:
    @torch.library.register_fake("lightning_genmodels::diffusion_step")
    def _(x: Tensor, model_output: Tensor, timestep: Tensor, coef: Tensor, seed_offset: Tensor, clip_range: float):
        torch._check(model_output.shape == x.shape, lambda: "model_output must have the shape of x")
        return torch.empty_like(x, memory_format=torch.contiguous_format)


register_on_load(_register_fake)
