"""Streamed, DDP-aware k-means: k-means++ seeding and Lloyd's iterations, one pass each.

The data are never held in memory: every step is a pass of :data:`~.batches.Batches` over the
rank-local rows whose per-rank sums (or per-rank candidates) are combined across ranks, so every
rank ends with the same centres. Rows of sample weight 0 (DDP padding) never count.

- Seeding is k-means++ (Arthur & Vassilvitskii, 2007): the first centre uniform over the rows,
  each next one drawn with probability ∝ D(x)², the squared distance to the nearest centre
  chosen so far. Streamed (:func:`kmeans_plusplus`): one pass per centre. Rows in memory
  (:func:`greedy_kmeans_plusplus`, for ``fit(X)``): scikit-learn's greedy variant, which draws
  2 + ⌊ln K⌋ candidates per centre and keeps the one that lowers the potential Σ D(x)² most,
  with D(x)² kept per row, so each centre costs one pass over the rows against the candidates;
  drawn as scikit-learn draws them, so an int seed gives its centres.
- A streamed draw is weighted reservoir sampling (Efraimidis & Spirakis, 2006): each row gets the key
  E / w with E ~ Exp(1) and the ``n`` smallest keys win; ranks pool their local winners.
- Lloyd's iterations stop when the squared centre shift Σ_k ||c_k' − c_k||² is at most
  ``tol`` times the mean per-feature variance of the data (scikit-learn's tolerance), or after
  ``max_iter`` passes. An empty cluster keeps its previous centre (scikit-learn moves it to a
  far point instead, which needs the rows in memory).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..ops.build import Impl
from ..ops.rows_dot import seeding_distances, sq_norms
from .batches import Batches, all_gather_cat, all_reduce_sum, rank


class KMeansResult(NamedTuple):
    """Centres [K, D] (float64), the inertia of the last assignment pass, Lloyd passes run."""

    centers: Tensor
    inertia: float
    n_iter: int


def squared_distances(x: Tensor, centers: Tensor) -> Tensor:
    """||x_n − c_k||² as [N, K] float64 (clamped at 0 against cancellation)."""
    x64, c = x.double(), centers.double()
    d2 = x64.square().sum(1, keepdim=True) - 2.0 * x64 @ c.T + c.square().sum(1)
    return d2.clamp_min_(0.0)


def _nearest_sq_distance(x: Tensor, centers: Tensor) -> Tensor:
    """min_k ||x_n − c_k||² [N] as float64, the products in x's dtype (a k-means++ weight)."""
    c = centers.to(x.dtype)
    nearest = torch.addmm(c.square().sum(1), x, c.T, alpha=-2.0).min(1).values
    return (nearest + torch.linalg.vector_norm(x, dim=1).square()).clamp_min(0.0).double()


def rank_generator(seed: int) -> torch.Generator:
    """A CPU generator for per-row randomness: ``seed`` on rank 0, distinct on other ranks."""
    return torch.Generator().manual_seed((seed + 1_000_003 * rank()) % 2**63)


def weighted_draw(
    batches: Batches,
    n: int,
    generator: torch.Generator,
    weight_fn: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, float]:
    """Draw ``n`` rows without replacement, row x with probability ∝ s · weight_fn(x), in one pass.

    Args:
        batches: the data (rank-local rows and their sample weights s).
        n: rows to draw.
        generator: CPU generator, different on every rank (:func:`rank_generator`).
        weight_fn: [B, D] -> [B] non-negative weights; None means uniform.

    Returns:
        (rows [n, D] in the data's dtype, total sample weight of the data over all ranks). Where
        fewer than ``n`` rows have positive weight, the remaining rows are arbitrary data rows.
    """
    best_keys: Tensor | None = None
    best_rows: Tensor | None = None
    total = torch.zeros((), dtype=torch.float64)
    for x, s in batches():
        w = torch.ones(x.shape[0], dtype=torch.float64, device=x.device) if s is None else s.double()
        total = total.to(x.device) + w.sum()
        if weight_fn is not None:
            w = w * weight_fn(x).double()
        e = -torch.log1p(-torch.rand(x.shape[0], generator=generator, dtype=torch.float64))  # Exp(1)
        keys = torch.where(w > 0, e.to(x.device) / w, torch.inf)
        if best_keys is not None:
            keys, x = torch.cat([best_keys, keys]), torch.cat([best_rows, x])
        order = torch.argsort(keys)[:n]
        best_keys, best_rows = keys[order], x[order]
    if best_keys is None:
        raise ValueError("the training data loader yielded no batches")
    # Pad to n rows so every rank contributes the same shape to the gather.
    if best_keys.shape[0] < n:
        short = n - best_keys.shape[0]
        best_keys = torch.cat([best_keys, best_keys.new_full((short,), torch.inf)])
        best_rows = torch.cat([best_rows, best_rows[:1].expand(short, -1)])
    keys, rows = all_gather_cat(best_keys), all_gather_cat(best_rows)
    all_reduce_sum(total)
    order = torch.argsort(keys, stable=True)[:n]
    return rows[order], float(total)


