"""float32 kernels against float64 sums at a million rows, and spherical far from the origin."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_genmodels.ops.gmm import (
    COVARIANCE_TYPES,
    GMMStats,
    _gmm_em_stats_ref,
    _gmm_log_prob_ref,
    available_cpu_isas,
    force_cpu_isa,
    gmm_em_stats,
    gmm_log_prob,
)
from tests.ops.gmm_cases import make_params, make_x, rel


@pytest.mark.parametrize("cov", COVARIANCE_TYPES)
def test_float32_statistics_within_1e7_of_float64_at_a_million_rows(cov):
    """K = 1 makes the responsibility the row weight exactly, so the statistics are plain weighted
    sums: float32 partial sums over tiles of 128 to 512 rows, added in float64 (and tied/full
    second moments by float32 GEMM per tile), stay within 1e-7 of exact float64 sums at N = 1e6
    (issue 7). The bound has teeth: a float32 running sum of the same products misses it by ~1000x."""
    n, d = 1_000_000, 3
    g = torch.Generator().manual_seed(11)
    x = (5.0 + torch.randn(n, d, generator=g, dtype=torch.float64)).float()
    weight = torch.rand(n, generator=g, dtype=torch.float64).float()
    log_weights, means, prec_chol = make_params(1, d, cov, torch.float32, "cpu", seed=11)
    stats = gmm_em_stats(x, log_weights, means, prec_chol, cov, weight, impl="ext")
    x64, w64 = x.double(), weight.double()
    exact_sx = (w64[:, None] * x64).sum(0, keepdim=True)
    exact_sxx = {
        "full": ((x64 * w64[:, None]).T @ x64)[None],
        "tied": (x64 * w64[:, None]).T @ x64,
        "diag": (w64[:, None] * x64.square()).sum(0, keepdim=True),
        "spherical": (w64 * x64.square().sum(1)).sum(0, keepdim=True),
    }[cov]
    assert rel(stats.nk, w64.sum(0, keepdim=True)) < 1e-7
    assert rel(stats.sx, exact_sx) < 1e-7
    assert rel(stats.sxx, exact_sxx) < 1e-7
    running = np.add.accumulate((weight[:, None] * x).numpy(), axis=0)[-1]  # float32, row by row
    assert rel(torch.from_numpy(running).double()[None], exact_sx) > 1e-5


@pytest.mark.parametrize("cov, k", [("diag", 10), ("spherical", 10), ("spherical", 37)])
def test_float32_kernel_within_1e7_of_float64_reference_at_a_million_rows(cov, k):
    """Dense responsibilities (D = 50, overlapping components), every path this CPU runs: float32
    distances, exp and tile sums, against the reference on the same values in float64. Spherical
    K = 37 takes the dot form and its float32 joint-probability softmax on every instruction set."""
    log_weights, means, prec_chol = make_params(k, 50, cov, torch.float32, "cpu", seed=7, spread=0.3)
    x = make_x(1_000_000, means, seed=7)
    ref = _gmm_em_stats_ref(x.double(), None, log_weights.double(), means.double(), prec_chol.double(), cov)
    for isa in available_cpu_isas():
        with force_cpu_isa(isa):
            ext = gmm_em_stats(x, log_weights, means, prec_chol, cov, impl="ext")
        assert (ext.nk > 1).all(), "every component must take some rows"
        for name, a, b in zip(GMMStats._fields, ext, ref):
            assert rel(a, b) < 1e-7, (isa, name, rel(a, b))


def test_spherical_far_from_the_origin_keeps_its_digits():
    """float32 spherical distances with D <= 64 take the dot form
    p^2 (||y||^2 + ||m||^2 - 2 y.m) on y = x - c (gmm_kernels.h Plan::centre): rows 1e4 from the
    origin lose nothing to cancellation (uncentred, the error would be ~1e-7 ||x||^2 p^2 ~ 100)."""
    lw, mu, pc = make_params(37, 20, "spherical", torch.float64, "cpu", seed=3)
    mu = mu + 1e4
    x = make_x(3000, mu, seed=3).float()
    lw, mu, pc = lw.float(), mu.float(), pc.float()
    args64 = (lw.double(), mu.double(), pc.double(), "spherical")
    ref_lp = _gmm_log_prob_ref(x.double(), *args64)
    ref = _gmm_em_stats_ref(x.double(), None, *args64)
    for isa in available_cpu_isas():
        with force_cpu_isa(isa):
            lp = gmm_log_prob(x, lw, mu, pc, "spherical", impl="ext")
            stats = gmm_em_stats(x, lw, mu, pc, "spherical", impl="ext")
        assert (lp.double() - ref_lp).abs().max().item() < 1e-3, isa
        for name, a, b in zip(GMMStats._fields, stats, ref):
            assert rel(a, b) < 1e-6, (isa, name, rel(a, b))


def test_full_covariances_of_a_component_far_from_the_origin_keep_their_digits():
    """Full second moments are summed about each component's mean (gmm_tile.cpp
    tile_second_moments): raw float32 sums gave a component at 1e3 of spread 1e-2 variances of
    -7.5e-3 .. 7.0e-3 where they are 1e-4 (sxx / nk - mean mean^T cancels)."""
    g = torch.Generator().manual_seed(0)
    near = torch.randn(4000, 4, generator=g, dtype=torch.float64)
    far = 1e3 + 0.01 * torch.randn(4000, 4, generator=g, dtype=torch.float64)
    x = torch.cat([near, far])
    mu = torch.tensor([[0.0] * 4, [1e3] * 4], dtype=torch.float64)
    pc = torch.diag_embed(torch.tensor([[1.0] * 4, [100.0] * 4], dtype=torch.float64))
    lw = torch.full((2,), 0.5, dtype=torch.float64).log()
    truth = far.var(0, unbiased=False)
    for isa in available_cpu_isas():
        with force_cpu_isa(isa):
            nk, sx, sxx, _ = gmm_em_stats(x.float(), lw.float(), mu.float(), pc.float(), "full", impl="ext")
        mean = sx[1] / nk[1]
        cov = (sxx[1] / nk[1] - torch.outer(mean, mean)).diagonal()
        torch.testing.assert_close(cov, truth, rtol=1e-3, atol=0, msg=isa)
