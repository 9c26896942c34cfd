"""The UNet's sampling path (in place, shared timestep folded into biases, low-resolution
upsampling convolutions) equals its training path; bf16 weights train and sample."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels import Diffusion
from lightning_genmodels.diffusion.unet import UNet, UpsampleConv


def randomised(module: nn.Module) -> nn.Module:
    """Random weights everywhere (the zero-initialised convolutions would hide differences)."""
    torch.manual_seed(0)
    for p in module.parameters():
        nn.init.normal_(p, std=0.2)
    return module


@pytest.mark.parametrize("side", [5, 7, 14])
def test_upsample_conv_at_low_resolution_equals_upsample_then_conv(side: int) -> None:
    conv = randomised(UpsampleConv(6))
    x = torch.randn(3, 6, side, side)
    expected = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected)  # autograd on: the plain path
    with torch.no_grad():
        low = conv(x)
    assert low.shape == (3, 6, 2 * side, 2 * side)
    torch.testing.assert_close(low, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t_form", ["per_sample", "expanded", "one", "scalar"])
def test_sampling_path_equals_training_path(t_form: str) -> None:
    unet = randomised(UNet(base_channels=8, channel_mults=(1, 2, 2), groups=4)).eval()
    x = torch.randn(4, 1, 28, 28)
    t_rows = torch.tensor([3, 500, 999, 40]) if t_form == "per_sample" else torch.full((4,), 500)
    t = {"per_sample": t_rows, "expanded": torch.tensor(500).expand(4), "one": torch.tensor([500]),
         "scalar": torch.tensor(500)}[t_form]
    expected = unet(x, t_rows)
    expected.sum().backward()  # the training path has a gradient, and no in-place error
    assert all(p.grad is not None for p in unet.parameters())
    with torch.inference_mode():
        got = unet(x, t)
    torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(unet(x.clone(), t), got, rtol=0, atol=0)


def test_sampling_path_follows_weight_changes() -> None:
    """Outside UNet.frozen the sampling path derives nothing to keep: an in-place update (an optimizer
    step), a write through .data (Lightning's weight averaging swaps weights so, without a version
    bump), load_state_dict and a replaced parameter all reach the next call."""
    unet = randomised(UNet(base_channels=8, channel_mults=(1, 2, 2), groups=4)).eval()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor(321).expand(2)

    def check() -> None:
        expected = unet(x, t.clone()).detach()  # the training path
        with torch.inference_mode():
            torch.testing.assert_close(unet(x, t), expected, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(unet(x, t), expected, rtol=1e-5, atol=1e-5)

    check()
    with torch.no_grad():
        for p in unet.parameters():
            p.mul_(0.9).add_(0.05)
    check()
    for p in unet.parameters():
        p.data.copy_(p.data * 1.1 - 0.02)
    check()
    other = randomised(UNet(base_channels=8, channel_mults=(1, 2, 2), groups=4))
    unet.load_state_dict({k: v + 0.1 * torch.randn_like(v) for k, v in other.state_dict().items()})
    check()
    block, up = unet.up[0][0], unet.upsample[0]
    block.emb.weight = nn.Parameter(block.emb.weight.detach() + 0.3)
    up.weight = nn.Parameter(up.weight.detach() - 0.2)
    check()


def test_frozen_derives_the_weights_tensors_once_and_drops_them_at_exit() -> None:
    """Inside UNet.frozen (as Diffusion.sample runs) the stacked embedding weights and the phase
    kernels are computed once and reused (the same tensors), the output is the plain path's, and
    leaving the block drops them, so weights changed after it reach the next block."""
    unet = randomised(UNet(base_channels=8, channel_mults=(1, 2, 2), groups=4)).eval()
    up = unet.upsample[0]
    x, t = torch.randn(2, 1, 28, 28), torch.tensor(321).expand(2)
    for _ in range(2):
        expected = unet(x, t.clone()).detach()
        with torch.inference_mode(), unet.frozen():
            with unet.frozen():  # re-entrant: the inner exit keeps them
                first = unet(x, t)
            stacked, phases = unet._stacked, up._phases
            assert stacked is not None and phases is not None
            second = unet(x, t)
            assert unet._stacked is stacked and up._phases is phases
        torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(second, first, rtol=0, atol=0)
        assert unet._stacked is None and up._phases is None and not up.keep_phases
        for p in unet.parameters():
            p.data.mul_(1.1)


def test_bf16_weights_train_and_take_float32_input() -> None:
    """precision="bf16-true" converts the weights and the batch: the timestep embedding follows
    the weights' dtype, and a float32 sampler's x is run in bf16 and answered in float32."""
    unet = randomised(UNet(base_channels=8, channel_mults=(1, 2), groups=4)).to(torch.bfloat16)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([3, 500, 999])
    out = unet(x.bfloat16(), t)  # the training path, autograd on
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    assert unet.time_mlp[0].weight.grad is not None and unet.time_mlp[0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        from_float = unet(x, t)
        assert from_float.dtype == torch.float32
        torch.testing.assert_close(from_float, unet(x.bfloat16(), t).float(), rtol=0, atol=0)


def test_diffusion_fits_and_samples_in_bf16_true(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Diffusion(base_channels=8, channel_mults=(1, 2), groups=4, attention_heads=2, num_train_timesteps=100,
                      sample_steps=2)
    data = DataLoader(TensorDataset(torch.rand(8, 1, 28, 28) * 2 - 1, torch.zeros(8, dtype=torch.long)), batch_size=4)
    Trainer(accelerator="cpu", fast_dev_run=2, precision="bf16-true", logger=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp_path).fit(model, data, data)
    assert model.unet.conv_in.weight.dtype == torch.bfloat16
    images = model.sample(2, seed=0)
    assert images.shape == (2, 1, 28, 28) and torch.isfinite(images.float()).all()
