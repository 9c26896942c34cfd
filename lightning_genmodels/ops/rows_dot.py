"""x cᵀ for a few rows c [C, D]: the k-means++ candidates' distances (gmm/kmeans.py).

The CPU kernel reads x once and forms the C dot products of each row in x's dtype (float64
totals); a GEMM library's skinny-matrix path took 4x as long as reading x (MKL on an AMD EPYC).
Other devices take the reference, a matrix multiply, which their BLAS does well.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .build import Impl, register_on_load, use_ext


def _rows_dot_ref(x: Tensor, c: Tensor) -> Tensor:
    return (x @ c.T).double()


def rows_dot(x: Tensor, c: Tensor, *, impl: Impl = "auto") -> Tensor:
    """x [N, D] times c [C, D] transposed: float64 [N, C], products and sums in x's dtype.

    ``impl="ext"`` asks for the CPU kernel and raises for tensors on another device.
    """
    if x.dim() != 2 or c.dim() != 2 or x.shape[1] != c.shape[1]:
        raise ValueError(f"rows_dot: x [N, D] and c [C, D] must be 2-D with the same D, got {tuple(x.shape)} and "
                         f"{tuple(c.shape)}")
    if x.dtype != c.dtype or x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"rows_dot: x and c must both be float32 or float64, got {x.dtype} and {c.dtype}")
    if x.device != c.device:
        raise ValueError(f"rows_dot: x is on {x.device}, c on {c.device}")
    if x.device.type != "cpu":
        if impl == "ext":
            raise ValueError(f"rows_dot: the kernel is CPU only, got tensors on {x.device}")
        return _rows_dot_ref(x, c)
    if use_ext(impl, x.device):
        return torch.ops.lightning_genmodels.rows_dot(x, c)
    return _rows_dot_ref(x, c)


def _register_fake() -> None:
    @torch.library.register_fake("lightning_genmodels::rows_dot")
    def _(x, c):
        return x.new_empty((x.shape[0], c.shape[0]), dtype=torch.float64)


register_on_load(_register_fake)
