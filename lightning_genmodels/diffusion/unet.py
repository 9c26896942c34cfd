"""A small UNet for 28×28 images: the ε/x_0/v predictor of DDPM (Ho et al. 2020, Appendix B).

Sinusoidal timestep embedding (Vaswani et al. 2017) through an MLP, residual blocks with
GroupNorm that add the embedding, stride-2 convolutions down and nearest-neighbour upsampling
up with skip connections, and self-attention at the lowest resolution (the middle block).

Sampling runs the same weights with less work: without autograd, activations and residual sums
are computed in place, a timestep shared by the whole batch (``t`` of one element, or expanded
with stride 0 as the sampler passes it) is embedded once and folded into each block's first
convolution bias (one product for all blocks), and each upsampling convolution runs at the low
resolution (:class:`UpsampleConv`). Inside :meth:`UNet.frozen` (the weights promised constant, as
while ``Diffusion.sample`` runs) the tensors derived from the weights for this (stacked embedding
weights, upsampling phase kernels) are computed once. Training takes the plain path; the tests
hold both to each other.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import numbers
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..module_utils import as_integer
from ..ops.build import IMPLS, Impl, use_ext
from ..ops.unet import unet_sample_forward


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0,
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """Sinusoidal embedding [N, dim] of timesteps t [N] (Vaswani et al. 2017, §3.5), computed in
    float32 (bf16 angles of t ~ 1000 would be off by several radians) and returned as ``dtype``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(emb, (0, dim % 2)).to(dtype)


