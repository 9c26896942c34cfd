"""Sampling on CUDA (skips without a GPU): the CUDA-graph loop against the eager loop on the
same device, the GPU against the CPU for a seed, and the wrapper's timestep check on CUDA."""
from __future__ import annotations

import pytest
import torch

from lightning_genmodels.ops import diffusion_step
from tests.diffusion.test_module import tiny
from tests.ops.test_diffusion_ops import T, _good
from tests.utils import requires_cuda

pytestmark = requires_cuda


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.6)])
def test_cuda_graph_loop_equals_the_eager_loop(sampler, eta):
    """Six steps: two eager warm-up steps, then four replays of one captured graph that advances
    the step index and the noise offset on the device (the UNet compiled, as by default)."""
    model = tiny(impl="ext").cuda()
    graph = model.sample(5, steps=6, sampler=sampler, eta=eta, seed=3, cuda_graph=True)
    eager = model.sample(5, steps=6, sampler=sampler, eta=eta, seed=3, cuda_graph=False)
    torch.testing.assert_close(graph, eager, rtol=0, atol=1e-6)
    again = model.sample(5, steps=6, sampler=sampler, eta=eta, seed=3, cuda_graph=True)
    assert torch.equal(graph, again)  # deterministic for a seed
    other = model.sample(5, steps=6, sampler=sampler, eta=eta, seed=4, cuda_graph=True)
    assert not torch.equal(graph, other)


def test_default_compiles_the_unet_on_cuda_to_the_same_images():
    """On CUDA ``sample`` compiles the UNet by default (a new graph: no fallback to eager), and
    its images equal the uncompiled UNet's to float rounding (inductor's GroupNorm sums in another
    order, and cuDNN's TF32 convolutions amplify it: 6.8e-4 after six steps on an H200)."""
    from torch._dynamo.utils import counters

    model = tiny(impl="ext").cuda()
    plain = model.sample(6, steps=6, sampler="ddpm", seed=2, compile_unet=False)
    before = counters["stats"]["unique_graphs"]
    compiled = model.sample(6, steps=6, sampler="ddpm", seed=2)
    assert counters["stats"]["unique_graphs"] > before
    torch.testing.assert_close(compiled, plain, rtol=0, atol=2e-3)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_cuda_samples_equal_cpu_samples(sampler):
    """Same seed, same images on both devices (Philox noise bit-identical; the UNet's float32
    rounding differs, so to 2e-3 after five steps)."""
    model = tiny(impl="ext")
    cpu = model.sample(4, steps=5, sampler=sampler, seed=1)
    gpu = model.cuda().sample(4, steps=5, sampler=sampler, seed=1)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=2e-3)


@pytest.mark.parametrize("bad_t", [-1, T])
def test_out_of_range_timestep_on_cuda_is_a_value_error(bad_t):
    """Checked on the host before the kernel, which could only assert on the device."""
    args = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in _good().items()}
    args["timestep"] = torch.tensor([5, bad_t], device="cuda")
    with pytest.raises(ValueError, match=rf"timestep\[1\] = {bad_t} is outside"):
        diffusion_step(**args, impl="ext")
    torch.cuda.synchronize()  # no device-side assertion was left behind
