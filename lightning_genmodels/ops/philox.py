"""Counter-based standard normals: Philox4x32-10 with the Box-Muller transform.

The stream of a seed is infinite and addressable: ``philox_normal(seed, offset, size)`` returns
its values ``offset .. offset + numel - 1``, so drawing ``n`` then ``m`` values at ``offset + n``
equals drawing ``n + m`` at once, on any device, in any process. Value ``i`` comes from Philox
block ``i // 4`` (counter ``(i // 4, 0)``, key ``(seed_lo, seed_hi)``; Salmon et al., SC'11),
lanes ``(x, y)`` and ``(z, w)`` each giving two normals by Box-Muller.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..module_utils import as_integer
from .build import Impl, register_on_load, use_ext

M32 = 0xFFFFFFFF
STREAM_LENGTH = 1 << 62  # offsets addressable by (block index, lane)
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def _mulhilo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32 bits of ``a * b`` for 32-bit values held in int64, without overflow."""
    p_lo = a * (b & 0xFFFF)  # < 2**48
    p_hi = a * (b >> 16)  # < 2**48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (p_lo + ((p_hi & 0xFFFF) << 16)) & M32
    return hi, lo


def _philox4x32_10(counter: list[Tensor], seed: int | Tensor) -> list[Tensor]:
    """Ten Philox rounds on four int64 lanes of 32-bit values (``seed`` an int, or a 0-d int64
    tensor holding its bits)."""
    c0, c1, c2, c3 = counter
    k0, k1 = seed & M32, (seed >> 32) & M32
    for _ in range(10):
        hi0, lo0 = _mulhilo(PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo(PHILOX_M[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W[0]) & M32, (k1 + PHILOX_W[1]) & M32
    return [c0, c1, c2, c3]


def _box_muller(radius_bits: Tensor, angle_bits: Tensor) -> tuple[Tensor, Tensor]:
    """Two normals from two 32-bit words (Box & Muller, 1958), evaluated in float64 and rounded
    once to float32: radius sqrt(-2 ln u) with u = (bits >> 8 + 1) / 2^24 in (0, 1], angle 2π v with
    v = (bits >> 8) / 2^24 in [0, 1). The kernels (csrc/common/philox.h) evaluate the same float64
    formula with their own polynomials, bit-identical on CPU and CUDA."""
    u_radius = ((radius_bits >> 8) + 1).double() * (1.0 / 16777216.0)
    u_angle = (angle_bits >> 8).double() * (1.0 / 16777216.0)
    radius = torch.sqrt(-2.0 * torch.log(u_radius))
    angle = (2.0 * math.pi) * u_angle
    return (radius * torch.cos(angle)).float(), (radius * torch.sin(angle)).float()


def _philox_normal_ref(seed: int, offset: int, size: Sequence[int], device: torch.device) -> Tensor:
    """Pure-PyTorch reference: the specification the kernels are held to. Float32."""
    n = 1
    for s in size:
        n *= s
    if n == 0:
        return torch.empty(tuple(size), dtype=torch.float32, device=device)
    first, last = offset // 4, (offset + n - 1) // 4
    stream = _block_normals(torch.arange(first, last + 1, dtype=torch.int64, device=device), seed).reshape(-1)
    start = offset - first * 4
    return stream[start : start + n].reshape(tuple(size))


def philox_normal_traced(seed_offset: Tensor, size: Sequence[int]) -> Tensor:
    """:func:`_philox_normal_ref` with (seed, offset) read from an int64 [2] tensor in tensor
    operations only, so that torch.compile traces it whole (no host read). Float32 ``size``.
    The same numbers (the key schedule and counters are the same int64 arithmetic)."""
    n = math.prod(size)
    device = seed_offset.device
    if n == 0:
        return torch.empty(tuple(size), dtype=torch.float32, device=device)
    seed, offset = seed_offset[0], seed_offset[1]
    first = torch.div(offset, 4, rounding_mode="floor")
    blocks = first + torch.arange((n + 3) // 4 + 1, dtype=torch.int64, device=device)
    stream = _block_normals(blocks, seed).reshape(-1)
    return stream[(offset - 4 * first) + torch.arange(n, device=device)].reshape(tuple(size))


def _block_normals(block: Tensor, seed: int | Tensor) -> Tensor:
    """The four normals [..., 4] of each Philox block index in ``block`` (int64, any shape)."""
    zero = torch.zeros_like(block)
    x, y, z, w = _philox4x32_10([block & M32, block >> 32, zero, zero], seed)
    n0, n1 = _box_muller(x, y)
    n2, n3 = _box_muller(z, w)
    return torch.stack([n0, n1, n2, n3], dim=-1)


def philox_normal_rows(seed: int, keys: Tensor, numel: int) -> Tensor:
    """Row i: ``numel`` normals at stream position ``keys[i] * 4 * ceil(numel / 4)``, i.e.
    ``philox_normal(seed, keys[i] * 4 * ceil(numel / 4), [numel])`` for every key at once
    (float32 [len(keys), numel] on keys' device; pure PyTorch, any device). Keys: int64 >= 0 with
    every row inside the stream [0, 2**62)."""
    seed, blocks = check_seed(seed), -(-numel // 4)
    if keys.dtype != torch.int64 or keys.dim() != 1:
        raise ValueError(f"keys must be int64 [N], got {keys.dtype} of shape {tuple(keys.shape)}")
    if keys.numel() and not (0 <= int(keys.min()) and int(keys.max()) < STREAM_LENGTH // (4 * max(blocks, 1))):
        raise ValueError(f"keys must lie in [0, 2**62 / {4 * max(blocks, 1)}) (rows inside the stream)")
    block = keys[:, None] * blocks + torch.arange(blocks, dtype=torch.int64, device=keys.device)
    return _block_normals(block, seed).reshape(len(keys), 4 * blocks)[:, :numel]


def check_seed(seed: object) -> int:
    """``seed`` as an int if it is an integer in [0, 2**64), else ValueError."""
    value = as_integer(seed)
    if value is None or not 0 <= value < 1 << 64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return value


def check_offset(offset: object, numel: int) -> int:
    """``offset`` as an int if values ``offset .. offset + numel - 1`` lie in the stream
    [0, 2**62), else ValueError."""
    value = as_integer(offset)
    if value is None or not 0 <= value <= STREAM_LENGTH - numel:
        raise ValueError(
            f"offset must be an integer in [0, 2**62 - numel] (numel = {numel}: the values must lie in "
            f"the stream [0, 2**62)), got {offset!r}"
        )
    return value


def _check_size(size: object) -> list[int]:
    """``size`` (an int or a sequence of ints) as a list of non-negative ints, else ValueError."""
    dims = [size] if as_integer(size) is not None else size
    try:
        out = [as_integer(s) for s in dims]  # type: ignore[union-attr]
    except TypeError:
        out = [None]
    if any(s is None or s < 0 for s in out):
        raise ValueError(f"size must be a sequence of non-negative integers, got {size!r}")
    return out  # type: ignore[return-value]


def seed_offset_tensor(seed: object, offset: object, device: torch.device | str) -> Tensor:
    """(seed, offset) as the int64 [2] tensor the kernels read; the seed's 64 bits as signed."""
    seed, offset = check_seed(seed), check_offset(offset, 0)
    signed_seed = seed - (1 << 64) if seed >= (1 << 63) else seed
    return torch.tensor([signed_seed, offset], dtype=torch.int64, device=device)


def philox_normal(
    seed: int,
    offset: int,
    size: Sequence[int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    impl: Impl = "auto",
) -> Tensor:
    """Standard normals ``stream(seed)[offset : offset + prod(size)]`` shaped ``size``.

    Args:
        seed: stream key, an integer ``0 <= seed < 2**64``.
        offset: position of the first value in the stream, an integer with
            ``0 <= offset <= 2**62 - prod(size)``.
        size: output shape (a sequence of integers, or one integer).
        device: output device (default: the current default device).
        dtype: floating output dtype; values are computed in float32 and cast.
        impl: ``"ext"`` the compiled kernel, ``"ref"`` the PyTorch reference, ``"auto"`` the
            kernel when it builds, else the reference.

    Returns:
        Tensor of ``size`` with i.i.d. N(0, 1) values, bit-identical for the same seed and
        offset on every device (the kernels; the reference agrees to within a float32 ulp).
    """
    seed = check_seed(seed)
    size = _check_size(size)
    offset = check_offset(offset, math.prod(size))
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be floating point, got {dtype}")
    device = torch.device(device) if device is not None else torch.empty(0).device
    if use_ext(impl, device):
        out = torch.ops.lightning_genmodels.philox_normal(seed_offset_tensor(seed, offset, device), size)
    else:
        out = _philox_normal_ref(seed, offset, size, device)
    return out.to(dtype)


def _register_fake() -> None:
    @torch.library.register_fake("lightning_genmodels::philox_normal")
    def _(seed_offset: Tensor, size: Sequence[int]) -> Tensor:
        return seed_offset.new_empty(size, dtype=torch.float32)


register_on_load(_register_fake)