def kmeans_plusplus(batches: Batches, n_clusters: int, seed: int) -> tuple[Tensor, float]:
    """k-means++ centres [K, D] (float64), K passes; also returns the total sample weight."""
    g = rank_generator(seed)
    first, total = weighted_draw(batches, 1, g)
    centers = first.double()
    for _ in range(1, n_clusters):
        nxt, _ = weighted_draw(batches, 1, g, lambda x, c=centers: _nearest_sq_distance(x, c))
        centers = torch.cat([centers, nxt.double()])
    return centers, total


def scikit_learn_stream(seed: int, skip: int = 0) -> np.random.RandomState:
    """The random stream of scikit-learn's ``check_random_state(seed)`` (legacy MT19937; a seed
    outside [0, 2³²), which scikit-learn refuses, through a SeedSequence), ``skip`` doubles on."""
    rng = np.random.RandomState(seed) if 0 <= seed < 2**32 else np.random.RandomState(np.random.MT19937(seed % 2**128))
    if skip:
        rng.random_sample(skip)
    return rng


def greedy_draws(n_clusters: int, n_local_trials: int | None = None) -> int:
    """Doubles one :func:`greedy_kmeans_plusplus` draws from its stream: one for the first centre,
    ``trials`` for each next one (restart r of a fit skips r times this)."""
    return 1 + (n_clusters - 1) * (n_local_trials or 2 + int(math.log(n_clusters)))


def shard_sizes(x: Tensor) -> list[int]:
    """Every rank's row count, in rank order (one process: [N])."""
    return [int(v) for v in all_gather_cat(torch.tensor([x.shape[0]], device=x.device)).tolist()]


def rows_at(x: Tensor, ids: np.ndarray, sizes: list[int]) -> Tensor:
    """Rows of the global indices ``ids`` (the shards in rank order are the data), on every rank:
    each row from the rank that holds it."""
    start, n = sum(sizes[: rank()]), x.shape[0]
    out = x.new_zeros(len(ids), x.shape[1])
    mine = np.nonzero((ids >= start) & (ids < start + n))[0]
    if len(mine):
        out[torch.as_tensor(mine, device=x.device)] = x[torch.as_tensor(ids[mine] - start, device=x.device)]
    all_reduce_sum(out)
    return out


def _gather_shards(t: Tensor, sizes: list[int]) -> Tensor:
    """Every rank's [n_r, ...] in rank order (shards of different lengths)."""
    if len(sizes) == 1:
        return t
    buf = t.new_zeros(max(sizes), *t.shape[1:])
    buf[: t.shape[0]] = t
    return torch.cat([p[:s] for p, s in zip(all_gather_cat(buf).split(max(sizes)), sizes)])


def greedy_kmeans_plusplus(
    x: Tensor, n_clusters: int, seed: int, n_local_trials: int | None = None, impl: Impl = "auto", skip: int = 0
) -> Tensor:
    """Greedy k-means++ centres [K, D] (float64) of the rows ``x`` in memory, as scikit-learn's
    ``_kmeans_plusplus`` draws them: the same random stream for an int seed, the same float32
    distances (float64 sums rounded, as its ``euclidean_distances``), potentials and cumulative
    sums by the same NumPy calls, so its centres to the rounding of float64 sums.

    Args:
        x: this rank's rows [n, D], float32 or float64; under DDP the shards in rank order are the
            data (each rank calls this with its own shard).
        n_clusters: K.
        seed: scikit-learn's ``random_state`` (shared by all ranks).
        n_local_trials: candidates per centre; None means 2 + ⌊ln K⌋ (scikit-learn's choice).
        impl: the candidates' distances by the ``seeding_distances`` op (``"auto"``, ``"ref"``,
            ``"ext"``): one read of x per centre (a skinny GEMM ran at a quarter of that on AMD CPUs).
        skip: doubles of the stream to pass over first (restarts: :func:`greedy_draws`).
    """
    rng = scikit_learn_stream(seed, skip)
    trials = n_local_trials or 2 + int(math.log(n_clusters))
    sizes = shard_sizes(x)
    n_all = sum(sizes)
    x_sq = sq_norms(x, impl=impl)
    no_bound = torch.full_like(x_sq, math.inf)  # the op's own float64 potentials go unused
    weight = np.ones(n_all, dtype=torch.empty(0, dtype=x.dtype).numpy().dtype)  # unit weights in x's dtype

    def distances(c: Tensor) -> np.ndarray:
        """[C, n_all] squared distances in x's dtype, C-ordered as scikit-learn's."""
        dist, _ = seeding_distances(x, c, x_sq, no_bound, impl=impl)
        return np.ascontiguousarray(_gather_shards(dist.to(x.dtype), sizes).cpu().numpy().T)

    # scikit-learn's _kmeans_plusplus, step for step (its NumPy calls fix the rounding).
    first = rng.choice(n_all, p=weight / weight.sum())
    centers = [rows_at(x, np.array([first]), sizes)]
    closest = distances(centers[0])  # [1, n_all]
    potential = closest @ weight
    for _ in range(1, n_clusters):
        ids = np.searchsorted(np.cumsum(weight * closest), rng.uniform(size=trials) * potential)
        np.clip(ids, None, n_all - 1, out=ids)
        candidates = rows_at(x, ids, sizes)
        dist = distances(candidates)
        np.minimum(closest, dist, out=dist)
        candidate_potentials = dist @ weight.reshape(-1, 1)
        best = int(np.argmin(candidate_potentials))
        potential, closest = candidate_potentials[best], dist[best]
        centers.append(candidates[best : best + 1])
    return torch.cat(centers).double()


