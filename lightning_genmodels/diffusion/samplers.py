"""DDPM and DDIM sampler arithmetic as per-timestep coefficient tables, following diffusers.

Every sampler step of diffusers' ``DDPMScheduler.step`` and ``DDIMScheduler.step`` is, for
sample x_t, model output o and fresh noise z ~ N(0, I), of the form

    x̂_0     = a_t x_t + b_t o                          (predicted x_0; clipped if asked)
    x_{t'}  = c_t x̂_0 + d_t x_t + e_t o + σ_t z        (t' = previous timestep)

with six scalars per timestep. :func:`step_coefficients` computes them in float64 into a table
``coef`` [T, 6] indexed by the training timestep, which the fused op
(:func:`lightning_genmodels.ops.diffusion_step`) gathers on the device. The formulas, per block:

1. x̂_0 from the prediction type (Ho et al. 2020 eq. 15; Salimans & Ho 2022 §4 for v).
2. DDPM: posterior mean μ̃_t(x_t, x̂_0) (Ho et al. 2020 eq. 7) and variance β̃_t ("fixed_small")
   or β_t ("fixed_large").
3. DDIM: x_{t'} = √ᾱ_{t'} x̂_0 + √(1 - ᾱ_{t'} - σ_t²) ε̂ + σ_t z, σ_t = η √((1-ᾱ_{t'})/(1-ᾱ_t)
   (1 - ᾱ_t/ᾱ_{t'})) (Song et al. 2021 eq. 12 and 16), ε̂ from the unclipped x̂_0.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from ..module_utils import as_integer
from ..ops.build import Impl, use_ext
from ..ops.diffusion import diffusion_step
from ..ops.philox import philox_normal, seed_offset_tensor

SamplerName = Literal["ddpm", "ddim"]
PredictionType = Literal["epsilon", "sample", "v_prediction"]
VarianceType = Literal["fixed_small", "fixed_large"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)
VARIANCE_TYPES: tuple[str, ...] = get_args(VarianceType)
TIMESTEP_SPACINGS: tuple[str, ...] = get_args(TimestepSpacing)
# Columns of the coefficient table.
X0_X, X0_OUT, MEAN_X0, MEAN_X, MEAN_OUT, SIGMA = range(6)
NUM_COEFFICIENTS = 6


def check_option(name: str, value: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else ValueError naming the option and the value."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_steps(steps: int, num_train_timesteps: int) -> int:
    if isinstance(steps, bool) or int(steps) != steps or not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be an integer in [1, num_train_timesteps={num_train_timesteps}], got {steps!r}")
    return int(steps)


def check_count(name: str, value: int) -> int:
    """``value`` as an int if it is a positive integer, else ValueError naming ``name``."""
    count = as_integer(value)
    if count is None or count < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return count


def check_eta(eta: float) -> float:
    if not 0.0 <= float(eta) <= 1.0:  # also rejects NaN
        raise ValueError(f"eta must be in [0, 1], got {eta!r}")
    return float(eta)


def inference_timesteps(
    num_train_timesteps: int, steps: int, spacing: TimestepSpacing = "leading", steps_offset: int = 0
) -> Tensor:
    """The descending training timesteps [steps] (int64) a sampler visits, as diffusers'
    ``set_timesteps`` (Lin et al. 2024, "Common diffusion noise schedules ...", Table 2)."""
    check_option("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    n, steps = num_train_timesteps, check_steps(steps, num_train_timesteps)
    if spacing == "linspace":
        t = np.linspace(0, n - 1, steps).round()[::-1].copy().astype(np.int64)
    elif spacing == "leading":
        t = (np.arange(0, steps) * (n // steps)).round()[::-1].copy().astype(np.int64) + steps_offset
    else:
        # diffusers' np.arange(n, 0, -n / steps) can overshoot by one element in floating point
        # (steps=61 of 1000 gives 62, the last -1); counting the steps avoids it.
        t = np.round(n - np.arange(steps) * (n / steps)).astype(np.int64) - 1
    return torch.from_numpy(t)


def previous_timesteps(timesteps: Tensor, num_train_timesteps: int, sampler: SamplerName) -> Tensor:
    """t' of each visited t [S] (int64; -1 past the end): DDPM takes the next visited timestep
    (``DDPMScheduler.previous_timestep``), DDIM t - T // S (``DDIMScheduler.step``)."""
    if sampler == "ddpm":
        return torch.cat([timesteps[1:], timesteps.new_tensor([-1])])
    return timesteps - num_train_timesteps // timesteps.numel()


