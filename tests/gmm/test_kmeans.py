"""Streamed k-means: draws, k-means++ seeding and Lloyd's iterations against scikit-learn."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from lightning_genmodels.data.idx import read_idx
from lightning_genmodels.gmm.kmeans import (
    greedy_draws, greedy_kmeans_plusplus, kmeans, kmeans_plusplus, lloyd, squared_distances, weighted_draw,
)


def stream(x: torch.Tensor, batch_size: int, weights: torch.Tensor | None = None):
    """A Batches callable over the rows of x in chunks (weights: per-row sample weights)."""

    def passes():
        for i in range(0, x.shape[0], batch_size):
            w = None if weights is None else weights[i : i + batch_size]
            yield x[i : i + batch_size], w

    return passes


def blob_data(seed: int = 0, n: int = 900, k: int = 3, d: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g, dtype=torch.float64) * 10
    labels = torch.arange(n) % k
    return centres[labels] + torch.randn(n, d, generator=g, dtype=torch.float64), centres


def test_squared_distances() -> None:
    x, c = torch.randn(50, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(squared_distances(x, c), torch.cdist(x, c).square())


def test_weighted_draw_is_without_replacement_and_skips_zero_weight() -> None:
    x = torch.arange(40, dtype=torch.float64)[:, None]
    weights = (torch.arange(40) % 2 == 0).double()  # odd rows are "padding"
    for seed in range(20):
        rows, total = weighted_draw(stream(x, 7, weights), 5, torch.Generator().manual_seed(seed))
        values = rows.flatten().tolist()
        assert len(set(values)) == 5 and all(v % 2 == 0 for v in values)
        assert total == 20.0


def test_weighted_draw_follows_the_weights() -> None:
    x = torch.arange(4, dtype=torch.float64)[:, None]
    g = torch.Generator().manual_seed(0)
    weight_fn = lambda rows: rows.flatten() + 1.0  # noqa: E731  p ∝ 1, 2, 3, 4
    draws = [int(weighted_draw(stream(x, 3), 1, g, weight_fn)[0]) for _ in range(4000)]
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, [0.1, 0.2, 0.3, 0.4], atol=0.025)


def test_kmeans_plusplus_seeds_one_point_per_blob() -> None:
    x, centres = blob_data()
    seeds, total = kmeans_plusplus(stream(x, 100), 3, seed=0)
    assert total == 900
    assert all(bool((x == s).all(1).any()) for s in seeds)  # seeds are data rows
    nearest = squared_distances(seeds, centres).argmin(1)
    assert sorted(nearest.tolist()) == [0, 1, 2]


@pytest.mark.parametrize("batch_size", [64, 900])
def test_lloyd_matches_sklearn_from_the_same_start(batch_size: int) -> None:
    x, _ = blob_data(seed=1, k=4)
    start = x[:4].clone()
    ours = lloyd(stream(x, batch_size), start, max_iter=300, tol=1e-4)
    theirs = KMeans(4, init=start.numpy(), n_init=1, algorithm="lloyd", tol=1e-4).fit(x.numpy())
    np.testing.assert_allclose(ours.centers.numpy(), theirs.cluster_centers_, rtol=1e-10, atol=1e-10)
    assert ours.inertia == pytest.approx(theirs.inertia_, rel=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lloyd_on_data_far_from_the_origin_finds_the_blobs(dtype: torch.dtype) -> None:
    """Lloyd's float32 products ||c||² − 2 x·c cancelled for data offset by 3e4 (||c||² ~ 1e10,
    a float32 step of 1e3 against distances of ~100): rows went to other clusters. Now the
    products are taken about the centres' mean: the assignment and centres of the same data at
    the origin, shifted."""
    x, centres = blob_data(seed=2, n=1800)
    start = centres + 1.0
    near = lloyd(stream(x.to(dtype), 256), start, max_iter=100, tol=1e-4)
    far = lloyd(stream((x + 3e4).to(dtype), 256), start + 3e4, max_iter=100, tol=1e-4)
    torch.testing.assert_close(far.centers - 3e4, near.centers, atol=2e-2 if dtype == torch.float32 else 1e-8, rtol=0)
    # (float64: Σ ||x − r||² from the raw moments, ~6e12 here, keeps ~1e-3 of the ~7e3)
    assert far.inertia == pytest.approx(near.inertia, rel=1e-2 if dtype == torch.float32 else 1e-6)


def test_kmeans_finds_the_blobs() -> None:
    x, centres = blob_data(seed=2)
    result = kmeans(stream(x, 128), 3, seed=0)
    assert result.n_iter < 300
    order = squared_distances(result.centers, centres).argmin(1)
    torch.testing.assert_close(result.centers, centres[order], atol=0.2, rtol=0)


@pytest.mark.parametrize("impl", ["ref", "ext"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_greedy_kmeans_plusplus_draws_sklearns_centres(dtype: torch.dtype, impl: str, mnist_dir: Path) -> None:
    """fit(X)'s seeding is scikit-learn's: for an int seed, its very centres, also for the next
    restart of one stream (skip), on blobs (D = 6: a part-used vector) and on 784 pixels."""
    from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus

    blobs, _ = blob_data(seed=5, n=1200, k=12, d=6)
    images = read_idx(mnist_dir / "train-images-idx3-ubyte.gz", 2051)[:3000].reshape(3000, -1).double()
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for x, k, seeds in ((blobs, 12, range(4)), ((images + noise) / 256.0, 30, (0, 1))):
        x = x.to(dtype)
        for seed in seeds:
            rng = np.random.RandomState(seed)
            for restart in range(2):
                theirs = torch.from_numpy(sk_kmeans_plusplus(x.numpy(), k, random_state=rng)[0]).double()
                ours = greedy_kmeans_plusplus(x, k, seed, impl=impl, skip=restart * greedy_draws(k))
                assert torch.equal(ours, theirs), (x.shape, seed, restart)


def test_greedy_kmeans_plusplus_takes_any_int_seed() -> None:
    x, _ = blob_data(seed=1, n=300, k=4, d=3)
    big = greedy_kmeans_plusplus(x, 4, 2**40)
    assert torch.equal(big, greedy_kmeans_plusplus(x, 4, 2**40)) and not torch.equal(big, greedy_kmeans_plusplus(x, 4, 1))
    assert all(bool((x == row).all(1).any()) for row in big)
