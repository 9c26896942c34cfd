"""Initial Gaussian-mixture moments, streamed over the training data (scikit-learn's
``init_params`` meanings).

Each method returns the raw moments of an initial responsibility matrix, summed over all ranks,
which the M-step turns into the starting weights, means and covariances:

- ``kmeans``: one-hot responsibilities of the nearest centre of our streamed k-means
  (k-means++ seeding + Lloyd), computed in one more pass with the final centres.
- ``k-means++``: each component owns exactly its k-means++ seed point (mean = that point,
  covariance = ``reg_covar``), as scikit-learn's ``kmeans_plusplus`` init. With the rows in
  memory (``fit(X)``) the points are scikit-learn's for the same int ``random_state``, restarts
  of ``n_init`` included (one stream, as its), to the rounding of float64 sums.
- ``random``: responsibilities uniform random per row, normalised to sum to 1.
- ``random_from_data``: each component owns one distinct row drawn uniformly; with the rows in
  memory, scikit-learn's rows for the same int ``random_state`` (its ``choice`` without
  replacement, restarts included).

Deviations from scikit-learn: the starting weights are normalised (scikit-learn leaves them at
1/N each for ``k-means++`` and ``random_from_data``), and for those two methods the tied
covariance is ``reg_covar · I`` like the other types (scikit-learn divides the scatter of all N
rows by K there). Every method draws from a seed shared by all ranks, so ranks agree; restart r
draws from seed + r, but for the rows in memory of ``k-means++`` and ``random_from_data`` (one
stream, as scikit-learn's).
"""
from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch
from torch import Tensor

from ..ops.build import Impl
from .batches import Batches, all_reduce_sum
from .em import GMMStats, moments
from .kmeans import (
    greedy_draws, greedy_kmeans_plusplus, kmeans, kmeans_plusplus, rank_generator, rows_at, scikit_learn_stream,
    shard_sizes, squared_distances, weighted_draw,
)

InitParams = Literal["kmeans", "k-means++", "random", "random_from_data"]
INIT_PARAMS: tuple[str, ...] = get_args(InitParams)


class InitMoments(NamedTuple):
    """Moments of the initial responsibilities (sxx about ``centre``), the centres they came from,
    the data's weight. Second moments about a point amid the data (the centres' mean) keep the
    spread that raw ones of data far from the origin lose to cancellation."""

    stats: GMMStats
    centers: Tensor | None  # [K, D] float64, kept as means of components left empty
    n_total: float
    centre: Tensor | None = None  # [D] float64, the point sxx is about (em.m_step's centre); None: raw


def _sum_stats(a: GMMStats | None, b: GMMStats) -> GMMStats:
    return b if a is None else GMMStats(*(u + v for u, v in zip(a, b)))


def _pass_statistics(
    batches: Batches, resp_fn, covariance_type: str, centre: Tensor | None = None
) -> tuple[GMMStats, float]:
    """Σ over one pass of :func:`moments` (sxx about ``centre``) with resp = ``resp_fn(x)``, summed over ranks."""
    acc: GMMStats | None = None
    total = 0.0
    for x, s in batches():
        acc = _sum_stats(acc, moments(x, resp_fn(x), covariance_type, s, centre))
        total += x.shape[0] if s is None else float(s.sum())
    if acc is None:
        raise ValueError("the training data loader yielded no batches")
    n = torch.tensor(total, dtype=torch.float64, device=acc.nk.device)
    all_reduce_sum(acc.nk, acc.sx, acc.sxx, n)
    return acc, float(n)


def _one_per_component(rows: Tensor, covariance_type: str, n_total: float) -> InitMoments:
    """Moments where component k owns exactly row k of ``rows`` [K, D] (float64), sxx about their mean."""
    k, centre = rows.shape[0], rows.mean(0)
    stats = moments(rows, torch.eye(k, dtype=torch.float64, device=rows.device), covariance_type, centre=centre)
    return InitMoments(stats, rows, n_total, centre)


def initial_moments(
    batches: Batches,
    init_params: str,
    n_components: int,
    covariance_type: str,
    seed: int,
    kmeans_max_iter: int = 300,
    kmeans_tol: float = 1e-4,
    rows: Tensor | None = None,
    impl: Impl = "auto",
    restart: int = 0,
) -> InitMoments:
    """Moments of the initial responsibilities of ``init_params`` (module docstring).

    Args:
        batches: the rank-local training data.
        init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``.
        n_components: K.
        covariance_type: the layout of the moments.
        seed: shared by all ranks.
        kmeans_max_iter: Lloyd passes at most (``kmeans``).
        kmeans_tol: Lloyd's relative tolerance (``kmeans``).
        rows: the rank's rows [n, D] when they are in memory (``fit(X)``): the ``kmeans``
            and ``k-means++`` seeding is then scikit-learn's greedy k-means++.
        impl: that seeding's ``seeding_distances`` op (``"auto"``, ``"ref"``, ``"ext"``).
        restart: which of ``n_init`` restarts (module docstring).

    Returns:
        InitMoments, identical on every rank.
    """
    k = n_components
    if rows is not None and init_params in ("k-means++", "random_from_data"):  # scikit-learn's draws
        sizes = shard_sizes(rows)
        n_all, picked = sum(sizes), None
        if init_params == "k-means++":
            picked = greedy_kmeans_plusplus(rows, k, seed, impl=impl, skip=restart * greedy_draws(k))
        elif n_all >= k:  # else the streamed draw below, and the caller's check names the shortfall
            rng = scikit_learn_stream(seed)
            for _ in range(restart + 1):  # its restarts' stream (a permutation's draws have no fixed count)
                ids = rng.choice(n_all, size=k, replace=False)
            picked = rows_at(rows, ids, sizes).double()
        if picked is not None:
            return _one_per_component(picked, covariance_type, float(n_all))
    seed += restart
    if init_params == "kmeans":
        centers = kmeans(batches, k, seed, kmeans_max_iter, kmeans_tol, rows, impl).centers
        one_hot = lambda x: torch.nn.functional.one_hot(  # noqa: E731
            squared_distances(x, centers).argmin(1), k
        ).double()
        centre = centers.mean(0)
        stats, n = _pass_statistics(batches, one_hot, covariance_type, centre)
        return InitMoments(stats, centers, n, centre)
    if init_params == "k-means++":
        centers, n = kmeans_plusplus(batches, k, seed)
        return _one_per_component(centers, covariance_type, n)
    if init_params == "random_from_data":
        rows, n = weighted_draw(batches, k, rank_generator(seed))
        return _one_per_component(rows.double(), covariance_type, n)
    if init_params == "random":
        g = rank_generator(seed)

        def uniform(x: Tensor) -> Tensor:
            r = torch.rand(x.shape[0], k, generator=g, dtype=torch.float64).to(x.device)
            return r / r.sum(1, keepdim=True)

        stats, n = _pass_statistics(batches, uniform, covariance_type)  # each component: the data's spread
        return InitMoments(stats, None, n)
    raise ValueError(f"init_params must be one of {INIT_PARAMS}, got {init_params!r}")
