"""unet_sample_forward: the UNet's sampling forward as one op, held to the Python path bit for bit
(for a batch of one chunk)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lightning_genmodels.diffusion.unet as unet_module
from lightning_genmodels import Diffusion
from lightning_genmodels.diffusion.unet import UNet

from .test_unet import randomised

CONFIGS = {
    "three_levels": dict(base_channels=8, channel_mults=(1, 2, 2), groups=4),
    "two_blocks_rgb": dict(in_channels=3, image_size=16, base_channels=8, channel_mults=(1, 2), num_res_blocks=2,
                           attention_heads=2, groups=4),
    "one_level": dict(image_size=12, base_channels=8, channel_mults=(2,), groups=4),
    "config_size": dict(base_channels=16, channel_mults=(1, 2, 4)),
}


@pytest.fixture
def op_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the UNet's calls of the op (the batch size of each)."""
    calls: list[int] = []
    real = unet_module.unet_sample_forward

    def counted(x, *args):
        calls.append(x.shape[0])
        return real(x, *args)

    monkeypatch.setattr(unet_module, "unet_sample_forward", counted)
    return calls


def inputs(unet: UNet, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(n, unet.in_channels, unet.image_size, unet.image_size), torch.tensor(417).expand(n)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("n", [1, 3])
def test_op_equals_the_python_sampling_path_bit_for_bit(name: str, n: int, op_calls: list[int]) -> None:
    unet = randomised(UNet(**CONFIGS[name])).eval()
    x, t = inputs(unet, n)
    with torch.inference_mode():
        with unet.frozen("ref"):
            expected = unet(x, t)
        assert op_calls == []
        with unet.frozen("ext"):
            got = unet(x, t)
            again = unet(x, torch.tensor([417]))
    assert op_calls == [n, n]
    assert got.shape == x.shape
    assert torch.equal(got, expected) and torch.equal(again, expected)


@pytest.mark.parametrize("name, threads, chunk", [("config_size", 1, 12), ("config_size", 2, 30),
                                                  ("three_levels", 1, 12), ("wide", 1, 6)])
def test_a_large_batch_on_one_thread_runs_in_chunks(name: str, threads: int, chunk: int) -> None:
    """30 images on one intra-op thread run in chunks of at most 12 images and of the 16-channel
    28x28 UNet's first-convolution bytes of 12 (csrc/cpu/unet.cpp, chunk_images), on two threads
    as one batch: the same bits as one call per chunk, and the Python path's whole batch to float
    rounding. (Only the 16-channel UNet on one thread gives other bits for other splits, so only it
    pins the chunk size; the others hold the stitching of the chunks.)"""
    config = {**CONFIGS["config_size"], "base_channels": 32} if name == "wide" else CONFIGS[name]
    unet = randomised(UNet(**config)).eval()
    x, t = inputs(unet, 30)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            with unet.frozen("ref"):
                expected = unet(x, t)
            with unet.frozen("ext"):
                got = unet(x, t)
                parts = torch.cat([unet(x[i:i + chunk], t[:1]) for i in range(0, 30, chunk)])
                shifted = unet(x[1:], t[:1])  # other chunk borders: other bits, the same images
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(got, parts)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shifted, got[1:], rtol=1e-4, atol=1e-5)


def test_python_runs_where_the_op_cannot(op_calls: list[int]) -> None:
    """Outside frozen, with grad, per-sample timesteps, impl="ref" or active dropout: the Python path."""
    unet = randomised(UNet(**CONFIGS["three_levels"])).eval()
    x, t = inputs(unet, 2)
    with torch.inference_mode():
        unet(x, t)
        with unet.frozen("ext"):
            unet(x, torch.tensor([5, 900]))
        with unet.frozen("ref"):
            unet(x, t)
    with torch.no_grad(), unet.frozen("ext"):
        with torch.enable_grad():
            unet(x, t)
    assert op_calls == []
    dropping = randomised(UNet(**CONFIGS["three_levels"], dropout=0.5)).train()
    with torch.inference_mode(), dropping.frozen("ext"):
        dropping(x, t)
        assert op_calls == []
        dropping.eval()
        dropping(x, t)
        assert op_calls == [2]


class BiggerBlock(unet_module.ResBlock):
    """A user's block: the op cannot know what it does."""