def _silu(x: Tensor) -> Tensor:
    """SiLU, in place outside autograd (x is always a fresh intermediate here)."""
    return F.silu(x, inplace=not torch.is_grad_enabled())


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between; 1×1 skip if C changes."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: [N, C_in, H, W], emb: [N, E] or [1, E] (shared by the batch), or (sampling) the
        first convolution's bias [C_out] with the shared timestep's embedding folded in -> [N, C_out, H, W]."""
        h = _silu(self.norm1(x))
        if emb.dim() == 1:  # one timestep for the batch: a per-channel constant, i.e. a bias
            h = self.conv1._conv_forward(h, self.conv1.weight, emb)
        else:
            h = self.conv1(h) + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(_silu(self.norm2(h))))
        skip = self.skip(x)
        return skip + h if torch.is_grad_enabled() else h.add_(skip)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions, pre-GroupNorm, residual."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention_heads={heads} must divide the channels ({channels})")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, C, H, W] -> [N, C, H, W]."""
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w)
        # each [N, heads, HW, C/heads], rows contiguous: the CPU then takes the flash kernel, not
        # the math path (231 -> 109 us at 4 images, one thread, 2-core Xeon)
        q, k, v = qkv.transpose(-1, -2).contiguous().unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class UpsampleConv(nn.Conv2d):
    """Nearest-neighbour 2× upsampling, then a 3×3 convolution (padding 1): [N, C, H, W] -> [N, C, 2H, 2W].

    Without autograd it runs at the low resolution: output pixel (2i + a, 2j + b) reads input
    rows (i - 1, i) when a = 0 and (i, i + 1) when a = 1 (columns alike), so each of the four
    phases (a, b) is a 2×2 convolution whose taps are sums of the 3×3 taps that land on the same
    input pixel: one convolution with 4C outputs on the input padded by 1, 16/36 of the
    multiply-adds (about 20/36 at 7×7 with the padding), the same result to float rounding.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3, padding=1)
        self.keep_phases = False  # set by UNet.frozen: the weights stay as they are
        self._phases: tuple[Tensor, Tensor] | None = None

    def phase_kernels(self) -> tuple[Tensor, Tensor]:
        """The four phases' 2×2 kernels [4 O, I, 2, 2] and biases [4 O]; computed once while
        ``keep_phases`` (never under torch.compile, which traces them)."""
        keep = not torch.compiler.is_compiling() and getattr(self, "keep_phases", False)
        if keep and getattr(self, "_phases", None) is not None:  # absent in modules pickled before it
            return self._phases
        k = self.weight  # [O, I, 3, 3] -> phase kernels [2 (a), 2 (b), O, I, 2, 2]
        k = torch.stack([torch.stack([k[:, :, 0], k[:, :, 1] + k[:, :, 2]], 2),
                         torch.stack([k[:, :, 0] + k[:, :, 1], k[:, :, 2]], 2)])  # rows: [2, O, I, 2, 3]
        k = torch.stack([torch.stack([k[..., 0], k[..., 1] + k[..., 2]], -1),
                         torch.stack([k[..., 0] + k[..., 1], k[..., 2]], -1)], 1)  # cols: [2, 2, O, I, 2, 2]
        phases = (k.reshape(4 * self.out_channels, -1, 2, 2), self.bias.repeat(4))
        if keep:
            self._phases = phases
        return phases

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return super().forward(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        n, _, h, w = x.shape
        out_ch = self.out_channels
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), *self.phase_kernels())
        y = y.view(n, 2, 2, out_ch, h + 1, w + 1)  # phase (a, b) at (i, j) is y[:, a, b, :, i + a, j + b]
        out = x.new_empty(n, out_ch, h, 2, w, 2)
        for a in (0, 1):
            for b in (0, 1):
                out[:, :, :, a, :, b] = y[:, a, b, :, a:a + h, b:b + w]
        return out.view(n, out_ch, 2 * h, 2 * w)


class UNet(nn.Module):
    """UNet noise predictor: ``forward(x [N, C, S, S], t [N]) -> [N, C, S, S]``.

    Args:
        in_channels: image channels C.
        image_size: S; must be divisible by 2^(len(channel_mults) - 1).
        base_channels: channels of the first level; level i has ``base_channels * channel_mults[i]``.
        channel_mults: one multiplier per resolution level (28 -> 14 -> 7 for three levels).
        num_res_blocks: residual blocks per level, on each side.
        attention_heads: heads of the self-attention at the lowest resolution.
        dropout: in the residual blocks.
        groups: GroupNorm groups; must divide every level's channels.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_heads: int = 4,
        dropout: float = 0.0,
        groups: int = 8,
    ) -> None:
        super().__init__()
        sizes = dict(in_channels=in_channels, image_size=image_size, base_channels=base_channels,
                     num_res_blocks=num_res_blocks, attention_heads=attention_heads, groups=groups)
        for name, value in [*sizes.items(), *(("each of channel_mults", m) for m in channel_mults)]:
            if as_integer(value) is None:  # (floats failed deep inside torch, or were truncated: 2.5 -> 2)
                raise ValueError(f"{name} must be an integer, got {value!r}")
        mults = [int(m) for m in channel_mults]
        if not mults or min(mults) < 1 or base_channels < 1 or num_res_blocks < 1:
            raise ValueError(
                f"need base_channels >= 1, num_res_blocks >= 1 and channel_mults of positive integers, got "
                f"{base_channels}, {num_res_blocks}, {list(channel_mults)}"
            )
        if in_channels < 1 or image_size < 1:
            raise ValueError(f"need in_channels >= 1 and image_size >= 1, got {in_channels} and {image_size}")
        if groups < 1 or attention_heads < 1:  # (0 divided the channels: ZeroDivisionError; < 0 passed)
            raise ValueError(f"need groups >= 1 and attention_heads >= 1, got {groups} and {attention_heads}")
        if image_size % 2 ** (len(mults) - 1):
            raise ValueError(f"image_size={image_size} must be divisible by 2**(len(channel_mults) - 1)")
        chans = [base_channels * m for m in mults]
        if any(c % groups for c in chans):
            raise ValueError(f"groups={groups} must divide every level's channels {chans}")
        self.in_channels, self.image_size = in_channels, image_size
        emb_dim = 4 * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        ch = chans[0]
        for i, out_ch in enumerate(chans):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, out_ch, emb_dim, groups, dropout))
                ch = out_ch
            self.down.append(nn.ModuleList(blocks))
            last = i == len(chans) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid1 = ResBlock(ch, ch, emb_dim, groups, dropout)
        self.mid_attn = SelfAttention(ch, attention_heads, groups)
        self.mid2 = ResBlock(ch, ch, emb_dim, groups, dropout)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, out_ch in reversed(list(enumerate(chans))):
            blocks = []
            for j in range(num_res_blocks):
                blocks.append(ResBlock(ch + (chans[i] if j == 0 else 0), out_ch, emb_dim, groups, dropout))
                ch = out_ch
            self.up.append(nn.ModuleList(blocks))
            self.upsample.append(UpsampleConv(ch) if i > 0 else nn.Identity())
        self.norm_out = nn.GroupNorm(groups, ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        self._frozen = 0  # depth of frozen() blocks
        self._stacked: tuple | None = None  # inside frozen(): the blocks' embedding weights, stacked
        # inside frozen(): (sampling_weights(), the Dropout modules, the op's config); () where the op can't run
        self._op_plan: tuple | None = None
        self._frozen_impl: Impl = "ref"

    @contextlib.contextmanager
    def frozen(self, impl: Impl = "auto") -> Iterator[UNet]:
        """Promise that the weights do not change inside the block (``Diffusion.sample`` holds it
        while it samples): the sampling path then derives its tensors from them (the blocks'
        stacked embedding weights, the upsampling phase kernels, the op's weight list) once, not
        at every call. Outside it nothing is kept, so weights written in any way (``p.data.copy_``
        included, as Lightning's weight averaging swaps them) reach the next call. Re-entrant.

        ``impl``: on the CPU, ``"ext"`` and ``"auto"`` run a sampling forward as one call of the
        compiled op ``unet_sample_forward`` (:mod:`lightning_genmodels.ops.unet`; the same
        operations, so the same bits, without the interpreter between them), ``"ref"`` in Python.
        The op needs this class's own blocks and no active dropout; otherwise Python runs."""
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        ups = [m for m in self.modules() if isinstance(m, UpsampleConv)]
        self._frozen = getattr(self, "_frozen", 0) + 1
        saved_impl, self._frozen_impl = getattr(self, "_frozen_impl", "ref"), impl
        for m in ups:
            m.keep_phases = True
        try:
            yield self
        finally:
            self._frozen -= 1
            self._frozen_impl = saved_impl
            if not self._frozen:
                self._stacked = self._op_plan = None
                for m in ups:
                    m.keep_phases, m._phases = False, None

    def sampling_weights(self) -> list[Tensor | None] | None:
        """Every layer's weight and bias in the order the sampling forward runs them (None for an
        identity skip; the upsampling phase kernels for those layers; not the blocks' first
        biases, which are folded per call): what ``unet_sample_forward`` reads. None where a
        layer is not as this class builds it (:meth:`_matches_op`)."""
        if not self._matches_op():
            return None

        def block(b: ResBlock) -> list[Tensor | None]:
            skip = [b.skip.weight, b.skip.bias] if isinstance(b.skip, nn.Conv2d) else [None, None]
            return [b.norm1.weight, b.norm1.bias, b.conv1.weight, b.norm2.weight, b.norm2.bias,
                    b.conv2.weight, b.conv2.bias, *skip]

        w: list[Tensor | None] = [self.conv_in.weight, self.conv_in.bias]
        for level, down in zip(self.down, self.downsample):
            w += [t for b in level for t in block(b)]
            w += [down.weight, down.bias] if isinstance(down, nn.Conv2d) else []
        a = self.mid_attn
        w += block(self.mid1) + [a.norm.weight, a.norm.bias, a.qkv.weight, a.qkv.bias, a.proj.weight, a.proj.bias]
        w += block(self.mid2)
        for level, up in zip(self.up, self.upsample):
            w += [t for b in level for t in block(b)]
            w += list(up.phase_kernels()) if isinstance(up, UpsampleConv) else []
        return w + [self.norm_out.weight, self.norm_out.bias, self.conv_out.weight, self.conv_out.bias]

    def _matches_op(self) -> bool:
        """Whether every layer is what ``unet_sample_forward`` assumes: this class's blocks (not a
        subclass's or a swapped module), convolutions of the built geometry, one GroupNorm setting."""
        norm_out = self.norm_out
        if type(norm_out) is not nn.GroupNorm or not norm_out.affine:
            return False

        def conv(m: nn.Module, k: int, stride: int = 1, pad: int = 1, kind: type = nn.Conv2d) -> bool:
            return (type(m) is kind and m.kernel_size == (k, k) and m.stride == (stride, stride)
                    and m.padding == (pad, pad) and m.dilation == (1, 1) and m.groups == 1
                    and m.padding_mode == "zeros" and m.bias is not None)

        def norm(m: nn.Module) -> bool:
            return (type(m) is nn.GroupNorm and m.affine and m.num_groups == norm_out.num_groups
                    and m.eps == norm_out.eps)

        def block(b: nn.Module) -> bool:
            return (type(b) is ResBlock and norm(b.norm1) and norm(b.norm2) and conv(b.conv1, 3)
                    and conv(b.conv2, 3) and type(b.dropout) is nn.Dropout
                    and (type(b.skip) is nn.Identity or conv(b.skip, 1, pad=0)))

        levels, a = len(self.down), self.mid_attn
        per_level = {len(level) for level in (*self.down, *self.up)}
        return (len(per_level) == 1 and len(self.up) == levels == len(self.downsample) == len(self.upsample)
                and conv(self.conv_in, 3) and conv(self.conv_out, 3)
                and all(block(b) for level in (*self.down, *self.up) for b in level)
                and block(self.mid1) and block(self.mid2)
                and type(a) is SelfAttention and norm(a.norm) and conv(a.qkv, 1, pad=0) and conv(a.proj, 1, pad=0)
                and all(type(d) is nn.Identity if i == levels - 1 else conv(d, 3, stride=2)
                        for i, d in enumerate(self.downsample))
                and all(type(u) is nn.Identity if i == levels - 1 else conv(u, 3, kind=UpsampleConv)
                        for i, u in enumerate(self.upsample)))

    def runs_op(self, device: torch.device | str) -> bool:
        """Whether a sampling forward on ``device`` runs as the op now: inside :meth:`frozen` with
        impl ``"auto"`` or ``"ext"``, on the CPU, with this class's own blocks, no active dropout
        and the library built (``"auto"`` warns once where it is not)."""
        impl = getattr(self, "_frozen_impl", "ref") if getattr(self, "_frozen", 0) > 0 else "ref"
        if impl == "ref" or torch.device(device).type != "cpu" or torch.compiler.is_compiling():
            return False
        plan = getattr(self, "_op_plan", None)
        if plan is None:  # one assignment: the sampling threads may race here
            weights = self.sampling_weights()
            plan = self._op_plan = () if weights is None else (
                weights, [m for m in self.modules() if isinstance(m, nn.Dropout)],
                (len(self.down), len(self.down[0]), self.norm_out.num_groups, self.mid_attn.heads))
        return bool(plan) and not any(m.training and m.p > 0 for m in plan[1]) and use_ext(impl)

    def _op_forward(self, x: Tensor, biases: list[Tensor]) -> Tensor | None:
        """The sampling forward by the op, or None where Python runs (:meth:`runs_op`)."""
        if not self.runs_op(x.device):
            return None
        weights, _, config = self._op_plan
        return unet_sample_forward(x, weights, biases, config, self.norm_out.eps)

    def _folded_biases(self, emb: Tensor) -> list[Tensor]:
        """Each block's first-convolution bias with the shared embedding emb [1, E] folded in, by
        one matrix product over all blocks, their weights stacked once inside :meth:`frozen` (15 us
        there against 100 us for a product per block; outside it, stacked at every call, about
        the same as that; 2-core Xeon)."""
        keep = not torch.compiler.is_compiling() and getattr(self, "_frozen", 0) > 0
        stacked = getattr(self, "_stacked", None) if keep else None
        if stacked is None:
            blocks = [*(b for level in self.down for b in level), self.mid1, self.mid2,
                      *(b for level in self.up for b in level)]
            weight = torch.cat([b.emb.weight for b in blocks])
            bias = torch.cat([b.emb.bias + b.conv1.bias for b in blocks])
            stacked = (weight, bias, [b.conv1.out_channels for b in blocks])
            if keep:
                self._stacked = stacked
        weight, bias, sizes = stacked
        return list(torch.addmm(bias, emb, weight.t())[0].split(sizes))

    def check_input(self, x: Tensor) -> None:
        """ValueError naming the shape when x is not [N, C, S, S] as built."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"UNet was built for images [N, {', '.join(map(str, expected))}] "
                f"(in_channels={self.in_channels}, image_size={self.image_size}), got shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """x: [N, C, S, S] noisy images, t: [N] timesteps -> [N, C, S, S] prediction.

        ``t`` of one element (a Python number too, as diffusers' ``UNet2DModel`` takes), or [N]
        expanded from one (stride 0), is one timestep for the batch.
        x in another dtype than the weights (a float32 sampler, bf16-true weights) is run in the
        weights' dtype and the prediction returned in x's.
        """
        self.check_input(x)
        dtype = self.conv_in.weight.dtype
        if x.dtype != dtype:
            return self.forward(x.to(dtype), t).to(x.dtype)
        if not isinstance(t, Tensor):  # (an int or float raised AttributeError: no reshape)
            if isinstance(t, bool) or not isinstance(t, numbers.Real):  # ("5": "new(): invalid data type")
                raise ValueError(f"t must be a timestep number or a tensor of them, got {t!r}")
            t = torch.as_tensor(t, device=x.device)
        if t.is_complex() or t.dtype == torch.bool:  # (the imaginary part was dropped silently)
            raise ValueError(f"t must hold real timesteps, got dtype {t.dtype}")
        t = t.reshape(-1)
        if t.numel() not in (1, x.shape[0]):  # (ATen's "expanded size of the tensor (2) must match")
            raise ValueError(f"t must be one timestep or [N] = [{x.shape[0]}] of them, got shape {tuple(t.shape)}")
        shared = t.numel() == 1 or t.stride(0) == 0
        t_emb = timestep_embedding(t[:1] if shared else t.expand(x.shape[0]), self.base_channels,
                                   dtype=self.time_mlp[0].weight.dtype)
        emb = self.time_mlp(t_emb)
        # each block's conditioning, in the order the blocks run
        conds: Iterator[Tensor] = itertools.repeat(emb)
        if shared and not torch.is_grad_enabled():
            biases = self._folded_biases(emb)
            out = self._op_forward(x, biases)
            if out is not None:
                return out
            conds = iter(biases)
        h = self.conv_in(x)
        skips = []
        for blocks, down in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, next(conds))
            skips.append(h)
            h = down(h)
        h = self.mid1(h, next(conds))
        h = self.mid2(self.mid_attn(h), next(conds))
        for blocks, up in zip(self.up, self.upsample):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = block(h, next(conds))
            h = up(h)
        return self.conv_out(_silu(self.norm_out(h)))
