"""The UNet's sampling forward in one op call (``csrc/cpu/unet.cpp``).

The op runs the same ATen operations in the same order as the Python sampling path of
:class:`lightning_genmodels.diffusion.unet.UNet` (no autograd, one timestep for the batch),
which is its reference: the tests hold the two to the same bits for a batch of one chunk. A
larger batch on one intra-op thread (as ``Diffusion.sample``'s threads run it) goes chunk by
chunk (at most 12 images, and the first convolution's output of a chunk at most 588 KiB, that
of 12 images of the 16-channel 28×28 UNet), so that each forward reuses memory the last one freed instead of faulting in fresh
pages; that matches one call per chunk bit for bit and the whole batch in Python to float
rounding. What it saves is Python: the interpreter releases the GIL once for the whole forward
instead of taking it back after each of ~190 operations, so the sampler's threads
(``samplers.run_in_threads``) no longer wait on each other. Only the UNet calls it, inside
:meth:`UNet.frozen`, where its weight list is kept.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .build import _differentiated, load_library, register_on_load


def unet_sample_forward(
    x: Tensor, weights: Sequence[Tensor | None], folded_biases: Sequence[Tensor], config: Sequence[int], eps: float
) -> Tensor:
    """``UNet.forward`` without autograd for one shared timestep: x [N, C, S, S] -> [N, C, S, S].

    Args:
        x: the noisy images.
        weights: ``UNet.sampling_weights()``: every layer's weight and bias in run order, None for
            an identity skip, the upsampling phase kernels in place of those layers' 3×3 weights.
        folded_biases: each residual block's first-convolution bias with the timestep's embedding
            folded in, in run order (``UNet._folded_biases``).
        config: [levels, num_res_blocks, groups, heads].
        eps: the GroupNorms' epsilon.

    It has no gradient: with autograd on and a weight or input that requires grad, or one that
    carries a forward-mode tangent (``torch.func.jvp``), RuntimeError.
    The compiled kernel only (no ``impl``: its reference is the UNet's Python forward); the
    library is built and loaded on first use, as for the other ops.
    """
    if _differentiated((x, *weights, *folded_biases)):
        raise RuntimeError("unet_sample_forward has no gradient: call it under torch.no_grad() or "
                           "torch.inference_mode(), with no forward-mode tangent (the UNet's training path "
                           "is its differentiable form)")
    load_library()
    return torch.ops.lightning_genmodels.unet_sample_forward(x, list(weights), list(folded_biases),
                                                             [int(c) for c in config], float(eps))


def _register_fake() -> None:
    @torch.library.register_fake("lightning_genmodels::unet_sample_forward")
    def _(x: Tensor, weights: list, folded_biases: list, config: list, eps: float):
        conv_out = weights[-2]
        return x.new_empty(x.shape[0], conv_out.shape[0], x.shape[2], x.shape[3])


register_on_load(_register_fake)