def step_coefficients(
    alphas_cumprod: Tensor,
    timesteps: Tensor,
    sampler: SamplerName = "ddim",
    prediction_type: PredictionType = "epsilon",
    variance_type: VarianceType = "fixed_small",
    eta: float = 0.0,
    set_alpha_to_one: bool = True,
) -> Tensor:
    """The coefficient table ``coef`` [T, 6] float64 of a sampler over the visited ``timesteps``.

    Args:
        alphas_cumprod: ᾱ [T] (computed in float64, or the float32 buffer).
        timesteps: visited training timesteps [S], descending (:func:`inference_timesteps`).
        sampler: ``"ddpm"`` (ancestral) or ``"ddim"``.
        prediction_type: what the model predicts: ``"epsilon"``, ``"sample"`` (x_0) or ``"v_prediction"``.
        variance_type: DDPM only: ``"fixed_small"`` (β̃_t) or ``"fixed_large"`` (β_t).
        eta: DDIM only: η in [0, 1]; 0 is deterministic DDIM, 1 has DDPM's variance.
        set_alpha_to_one: DDIM only: ᾱ past the last step is 1 (else ᾱ_0), as diffusers.

    Returns:
        float64 [T, 6]: rows of unvisited timesteps are 0; columns ``(a, b, c, d, e, σ)`` of the
        module docstring.
    """
    check_option("sampler", sampler, SAMPLERS)
    check_option("prediction_type", prediction_type, PREDICTION_TYPES)
    check_option("variance_type", variance_type, VARIANCE_TYPES)
    eta = check_eta(eta)
    abar_all = alphas_cumprod.detach().double().cpu()
    n_train = abar_all.numel()
    t = timesteps.detach().long().cpu()
    if t.numel() < 1 or int(t.min()) < 0 or int(t.max()) >= n_train:
        raise ValueError(f"timesteps must lie in [0, {n_train}), got {t.tolist()}")
    prev = previous_timesteps(t, n_train, sampler)
    final = 1.0 if sampler == "ddpm" or set_alpha_to_one else float(abar_all[0])
    abar = abar_all[t]
    abar_prev = torch.where(prev >= 0, abar_all[prev.clamp(min=0)], torch.full_like(abar, final))
    beta_prod, beta_prod_prev = 1 - abar, 1 - abar_prev
    coef = torch.zeros(len(t), NUM_COEFFICIENTS, dtype=torch.float64)
    # 1. x̂_0 = a x_t + b o (Ho et al. eq. 15; v: Salimans & Ho §4)
    if prediction_type == "epsilon":
        coef[:, X0_X], coef[:, X0_OUT] = abar.rsqrt(), -(beta_prod / abar).sqrt()
    elif prediction_type == "sample":
        coef[:, X0_OUT] = 1.0
    else:
        coef[:, X0_X], coef[:, X0_OUT] = abar.sqrt(), -beta_prod.sqrt()
    if sampler == "ddpm":
        # 2. posterior q(x_{t'} | x_t, x_0): mean (Ho et al. eq. 7) and variance
        alpha_t = abar / abar_prev
        beta_t = 1 - alpha_t
        coef[:, MEAN_X0] = abar_prev.sqrt() * beta_t / beta_prod
        coef[:, MEAN_X] = alpha_t.sqrt() * beta_prod_prev / beta_prod
        small = (beta_prod_prev / beta_prod * beta_t).clamp(min=1e-20)
        variance = small if variance_type == "fixed_small" else beta_t
        coef[:, SIGMA] = torch.where(t > 0, variance.sqrt(), 0.0)
    else:
        # 3. DDIM (Song et al. eq. 12, σ from eq. 16): ε̂ = f x_t + g o from the unclipped x̂_0
        if prediction_type == "epsilon":
            eps_x, eps_out = torch.zeros_like(abar), torch.ones_like(abar)
        elif prediction_type == "sample":
            eps_x, eps_out = beta_prod.rsqrt(), -(abar / beta_prod).sqrt()
        else:
            eps_x, eps_out = beta_prod.sqrt(), abar.sqrt()
        variance = beta_prod_prev / beta_prod * (1 - abar / abar_prev)
        std = eta * variance.sqrt()
        direction = (1 - abar_prev - std**2).clamp(min=0).sqrt()
        coef[:, MEAN_X0] = abar_prev.sqrt()
        coef[:, MEAN_X] = direction * eps_x
        coef[:, MEAN_OUT] = direction * eps_out
        coef[:, SIGMA] = std if eta > 0 else 0.0
    table = torch.zeros(n_train, NUM_COEFFICIENTS, dtype=torch.float64)
    table[t] = coef
    return table


