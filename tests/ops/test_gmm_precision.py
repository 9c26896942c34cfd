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


def _two_blobs(cov: str, n: int = 4000, far: float = 1e3, spread: float = 0.01):
    """Rows at 0 (spread 1) and at ``far`` (spread ``spread``), D = 4, with the true parameters
    (float64) in the layout of ``cov``; and the far blob's rows."""
    g = torch.Generator().manual_seed(0)
    near_rows = torch.randn(n, 4, generator=g, dtype=torch.float64)
    far_rows = far + spread * torch.randn(n, 4, generator=g, dtype=torch.float64)
    mu = torch.tensor([[0.0] * 4, [far] * 4], dtype=torch.float64)
    p = torch.tensor([1.0, 1.0 / spread], dtype=torch.float64)  # 1 / sigma per component
    pc = {
        "full": torch.diag_embed(p[:, None].expand(2, 4)),
        "tied": torch.eye(4, dtype=torch.float64) / spread,
        "diag": p[:, None].expand(2, 4).contiguous(),
        "spherical": p,
    }[cov]
    lw = torch.full((2,), 0.5, dtype=torch.float64).log()
    return torch.cat([near_rows, far_rows]), lw, mu, pc, far_rows


def _far_variances(cov: str, stats: GMMStats) -> torch.Tensor:
    """The far component's variances from the statistics (tied: the pooled ones), as the M-step."""
    nk, sx, sxx, _ = (t.double() for t in stats)
    mean = sx / nk[:, None]
    if cov == "full":
        return (sxx[1] / nk[1] - torch.outer(mean[1], mean[1])).diagonal()
    if cov == "tied":
        return (sxx - (nk[:, None, None] * mean[:, :, None] * mean[:, None, :]).sum(0)).diagonal() / nk.sum()
    if cov == "diag":
        return sxx[1] / nk[1] - mean[1].square()
    return (sxx[1] / nk[1] - mean[1].square().sum()) / 4


@pytest.mark.parametrize("cov", COVARIANCE_TYPES)
def test_variances_of_a_component_far_from_the_origin_keep_their_digits(cov):
    """Raw float32 second moments cancel in sxx / nk - mean^2 where a component's mean lies far
    from the origin for its spread: a component at 1e3 of spread 1e-2 had variances of -7.5e-3 ..
    7.0e-3 where they are 1e-4. Full sums them about each component's mean (gmm_tile.cpp
    tile_second_moments); diag, spherical and tied redo such a call in float64 (gmm.cpp
    raw_moments_cancel), so the float32 op returns the float64 kernel's statistics exactly."""
    x, lw, mu, pc, far_rows = _two_blobs(cov)
    args32 = (lw.float(), mu.float(), pc.float(), cov)
    truth = far_rows.var(0, unbiased=False)
    if cov == "tied":  # pooled over both blobs: (var_near + var_far) / 2
        truth = (x[:4000].var(0, unbiased=False) + truth) / 2
    if cov == "spherical":
        truth = truth.mean()
    for isa in available_cpu_isas():
        with force_cpu_isa(isa):
            stats = gmm_em_stats(x.float(), *args32, impl="ext")
            f64 = gmm_em_stats(*(t.float().double() for t in (x, *args32[:3])), cov, impl="ext")
        torch.testing.assert_close(_far_variances(cov, stats), truth, rtol=1e-3, atol=0, msg=isa)
        if cov != "full":
            for name, a, b in zip(GMMStats._fields, stats, f64):
                assert torch.equal(a, b), (isa, name)


@pytest.mark.parametrize("cov", ["diag", "spherical", "tied"])
def test_float32_statistics_stay_float32_where_nothing_cancels(cov):
    """The float64 redo is for cancelling moments only: rows near the origin for their spread, and a
    batch of the near blob alone under a mixture whose other component is 1e3 away (its nk ~ 0:
    a component this batch barely touches), keep the float32 kernel's statistics, which differ
    from the float64 kernel's in the last digits."""
    x, lw, mu, pc, _ = _two_blobs(cov)
    near = x[:4000]
    cases = [(near, lw, mu, pc)]
    lw2, mu2, pc2 = make_params(5, 4, cov, torch.float64, "cpu", seed=1)
    cases.append((make_x(3000, mu2, seed=1), lw2, mu2, pc2))
    for rows, lwc, muc, pcc in cases:
        stats = gmm_em_stats(rows.float(), lwc.float(), muc.float(), pcc.float(), cov, impl="ext")
        f64 = gmm_em_stats(*(t.float().double() for t in (rows, lwc, muc, pcc)), cov, impl="ext")
        assert not torch.equal(stats.sx, f64.sx)
        for name, a, b in zip(GMMStats._fields, stats, f64):
            assert rel(a, b) < 1e-6, name


def test_float64_redo_in_blocks_sums_every_row_once():
    """The redo converts x in blocks of 8 Mi values (D = 784: 10,700 rows): over 12,000 weighted rows
    it gives the float64 kernel's statistics of the whole (to the rounding of the blocks' sums)."""
    g = torch.Generator().manual_seed(5)
    d = 784
    x = torch.cat([torch.randn(6000, d, generator=g), 1e3 + 0.01 * torch.randn(6000, d, generator=g)])
    weight = torch.rand(12000, generator=g)
    weight[::7] = 0.0
    lw = torch.full((2,), 0.5).log()
    mu = torch.stack([torch.zeros(d), torch.full((d,), 1e3)])
    pc = torch.tensor([[1.0] * d, [100.0] * d])
    stats = gmm_em_stats(x, lw, mu, pc, "diag", weight, impl="ext")
    f64 = gmm_em_stats(x.double(), lw.double(), mu.double(), pc.double(), "diag", weight.double(), impl="ext")
    for name, a, b in zip(GMMStats._fields, stats, f64):
        assert rel(a, b) < 1e-12, (name, rel(a, b))
