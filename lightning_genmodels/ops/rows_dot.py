"""x cᵀ for a few rows c [C, D]: the k-means++ candidates' distances (gmm/kmeans.py).

The CPU kernel reads x once and forms the C dot products of each row in x's dtype (float64
totals); a GEMM library's skinny-matrix path took 4x as long as reading x (MKL on an AMD EPYC).
``seeding_distances`` turns them into squared distances and the candidates' potentials in the
same pass, from the rows' norms of ``sq_norms`` (one read of x), with its dot products in float64
(exact products of float32 values): rounded to float32 they are scikit-learn's distances, which
it computes in float64 for float32 data. Other devices take the reference, a matrix multiply,
which their BLAS does well.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .build import Impl, register_on_load, use_ext


def _rows_dot_ref(x: Tensor, c: Tensor) -> Tensor:
    return (x @ c.T).double()


def _wide_dot_ref(x: Tensor, c: Tensor) -> Tensor:
    """x cᵀ in float64. On the CPU float32 rows go through one float64 buffer of 1024 rows: a
    float64 copy of all the MNIST pixels took 190 ms (its page faults), the buffered pass 40 ms."""
    c64 = c.double().T
    if x.dtype == torch.float64 or x.device.type != "cpu":
        return x.double() @ c64
    out = x.new_empty((x.shape[0], c.shape[0]), dtype=torch.float64)
    buf = x.new_empty((max(1, min(1024, x.shape[0])), x.shape[1]), dtype=torch.float64)
    for i in range(0, x.shape[0], buf.shape[0]):
        block = buf[: min(buf.shape[0], x.shape[0] - i)]
        torch.mm(block.copy_(x[i : i + block.shape[0]]), c64, out=out[i : i + block.shape[0]])
    return out


def _seeding_distances_ref(x: Tensor, c: Tensor, c_sq: Tensor, x_sq: Tensor, closest: Tensor) -> tuple[Tensor, Tensor]:
    dist = (c_sq - 2.0 * _wide_dot_ref(x, c)).add_(x_sq[:, None]).clamp_min_(0.0)
    return dist, torch.minimum(closest[:, None], dist).sum(0)


def _sq_norms_ref(x: Tensor) -> Tensor:
    return x.double().square().sum(1)


def _check_rows(op: str, x: Tensor, c: Tensor | None, impl: Impl, others: tuple[Tensor, ...] = ()) -> bool:
    """Checks x [N, D] and c [C, D] (if given); True where the CPU kernel runs (``others``: the
    op's other inputs, for the gradient check of ``use_ext``)."""
    if c is None:
        if x.dim() != 2:
            raise ValueError(f"{op}: x must be 2-D [N, D], got {tuple(x.shape)}")
        c = x[:0]
    if x.dim() != 2 or c.dim() != 2 or x.shape[1] != c.shape[1]:
        raise ValueError(f"{op}: x [N, D] and c [C, D] must be 2-D with the same D, got {tuple(x.shape)} and "
                         f"{tuple(c.shape)}")
    if x.dtype != c.dtype or x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: x and c must both be float32 or float64, got {x.dtype} and {c.dtype}")
    if x.device != c.device:
        raise ValueError(f"{op}: x is on {x.device}, c on {c.device}")
    if x.device.type != "cpu":
        if impl == "ext":
            raise ValueError(f"{op}: the kernel is CPU only, got tensors on {x.device}")
        return False
    return use_ext(impl, x.device, (x, c, *others))


def rows_dot(x: Tensor, c: Tensor, *, impl: Impl = "auto") -> Tensor:
    """x [N, D] times c [C, D] transposed: float64 [N, C], products and sums in x's dtype.

    ``impl="ext"`` asks for the CPU kernel and raises for tensors on another device.
    """
    if _check_rows("rows_dot", x, c, impl):
        return torch.ops.lightning_genmodels.rows_dot(x, c)
    return _rows_dot_ref(x, c)


def sq_norms(x: Tensor, *, impl: Impl = "auto") -> Tensor:
    """||x_n||² of the rows x [N, D] (float32 or float64): float64 [N] from float64 squares."""
    if _check_rows("sq_norms", x, None, impl):
        return torch.ops.lightning_genmodels.sq_norms(x)
    return _sq_norms_ref(x)


def seeding_distances(x: Tensor, c: Tensor, x_sq: Tensor, closest: Tensor, *, impl: Impl = "auto") -> tuple[Tensor, Tensor]:
    """One step of the greedy k-means++ seeding, in one read of x.

    Args:
        x: rows [N, D], float32 or float64.
        c: candidate centres [C, D], x's dtype.
        x_sq: ||x_n||² [N], float64 (:func:`sq_norms`).
        closest: each row's squared distance to its nearest centre so far [N], float64 (inf: none).

    Returns:
        dist [N, C] float64, max(0, ||c||² − 2 x·c + ||x||²) with x·c from float64 products
        summed in float64; and the potentials [C], Σ_n min(closest_n, dist_nc), float64.
    """
    kernel = _check_rows("seeding_distances", x, c, impl, (x_sq, closest))
    n = x.shape[0]
    for name, t in (("x_sq", x_sq), ("closest", closest)):
        if t.shape != (n,) or t.dtype != torch.float64 or t.device != x.device:
            raise ValueError(f"seeding_distances: {name} must be float64 [{n}] on {x.device}, got {t.dtype} "
                             f"{list(t.shape)} on {t.device}")
    c_sq = c.double().square().sum(1)
    if kernel:
        return tuple(torch.ops.lightning_genmodels.seeding_distances(x, c, c_sq, x_sq, closest))
    return _seeding_distances_ref(x, c, c_sq, x_sq, closest)


def _register_fake() -> None:
    @torch.library.register_fake("lightning_genmodels::rows_dot")
    def _(x, c):
        return x.new_empty((x.shape[0], c.shape[0]), dtype=torch.float64)

    @torch.library.register_fake("lightning_genmodels::sq_norms")
    def _(x):
        return x.new_empty((x.shape[0],), dtype=torch.float64)

    @torch.library.register_fake("lightning_genmodels::seeding_distances")
    def _(x, c, c_sq, x_sq, closest):
        return x.new_empty((x.shape[0], c.shape[0]), dtype=torch.float64), x.new_empty((c.shape[0],), dtype=torch.float64)


register_on_load(_register_fake)
