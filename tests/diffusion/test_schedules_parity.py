"""Schedules and the sampler step against diffusers' DDPMScheduler and DDIMScheduler."""
from __future__ import annotations

import itertools

import pytest
import torch

from lightning_genmodels.diffusion import samplers as S
from lightning_genmodels.diffusion.schedules import DIFFUSERS_NAMES, alphas_cumprod, make_betas
from lightning_genmodels.ops.diffusion import diffusion_step
from lightning_genmodels.diffusion.samplers import seed_offset_tensor

diffusers = pytest.importorskip("diffusers")

T = 1000
SCHEDULES = ["linear", "cosine", "sigmoid"]
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
SPACINGS = ["leading", "trailing", "linspace"]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_betas_match_diffusers(schedule):
    ours = make_betas(schedule, T)
    theirs = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=DIFFUSERS_NAMES[schedule]).betas
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-6, atol=1e-7)
    assert ours.dtype == torch.float64


@pytest.mark.parametrize("spacing, steps", list(itertools.product(SPACINGS, [1, 7, 50, 333, 1000])))
def test_timesteps_match_diffusers(spacing, steps):
    for cls in (diffusers.DDPMScheduler, diffusers.DDIMScheduler):
        sched = cls(num_train_timesteps=T, timestep_spacing=spacing)
        sched.set_timesteps(steps)
        assert torch.equal(S.inference_timesteps(T, steps, spacing), sched.timesteps)


def test_trailing_spacing_has_exactly_steps_timesteps():
    """Where diffusers' float arange overshoots (61 of 1000 steps -> 62 values, the last -1),
    ours keeps the first 61, which are diffusers' own."""
    ours = S.inference_timesteps(T, 61, "trailing")
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    sched.set_timesteps(61)
    assert len(ours) == 61 and int(ours.min()) >= 0
    assert torch.equal(ours, sched.timesteps[:61]) and int(sched.timesteps[-1]) == -1


def _scheduler(cls, schedule, prediction, spacing, clip, clip_range, **extra):
    """A diffusers scheduler of the same config whose ᾱ is float64, so its step runs in float64.

    In float32 diffusers loses digits in 1 - ᾱ_t near t = 0 (ᾱ_0 = 1 - 1e-4: a relative error
    of ~1e-3 in 1 - ᾱ_0), which our float64 tables do not; both are held to the exact value.
    """
    betas = make_betas(schedule, T)
    sched = cls(  # DDIMScheduler has no "sigmoid": it gets the betas as trained_betas
        num_train_timesteps=T, trained_betas=betas.float().tolist(), prediction_type=prediction,
        timestep_spacing=spacing, clip_sample=clip, clip_sample_range=clip_range, **extra,
    )
    sched.alphas_cumprod = alphas_cumprod(betas)
    return sched, betas


def _our_step(sched_betas, timesteps, t, x, out, noise_seed, **kwargs):
    """One step of the reference op at timestep t (all samples), noise from Philox at offset 0."""
    clip = kwargs.pop("clip_range")
    table = S.step_coefficients(alphas_cumprod(sched_betas), timesteps, **kwargs).float()
    tt = torch.full((x.shape[0],), int(t), dtype=torch.int64)
    return diffusion_step(x, out, tt, table, seed_offset_tensor(noise_seed, 0, x.device), clip, impl="ref")


def _noise(seed, shape):
    from lightning_genmodels.ops import philox_normal

    return philox_normal(seed, 0, shape, impl="ref")


CASES = list(itertools.product(SCHEDULES, PREDICTIONS, SPACINGS, [(False, 1.0), (True, 1.0), (True, 0.5)]))


@pytest.mark.parametrize("schedule, prediction, spacing, clip", CASES)
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_step_matches_diffusers(schedule, prediction, spacing, clip, variance, ddpm_noise):
    sched, betas = _scheduler(diffusers.DDPMScheduler, schedule, prediction, spacing, *clip, variance_type=variance)
    sched.set_timesteps(20)
    gen = torch.Generator().manual_seed(0)
    x, out = torch.randn(3, 1, 4, 4, generator=gen), torch.randn(3, 1, 4, 4, generator=gen)
    for t in sched.timesteps[[0, 1, 10, -2, -1]]:
        noise = _noise(5, list(x.shape))
        ddpm_noise.append(noise.double())  # what diffusers' randn_tensor returns next (see the fixture)
        theirs = sched.step(out.double(), t, x.double()).prev_sample.float()
        assert not ddpm_noise or t == 0, "diffusers drew no noise at t > 0"
        ours = _our_step(betas, sched.timesteps, t, x, out, 5, sampler="ddpm", prediction_type=prediction,
                         variance_type=variance, clip_range=clip[1] if clip[0] else 0.0)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule, prediction, spacing, clip", CASES)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_diffusers(schedule, prediction, spacing, clip, eta):
    sched, betas = _scheduler(diffusers.DDIMScheduler, schedule, prediction, spacing, *clip)
    sched.set_timesteps(20)
    gen = torch.Generator().manual_seed(1)
    x, out = torch.randn(3, 1, 4, 4, generator=gen), torch.randn(3, 1, 4, 4, generator=gen)
    for t in sched.timesteps[[0, 1, 10, -2, -1]]:
        noise = _noise(9, list(x.shape))
        theirs = sched.step(out.double(), t, x.double(), eta=eta, variance_noise=noise.double()).prev_sample.float()
        ours = _our_step(betas, sched.timesteps, t, x, out, 9, sampler="ddim", prediction_type=prediction,
                         eta=eta, clip_range=clip[1] if clip[0] else 0.0)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.fixture
def ddpm_noise(monkeypatch):
    """A list whose tensors diffusers' DDPMScheduler.step draws as its noise, in order: its
    step() takes a generator, not the noise, so its randn_tensor is replaced."""
    import diffusers.schedulers.scheduling_ddpm as ddpm

    queue: list[torch.Tensor] = []
    monkeypatch.setattr(ddpm, "randn_tensor", lambda shape, **kwargs: queue.pop(0))
    return queue