# --- the sampling loop ----------------------------------------------------------------------

# Noise of sampler step i (slot i + 1; slot 0 is the starting noise) for element j of the whole
# batch of n samples is stream(seed)[slot * NOISE_STRIDE + j]: independent of devices and shards.
NOISE_STRIDE = 1 << 40


def shard(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """(first sample index, count) of rank ``rank``'s share of ``n`` samples: contiguous shares,
    the first ``n % world_size`` ranks taking one more."""
    base, extra = divmod(n, world_size)
    return rank * base + min(rank, extra), base + (rank < extra)


def sample_loop(
    model: Callable[[Tensor, Tensor], Tensor],
    shape: Sequence[int],
    first: int,
    timesteps: Tensor,
    table: Tensor,
    seed: int,
    clip_range: float = 0.0,
    impl: Impl = "auto",
    cuda_graph: bool = False,
    threads: int = 1,
) -> Tensor:
    """Denoise samples ``first .. first + shape[0] - 1`` of a seed's batch from pure noise.

    Runs in the caller's grad mode (``Diffusion.sample`` holds inference mode; the threads of
    ``threads > 1`` enter it themselves): with grad on and a model whose output requires grad,
    ``impl="auto"`` steps by the differentiable reference and ``"ext"`` raises (no backward).

    Args:
        model: ``model(x [N, ...], t [N]) -> [N, ...]`` (the UNet).
        shape: [N, ...] of this share.
        first: index of its first sample in the whole batch (the noise is addressed by it).
        timesteps: visited timesteps [steps] int64 on the device.
        table: coefficient table [T, 6] float32 on the device (:func:`step_coefficients`).
        seed: noise seed.
        clip_range: clip x̂_0 to ±clip_range; 0 does not clip.
        impl: implementation of the fused step.
        cuda_graph: capture model + step as one CUDA graph after two eager warm-up steps and
            replay it (needs the compiled op: the reference reads tensors on the host).
        threads: on the CPU, split the share over this many threads (:func:`run_in_threads`).

    Returns:
        x_0 [N, ...] float32.
    """
    if threads > 1 and table.device.type == "cpu":
        def part(offset: int, count: int, stop: threading.Event) -> Tensor:
            return _share_loop(model, (count, *shape[1:]), first + offset, timesteps, table, seed, clip_range,
                               impl, False, stop)
        return run_in_threads(part, shape[0], threads)
    return _share_loop(model, shape, first, timesteps, table, seed, clip_range, impl, cuda_graph)


# Below this many images per thread, splitting a batch costs more in smaller convolutions than
# one intra-op team loses to its barriers, where the UNet runs in Python (its threads also wait on
# each other's Python). 2-core Xeon (AVX-512), config UNet, DDPM, two threads over one team,
# paired rounds: 8 images 1.05-1.19x (three runs), 6 images 1.00x, 4 images 0.94x. Where it runs
# as one op (UNet.runs_op) the split wins from one image per thread: UNet alone, 1 + 1, 2 + 2 and
# 3 + 3 images 1.64-1.66x, 1.21-1.28x and 1.22-1.28x one team (2026-11-29, same machine).
MIN_IMAGES_PER_THREAD = 4


def cpu_threads(n: int, threads: int | None, per_thread: int = MIN_IMAGES_PER_THREAD) -> int:
    """Threads for sampling n images on the CPU: ``threads`` if given, else torch's intra-op
    thread count, fewer where a thread would get under ``per_thread`` images."""
    if threads is not None:
        if isinstance(threads, bool) or int(threads) != threads or threads < 1:
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        return int(threads)
    return max(1, min(torch.get_num_threads(), n // per_thread))


def run_in_threads(part: Callable[[int, int, threading.Event], Tensor], count: int, threads: int) -> Tensor:
    """``part(offset, count, stop)`` for ``threads`` contiguous parts of ``count`` samples (as
    :func:`shard` splits ranks), each in its own thread with one intra-op thread, concatenated in
    order. On 2 cores the UNet runs faster so than as one batch over two intra-op threads, which
    meet at a barrier after every op (by 1.2-1.3x at 2 to 4 images a thread where it runs as one
    op, which keeps the threads from waiting on each other's Python). Each part is addressed by
    its first sample, so the images are those of one thread to float rounding. torch's thread
    count is restored after; an error in one part stops the others at their next step and is
    raised."""
    saved = torch.get_num_threads()
    outs: list[Tensor | None] = [None] * threads
    errors: list[BaseException] = []
    stop = threading.Event()
    # autocast is per thread: the caller's, else the other parts ran in float32 under torch.autocast("cpu")
    autocast = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

    def work(r: int) -> None:
        try:
            torch.set_num_threads(1)  # this thread's OpenMP team (and the default for new ones)
            with torch.inference_mode(), torch.autocast("cpu", dtype=autocast[1], enabled=autocast[0]):
                offset, c = shard(count, r, threads)
                outs[r] = part(offset, c, stop) if c > 0 else None
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
            errors.append(exc)
            stop.set()

    workers = [threading.Thread(target=work, args=(r,), daemon=True) for r in range(1, threads)]
    try:
        for w in workers:
            w.start()
        work(0)
        for w in workers:
            w.join()
    finally:
        stop.set()
        torch.set_num_threads(saved)
    if errors:
        raise errors[0]
    return torch.cat([o for o in outs if o is not None])


class _Stopped(Exception):
    """Another part of a threaded sampling loop failed."""


def _share_loop(
    model: Callable[[Tensor, Tensor], Tensor],
    shape: Sequence[int],
    first: int,
    timesteps: Tensor,
    table: Tensor,
    seed: int,
    clip_range: float,
    impl: Impl,
    cuda_graph: bool,
    stop: threading.Event | None = None,
) -> Tensor:
    device = table.device
    per_sample = math.prod(shape[1:])
    x = philox_normal(seed, first * per_sample, list(shape), device=device, impl=impl)  # slot 0
    seed_offset = seed_offset_tensor(seed, NOISE_STRIDE + first * per_sample, device)
    stride = torch.tensor([0, NOISE_STRIDE], dtype=torch.int64, device=device)
    # [steps, N], each row expanded from one timestep (stride 0), which the UNet embeds once
    t_all = timesteps.to(device).view(-1, 1).expand(-1, shape[0])

    def step(x: Tensor, t: Tensor) -> Tensor:
        # float32, as x: under torch.autocast the model answers in bf16 or fp16
        out = diffusion_step(x, model(x, t).float(), t, table, seed_offset, clip_range, impl=impl,
                             check_timesteps=False)
        seed_offset.add_(stride)
        return out

    if cuda_graph and device.type == "cuda" and use_ext(impl):
        return _graph_loop(step, x, t_all)
    for i in range(t_all.shape[0]):
        if stop is not None and stop.is_set():
            raise _Stopped
        x = step(x, t_all[i])
    return x


def _graph_loop(step: Callable[[Tensor, Tensor], Tensor], x: Tensor, t_all: Tensor, warmup: int = 2) -> Tensor:
    """Steps ``warmup`` onwards as replays of one captured CUDA graph: the step index, the noise
    offset and x live in device tensors that the graph itself advances, so no replay waits on
    the host. (Unverified on a GPU in this repository's CI: see the README.)"""
    n_steps = t_all.shape[0]
    warm = min(warmup, n_steps)
    side = torch.cuda.Stream(device=x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graphs asks
        for i in range(warm):
            x = step(x, t_all[i])
    torch.cuda.current_stream(x.device).wait_stream(side)
    if warm == n_steps:
        return x
    static_x = x.clone()
    index = torch.full((1,), warm, dtype=torch.int64, device=x.device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        t = t_all[:, 0].index_select(0, index).expand(t_all.shape[1])
        static_x.copy_(step(static_x, t))
        index.add_(1)
    for _ in range(warm, n_steps):
        graph.replay()
    return static_x.clone()