SWAPS = {
    "attention removed": lambda u: setattr(u, "mid_attn", nn.Identity()),
    "a subclass's block": lambda u: u.up[0].__setitem__(0, BiggerBlock(32, 16, 32, 4, 0.0)),
    "output convolution unpadded": lambda u: setattr(u.conv_out, "padding", (0, 0)),
    "other GroupNorm groups": lambda u: setattr(u.mid1, "norm2", nn.GroupNorm(2, 16)),
    "other GroupNorm eps": lambda u: setattr(u.norm_out, "eps", 1e-3),
    "strided skip": lambda u: setattr(u.up[0][0].skip, "stride", (2, 2)),
}


@pytest.mark.parametrize("swap", list(SWAPS))
def test_a_layer_the_op_does_not_know_runs_in_python(swap: str, op_calls: list[int]) -> None:
    unet = randomised(UNet(**CONFIGS["three_levels"])).eval()
    assert unet.sampling_weights() is not None
    SWAPS[swap](unet)
    assert unet.sampling_weights() is None
    x, t = inputs(unet, 2)
    with torch.inference_mode(), unet.frozen("ext"):
        try:
            unet(x, t)
        except RuntimeError:  # a swap the Python path cannot run either (shapes no longer fit)
            pass
    assert op_calls == []


def test_sample_runs_the_op_and_draws_the_same_images(op_calls: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Diffusion.sample, one thread and split over two: the op at every step, the Python path's images."""
    model = Diffusion(base_channels=8, channel_mults=(1, 2), attention_heads=2, groups=4, sample_steps=4,
                      impl="ext")
    randomised(model.unet)
    one, two = model.sample(5, seed=3, threads=1), model.sample(8, seed=3, threads=2)
    assert op_calls == [5] * 4 + [4] * 8
    monkeypatch.setattr(UNet, "_op_forward", lambda self, x, biases: None)
    assert torch.equal(model.sample(5, seed=3, threads=1), one)
    assert torch.equal(model.sample(8, seed=3, threads=2), two)


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two intra-op threads to split over")
def test_sample_splits_from_one_image_a_thread_where_the_op_runs(op_calls: list[int]) -> None:
    """With the op the default split gives each thread one image or more; in Python, four or more."""
    model = Diffusion(base_channels=8, channel_mults=(1, 2), attention_heads=2, groups=4, sample_steps=2)
    threads = min(torch.get_num_threads(), 3)
    model.sample(3, seed=1)
    assert sorted(set(op_calls)) == ([1] if threads == 3 else [1, 2]) and len(op_calls) == 2 * threads
    model.hparams.impl = "ref"
    seen: list[int] = []
    model.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    model.sample(3, seed=1)
    assert seen == [3, 3] and len(op_calls) == 2 * threads


def test_opcheck() -> None:
    unet = randomised(UNet(**CONFIGS["two_blocks_rgb"])).eval()
    x, t = inputs(unet, 2)
    unet.requires_grad_(False)  # the op has no gradient (an inference op, as the UNet calls it)
    with torch.no_grad(), unet.frozen():
        emb = unet.time_mlp(unet_module.timestep_embedding(t[:1], unet.base_channels))
        args = (x, unet.sampling_weights(), unet._folded_biases(emb), [2, 2, 4, 2], 1e-5)
    torch.library.opcheck(torch.ops.lightning_genmodels.unet_sample_forward.default, args)


def test_bad_lists_raise_errors_that_name_them() -> None:
    unet = randomised(UNet(**CONFIGS["three_levels"])).eval()
    x, t = inputs(unet, 2)
    op = torch.ops.lightning_genmodels.unet_sample_forward
    with torch.no_grad(), unet.frozen():
        emb = unet.time_mlp(unet_module.timestep_embedding(t[:1], unet.base_channels))
        weights, biases = unet.sampling_weights(), unet._folded_biases(emb)
    config = [3, 1, 4, 4]
    with pytest.raises(RuntimeError, match="weights end after"):
        op(x, weights[:-1], biases, config, 1e-5)
    with pytest.raises(RuntimeError, match="weights left over"):
        op(x, weights + [weights[-1]], biases, config, 1e-5)
    with pytest.raises(RuntimeError, match="expected 8 folded biases"):
        op(x, weights, biases[:-1], config, 1e-5)
    with pytest.raises(RuntimeError, match=r"config must be \[levels"):
        op(x, weights, biases, config[:3], 1e-5)
    with pytest.raises(RuntimeError, match="is None where a tensor is needed"):
        op(x, [None] + weights[1:], biases, config, 1e-5)
    with pytest.raises(RuntimeError, match="has no gradient"):
        unet_module.unet_sample_forward(x, weights, [b.detach() for b in biases], config, 1e-5)
    with pytest.raises(ValueError, match="impl must be one of"):
        with unet.frozen("fast"):
            pass