def lloyd(batches: Batches, centers: Tensor, max_iter: int = 300, tol: float = 1e-4) -> KMeansResult:
    """Lloyd's iterations from ``centers`` [K, D], one pass each (tolerance: module docstring)."""
    centers = centers.double()
    k, d = centers.shape
    tol_abs = None
    inertia = torch.zeros((), dtype=torch.float64)
    n_iter = 0
    moments = centers.new_zeros(3, d)  # Σ s, Σ s x, Σ s x² (the first pass: the tolerance, the inertia)
    for n_iter in range(1, max_iter + 1):
        counts = centers.new_zeros(k)
        sums = centers.new_zeros(k, d)
        inertia = centers.new_zeros(())
        # ||x − c_k||² = ||x − r||² − 2 x·e_k + b_k with e_k = c_k − r, b_k = 2 r·e_k + ||e_k||², r the
        # centres' mean: the products x·e_k are of the spread's size, where ||c_k||² − 2 x·c_k of
        # data far from the origin cancelled in float32 (offset 3e4: other clusters)
        r = centers.mean(0)
        e = centers - r
        bias = 2.0 * e @ r + e.square().sum(1)  # [K] float64
        for x, s in batches():
            # Products in the data's dtype (as scikit-learn), batch sums added in float64.
            best, labels = torch.addmm(bias.to(x.dtype), x, e.to(x.dtype).T, alpha=-2.0).min(1)
            assign = torch.nn.functional.one_hot(labels, k).to(x.dtype)  # [B, K]
            if s is None:
                counts += torch.bincount(labels, minlength=k)
                inertia += best.sum(dtype=torch.float64)
            else:
                assign *= s.to(x.dtype)[:, None]
                counts += assign.sum(0, dtype=torch.float64)
                inertia += (best.double() * s.double()).sum()
            sums += (assign.T @ x).double()  # a GEMM: far faster than index_add_ on CPU
            if tol_abs is None:
                w = torch.ones(x.shape[0], dtype=x.dtype, device=x.device) if s is None else s.to(x.dtype)
                x64, w64 = x.double(), w.double()
                moments += torch.stack([w64.sum().expand(d), w64 @ x64, w64 @ x64.square()])
        all_reduce_sum(counts, sums, inertia)
        if tol_abs is None:
            all_reduce_sum(moments)
            n = moments[0].clamp_min(1.0)
            variances = moments[2] / n - (moments[1] / n).square()
            tol_abs = tol * float(variances.mean())
        # Σ s ||x − r||² from the float64 moments
        sum_sq = moments[2].sum() - 2.0 * (moments[1] @ r) + moments[0][0] * r.square().sum()
        inertia = (inertia + sum_sq).clamp_min(0.0)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1e-300)[:, None], centers)
        shift = float((new - centers).square().sum())
        centers = new
        if shift <= tol_abs:
            break
    return KMeansResult(centers, float(inertia), n_iter)


def kmeans(
    batches: Batches, n_clusters: int, seed: int, max_iter: int = 300, tol: float = 1e-4, rows: Tensor | None = None,
    impl: Impl = "auto",
) -> KMeansResult:
    """k-means++ seeding followed by Lloyd's iterations (up to ``max_iter`` passes); the greedy
    seeding of :func:`greedy_kmeans_plusplus` (with ``impl``) when the rank's ``rows`` [n, D] are in
    memory."""
    if rows is not None:
        centers = greedy_kmeans_plusplus(rows, n_clusters, seed, impl=impl)
    else:
        centers, _ = kmeans_plusplus(batches, n_clusters, seed)
    return lloyd(batches, centers, max_iter, tol)
