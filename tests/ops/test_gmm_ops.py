"""gmm_em_stats / gmm_log_prob: the kernels against the reference, scikit-learn, and bad inputs."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_genmodels.ops import load_library
from lightning_genmodels.ops.gmm import (
    COVARIANCE_TYPES,
    CPU_ISA_ENV,
    CPU_ISAS,
    GMMStats,
    _gmm_em_stats_ref,
    _gmm_log_prob_ref,
    available_cpu_isas,
    force_cpu_isa,
    gmm_cpu_isa,
    gmm_em_stats,
    gmm_log_prob,
)
from tests.utils import DEVICES, requires_cuda

DTYPES = [torch.float32, torch.float64]


def make_params(k: int, d: int, covariance_type: str, dtype: torch.dtype, device: str, seed: int = 0, spread=3.0):
    """(log_weights, means, prec_chol) of a valid mixture; prec_chol in scikit-learn's layout."""
    g = torch.Generator().manual_seed(seed)
    log_weights = torch.log_softmax(torch.randn(k, generator=g, dtype=torch.float64), 0)
    means = spread * torch.randn(k, d, generator=g, dtype=torch.float64)

    def upper_prec_chol(n: int) -> torch.Tensor:
        a = 0.3 * torch.randn(n, d, d, generator=g, dtype=torch.float64)
        cov = a @ a.mT + torch.eye(d, dtype=torch.float64) * (0.5 + torch.rand(n, 1, 1, generator=g, dtype=torch.float64))
        chol = torch.linalg.cholesky(cov)  # cov = L L^T, precision = L^-T L^-1 = P P^T, P = L^-T
        eye = torch.eye(d, dtype=torch.float64).expand(n, d, d)
        return torch.linalg.solve_triangular(chol, eye, upper=False).mT

    if covariance_type == "full":
        prec_chol = upper_prec_chol(k)
    elif covariance_type == "tied":
        prec_chol = upper_prec_chol(1)[0]
    elif covariance_type == "diag":
        prec_chol = 0.5 + torch.rand(k, d, generator=g, dtype=torch.float64)
    else:
        prec_chol = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)
    return [t.to(dtype=dtype, device=device).contiguous() for t in (log_weights, means, prec_chol)]


def make_x(n: int, means: torch.Tensor, seed: int, layout: str = "contiguous") -> torch.Tensor:
    """Rows drawn around the means; layout picks a contiguous, transposed or sliced view."""
    g = torch.Generator().manual_seed(seed)
    k, d = means.shape
    labels = torch.randint(0, k, (n,), generator=g)
    x = means.cpu().double()[labels] + torch.randn(n, d, generator=g, dtype=torch.float64)
    x = x.to(dtype=means.dtype, device=means.device)
    if layout == "transposed":
        return x.T.contiguous().T
    if layout == "sliced":
        wide = torch.zeros(n, 2 * d, dtype=x.dtype, device=x.device)
        wide[:, ::2] = x
        return wide[:, ::2]
    return x


def sample_inputs(device: str, dtype: torch.dtype):
    """Argument tuples (x, sample_weight, log_weights, means, prec_chol, covariance_type)."""
    # D <= 64: float32 diag/spherical run along rows at every K (blocks of rows, a partial last one;
    # K = 13, 37, 50 span several groups of components: 16 per group on AVX-512, 10 or 12 below;
    # spherical: the dot form), float64 and tied/full along components (K = 37, 50: several vectors
    # of them); D = 70 the feature-vectorised ones (a masked last vector, and the last tile copied).
    shapes = [(1, 1, 1), (7, 3, 2), (130, 5, 3), (300, 17, 10), (517, 33, 6), (259, 70, 13), (211, 24, 37),
              (150, 20, 50)]
    for covariance_type in COVARIANCE_TYPES:
        for i, (n, d, k) in enumerate(shapes):
            log_weights, means, prec_chol = make_params(k, d, covariance_type, dtype, device, seed=i)
            layout = ["contiguous", "transposed", "sliced"][i % 3]
            x = make_x(n, means, seed=i, layout=layout)
            yield x, None, log_weights, means, prec_chol, covariance_type
            weight = torch.rand(n, dtype=dtype, device=device)
            if i % 2 == 0:  # a zero weight: the row-at-a-time softmax; else the block form, weighted
                weight[::4] = 0.0
            yield x, weight, log_weights, means, prec_chol, covariance_type
        # Overlapping components: every responsibility non-zero (the dense moment path).
        log_weights, means, prec_chol = make_params(10, 40, covariance_type, dtype, device, seed=9, spread=0.05)
        yield make_x(400, means, seed=9), None, log_weights, means, prec_chol, covariance_type
    # Empty x.
    log_weights, means, prec_chol = make_params(3, 4, "diag", dtype, device)
    yield torch.empty(0, 4, dtype=dtype, device=device), None, log_weights, means, prec_chol, "diag"


def tolerances(dtype: torch.dtype) -> dict:
    return {"rtol": 1e-9, "atol": 1e-8} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 2e-3}


def assert_stats_close(ext, ref, dtype: torch.dtype) -> None:
    for name, a, b in zip(GMMStats._fields, ext, ref):
        assert a.dtype == torch.float64, name
        scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
        tol = tolerances(dtype)
        torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["atol"] * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_em_stats_ext_matches_reference(device, dtype):
    for x, weight, log_weights, means, prec_chol, cov in sample_inputs(device, dtype):
        ext = gmm_em_stats(x, log_weights, means, prec_chol, cov, weight, impl="ext")
        ref = gmm_em_stats(x, log_weights, means, prec_chol, cov, weight, impl="ref")
        assert isinstance(ext, GMMStats) and ext.loglik.shape == ()
        assert all(a.shape == b.shape and a.device == x.device for a, b in zip(ext, ref))
        assert_stats_close(ext, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_log_prob_ext_matches_reference(device, dtype):
    for x, _, log_weights, means, prec_chol, cov in sample_inputs(device, dtype):
        ext = gmm_log_prob(x, log_weights, means, prec_chol, cov, impl="ext")
        ref = gmm_log_prob(x, log_weights, means, prec_chol, cov, impl="ref")
        assert ext.dtype == dtype and ext.shape == (x.shape[0], means.shape[0])
        tol = {"rtol": 1e-10, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-3}
        torch.testing.assert_close(ext, ref, **tol)


# --- every CPU instruction set this machine runs ------------------------------------------


def _require_isa(isa: str) -> None:
    if isa not in available_cpu_isas():
        pytest.skip(f"this CPU cannot run the {isa} kernels")


def _assert_a_nan_row_gives_nan(device: str, dtype: torch.dtype) -> None:
    for cov in COVARIANCE_TYPES:
        for k, d in [(10, 20), (60, 20), (5, 70)]:  # float32 rows (float64 components), features
            log_weights, means, prec_chol = make_params(k, d, cov, dtype, device, seed=k)
            x = make_x(300, means, seed=k)
            x[5, 3] = float("nan")
            ext = gmm_em_stats(x, log_weights, means, prec_chol, cov, impl="ext")
            ref = gmm_em_stats(x, log_weights, means, prec_chol, cov, impl="ref")
            label = f"{cov} K={k} D={d}"
            assert torch.isnan(ref.loglik), label
            assert torch.isnan(ext.loglik), f"{label}: loglik {ext.loglik.item()}"
            assert torch.isnan(ext.nk).all(), label


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("isa", CPU_ISAS)
def test_a_nan_row_makes_the_log_likelihood_nan_on_every_path(isa, dtype):
    """A NaN feature makes its row's statistics and the log-likelihood NaN, as the reference's
    logsumexp does (the kernels once summed it as -inf), for every covariance type and shape path."""
    _require_isa(isa)
    with force_cpu_isa(isa):
        _assert_a_nan_row_gives_nan("cpu", dtype)


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_nan_row_makes_the_log_likelihood_nan_on_cuda(dtype):
    _assert_a_nan_row_gives_nan("cuda", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("isa", CPU_ISAS)
def test_every_cpu_isa_matches_reference(isa, dtype):
    """Each SIMD path (gmm_simd_<isa>.cpp), forced, against the reference; forcing never falls back."""
    _require_isa(isa)
    with force_cpu_isa(isa) as used:
        assert used == isa and gmm_cpu_isa() == isa
        for x, weight, log_weights, means, prec_chol, cov in sample_inputs("cpu", dtype):
            ext = gmm_em_stats(x, log_weights, means, prec_chol, cov, weight, impl="ext")
            assert_stats_close(ext, _gmm_em_stats_ref(x, weight, log_weights, means, prec_chol, cov), dtype)
            log_prob = gmm_log_prob(x, log_weights, means, prec_chol, cov, impl="ext")
            tol = {"rtol": 1e-10, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-3}
            torch.testing.assert_close(log_prob, _gmm_log_prob_ref(x, log_weights, means, prec_chol, cov), **tol)


@pytest.mark.parametrize("spread", [0.05, 30.0])
@pytest.mark.parametrize("isa", CPU_ISAS)
def test_block_softmax_sums_the_last_features_and_norms(isa, spread):
    """float32 diag/spherical with D <= 64 (the rows kernels): the block softmax adds the moments of
    a last, at most half-used vector of features (D % W of them: 2, 1, 4, 5, 8 on AVX-512 or AVX2) and
    spherical's norm sums as it writes the responsibilities; the moment pass does the rest. Spread
    0.05 overlaps the components (dense moments), 30 separates them (the sparse pass, which must then
    stop before those features). Unweighted and with positive weights (both the block form)."""
    _require_isa(isa)
    g = torch.Generator().manual_seed(7)
    with force_cpu_isa(isa):
        for d in (50, 33, 20, 5, 24, 4):
            for cov in ("diag", "spherical"):
                log_weights, means, prec_chol = make_params(10, d, cov, torch.float32, "cpu", seed=d, spread=spread)
                x = make_x(700, means, seed=d)
                for weight in (None, 0.5 + torch.rand(700, generator=g)):
                    ext = gmm_em_stats(x, log_weights, means, prec_chol, cov, weight, impl="ext")
                    ref = _gmm_em_stats_ref(x, weight, log_weights, means, prec_chol, cov)
                    assert_stats_close(ext, ref, torch.float32)


def _subnormals_survive() -> bool:
    """Whether float32 arithmetic on this thread and on torch's worker threads keeps subnormals."""
    tiny = torch.finfo(torch.float32).tiny
    one = torch.tensor([tiny], dtype=torch.float32) / 4  # this thread
    many = torch.full((1 << 20,), tiny, dtype=torch.float32) / 4  # parallel: the worker threads too
    return bool(one.item() > 0) and bool((many > 0).all())


@pytest.mark.parametrize("isa", CPU_ISAS)
def test_subnormal_responsibilities_are_flushed_inside_the_op_only(isa):
    """The E-step flushes subnormal floats on its threads (FTZ/DAZ: they had cost a microcode assist
    per vector): responsibilities below FLT_MIN then add nothing, within tolerance of the reference,
    and the caller's float mode comes back after the op, whichever it was."""
    _require_isa(isa)
    g = torch.Generator().manual_seed(3)
    d, n = 4, 4000
    means = torch.zeros(2, d)
    means[1, 0] = 13.0  # the far component's joint is 84 +- 13 below the near one's
    x = torch.randn(n, d, generator=g)
    weight = 10.0 ** -torch.rand(n, generator=g) * 3  # w / sum pushes e^-87..e^-80 below FLT_MIN
    log_weights = torch.log(torch.tensor([0.5, 0.5]))
    for cov in ("diag", "spherical"):
        prec_chol = torch.ones(2, d) if cov == "diag" else torch.ones(2)
        joint = _gmm_log_prob_ref(x.double(), log_weights.double(), means.double(), prec_chol.double(), cov)
        resp = (torch.softmax(joint, 1) * weight.double()[:, None]).float()
        assert int(((resp > 0) & (resp < torch.finfo(torch.float32).tiny)).sum()) > 100  # the case arises
        with force_cpu_isa(isa):
            for user_flush in (False, True):
                assert torch.set_flush_denormal(user_flush)
                try:
                    ext = gmm_em_stats(x, log_weights, means, prec_chol, cov, weight, impl="ext")
                    assert _subnormals_survive() is not user_flush
                finally:
                    torch.set_flush_denormal(False)
                assert_stats_close(ext, _gmm_em_stats_ref(x, weight, log_weights, means, prec_chol, cov), torch.float32)
    assert _subnormals_survive()


def test_cpu_isa_paths_are_distinct_code():
    """Forcing a path changes the code that runs: vector widths sum in different orders, so the
    float32 distances of two paths differ in their last bits (and both match the reference above).
    D > 64: the kernels that vectorise along D (for D <= 64 they run along rows or components and
    sum in the same order on every path)."""
    isas = available_cpu_isas()
    if len(isas) < 2:
        pytest.skip("this CPU runs only one instruction set")
    log_weights, means, prec_chol = make_params(6, 203, "diag", torch.float32, "cpu", seed=4)
    x = make_x(512, means, seed=4)
    outs = {}
    for isa in isas:
        with force_cpu_isa(isa):
            outs[isa] = gmm_log_prob(x, log_weights, means, prec_chol, "diag", impl="ext")
    for a in isas[1:]:
        assert not torch.equal(outs[isas[0]], outs[a]), (isas[0], a)


def test_unknown_or_unsupported_isa_raises():
    with pytest.raises(ValueError, match="avx9"):
        gmm_cpu_isa("avx9")
    args = make_params(2, 3, "diag", torch.float32, "cpu")
    x = torch.randn(5, 3)
    old = os.environ.get(CPU_ISA_ENV)
    os.environ[CPU_ISA_ENV] = "sse9"
    try:
        with pytest.raises(ValueError, match="sse9"):
            gmm_em_stats(x, *args, "diag", impl="ext")
    finally:
        os.environ.pop(CPU_ISA_ENV) if old is None else os.environ.__setitem__(CPU_ISA_ENV, old)
    for isa in set(CPU_ISAS) - set(available_cpu_isas()):
        with pytest.raises(ValueError, match=isa):
            gmm_cpu_isa(isa)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


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
    assert _rel(stats.nk, w64.sum(0, keepdim=True)) < 1e-7
    assert _rel(stats.sx, exact_sx) < 1e-7
    assert _rel(stats.sxx, exact_sxx) < 1e-7
    running = np.add.accumulate((weight[:, None] * x).numpy(), axis=0)[-1]  # float32, row by row
    assert _rel(torch.from_numpy(running).double()[None], exact_sx) > 1e-5


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
            assert _rel(a, b) < 1e-7, (isa, name, _rel(a, b))


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
            assert _rel(a, b) < 1e-6, (isa, name, _rel(a, b))


@pytest.mark.parametrize("device", DEVICES)
def test_zero_weight_rows_are_dropped(device):
    """A row of weight 0 (DDP padding) contributes nothing, whatever its values."""
    for cov in COVARIANCE_TYPES:
        log_weights, means, prec_chol = make_params(4, 6, cov, torch.float64, device)
        x = make_x(50, means, seed=1)
        padded = torch.cat([x, torch.full((3, 6), 1e3, dtype=x.dtype, device=device)])
        weight = torch.cat([torch.ones(50, dtype=x.dtype, device=device), torch.zeros(3, dtype=x.dtype, device=device)])
        for impl in ("ref", "ext"):
            plain = gmm_em_stats(x, log_weights, means, prec_chol, cov, impl=impl)
            masked = gmm_em_stats(padded, log_weights, means, prec_chol, cov, weight, impl=impl)
            for a, b in zip(masked, plain):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("cov", COVARIANCE_TYPES)
def test_statistics_identities(cov):
    """nk sums to the total weight; loglik is the weighted log-sum-exp of gmm_log_prob."""
    log_weights, means, prec_chol = make_params(5, 8, cov, torch.float64, "cpu", seed=3)
    x = make_x(333, means, seed=3)
    weight = torch.rand(333, dtype=torch.float64)
    stats = gmm_em_stats(x, log_weights, means, prec_chol, cov, weight, impl="ext")
    log_prob = gmm_log_prob(x, log_weights, means, prec_chol, cov, impl="ext")
    torch.testing.assert_close(stats.nk.sum(), weight.sum())
    torch.testing.assert_close(stats.loglik, (weight * torch.logsumexp(log_prob, 1)).sum())
    if cov == "tied":
        torch.testing.assert_close(stats.sxx, (x * weight[:, None]).T @ x)


def test_result_does_not_depend_on_thread_count():
    log_weights, means, prec_chol = make_params(10, 30, "diag", torch.float32, "cpu", seed=5, spread=0.3)
    x = make_x(20_000, means, seed=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gmm_em_stats(x, log_weights, means, prec_chol, "diag", impl="ext")
        torch.set_num_threads(2)
        two = gmm_em_stats(x, log_weights, means, prec_chol, "diag", impl="ext")
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_calls_of_changing_shapes_reuse_nothing_stale(dtype):
    """Each thread keeps its tile buffers between calls while the shapes stay the same: calls that
    change D, K and the covariance type in turn, a NaN row in between (its tile copied to the
    zero-padded buffer: 300 rows of 50 features), and the same calls again, bit for bit."""
    cases = [(300, 50, 10, "spherical"), (130, 20, 3, "diag"), (300, 50, 10, "diag"), (77, 70, 13, "full"),
             (300, 50, 10, "spherical"), (45, 5, 2, "tied")]
    first = []
    for rep in range(2):
        for i, (n, d, k, cov) in enumerate(cases):
            log_weights, means, prec_chol = make_params(k, d, cov, dtype, "cpu", seed=i)
            x = make_x(n, means, seed=i)
            bad = x.clone()
            bad[-1, 0] = float("nan")
            assert torch.isnan(gmm_em_stats(bad, log_weights, means, prec_chol, cov, impl="ext").loglik)
            ext = gmm_em_stats(x, log_weights, means, prec_chol, cov, impl="ext")
            assert_stats_close(ext, _gmm_em_stats_ref(x, None, log_weights, means, prec_chol, cov), dtype)
            if rep == 0:
                first.append(ext)
            else:
                assert all(torch.equal(a, b) for a, b in zip(first[i], ext)), (n, d, k, cov)


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(0, 300),
    d=st.integers(1, 90),
    k=st.integers(1, 13),
    cov=st.sampled_from(COVARIANCE_TYPES),
    spread=st.sampled_from([0.0, 0.5, 5.0]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_ext_matches_reference(n, d, k, cov, spread, weighted, seed):
    log_weights, means, prec_chol = make_params(k, d, cov, torch.float64, "cpu", seed=seed, spread=spread)
    x = make_x(n, means, seed=seed) if n else torch.empty(0, d, dtype=torch.float64)
    weight = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) if weighted else None
    ext = gmm_em_stats(x, log_weights, means, prec_chol, cov, weight, impl="ext")
    ref = _gmm_em_stats_ref(x, weight, log_weights, means, prec_chol, cov)
    assert_stats_close(ext, ref, torch.float64)
    log_prob = gmm_log_prob(x, log_weights, means, prec_chol, cov, impl="ext")
    torch.testing.assert_close(log_prob, _gmm_log_prob_ref(x, log_weights, means, prec_chol, cov), rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("cov", COVARIANCE_TYPES)
def test_log_prob_matches_sklearn_score_samples(cov):
    mixture = pytest.importorskip("sklearn.mixture")
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.normal(size=(150, 6)) * (1 + i) + 4 * i for i in range(3)])
    gm = mixture.GaussianMixture(3, covariance_type=cov, random_state=0).fit(data)
    params = [torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in (np.log(gm.weights_), gm.means_, gm.precisions_cholesky_)]
    for impl in ("ref", "ext"):
        log_prob = gmm_log_prob(torch.from_numpy(data), *params, cov, impl=impl)
        np.testing.assert_allclose(torch.logsumexp(log_prob, 1).numpy(), gm.score_samples(data), rtol=1e-10, atol=1e-10)
        stats = gmm_em_stats(torch.from_numpy(data), *params, cov, impl=impl)
        np.testing.assert_allclose(stats.loglik.item() / len(data), gm.score(data), rtol=1e-10)
        resp = np.exp(gm._estimate_log_prob_resp(data)[1])
        np.testing.assert_allclose(stats.nk.numpy(), resp.sum(0), rtol=1e-9)
        np.testing.assert_allclose(stats.sx.numpy(), resp.T @ data, rtol=1e-9, atol=1e-9)


def test_opcheck():
    load_library()
    for args in sample_inputs("cpu", torch.float64):
        x, weight, log_weights, means, prec_chol, cov = args
        if x.shape[0] > 200:
            continue  # opcheck runs each case several times; the small ones cover the schema
        torch.library.opcheck(torch.ops.lightning_genmodels.gmm_em_stats.default, args)
        torch.library.opcheck(torch.ops.lightning_genmodels.gmm_log_prob.default, (x, log_weights, means, prec_chol, cov))


def test_works_under_torch_compile():
    load_library()
    log_weights, means, prec_chol = make_params(3, 4, "diag", torch.float32, "cpu")
    x = make_x(64, means, seed=0)

    def mean_loglik(x: torch.Tensor) -> torch.Tensor:
        nk, sx, sxx, loglik = torch.ops.lightning_genmodels.gmm_em_stats(x, None, log_weights, means, prec_chol, "diag")
        return loglik / nk.sum()

    compiled = torch.compile(mean_loglik, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), mean_loglik(x))


def _bad_cases():
    lw, mu, pc = make_params(3, 4, "diag", torch.float32, "cpu")
    x = torch.randn(10, 4)
    ok = {"x": x, "log_weights": lw, "means": mu, "prec_chol": pc, "covariance_type": "diag"}
    return [
        ({"covariance_type": "diagonal"}, ValueError, "covariance_type"),
        ({"x": torch.randn(10)}, ValueError, "x"),
        ({"x": torch.randn(10, 4, dtype=torch.float16)}, TypeError, "x"),
        ({"x": torch.randn(10, 4).long()}, TypeError, "x"),
        ({"log_weights": lw[None]}, ValueError, "log_weights"),
        ({"means": mu[:, :3]}, ValueError, "means"),
        ({"prec_chol": pc[0]}, ValueError, "prec_chol"),
        ({"prec_chol": torch.ones(3, 4, 4), "covariance_type": "tied"}, ValueError, "prec_chol"),
        ({"means": mu.double()}, TypeError, "means"),
        ({"prec_chol": pc.double()}, TypeError, "prec_chol"),
        ({"sample_weight": torch.ones(9)}, ValueError, "sample_weight"),
        ({"sample_weight": torch.ones(10, dtype=torch.float64)}, TypeError, "sample_weight"),
    ], ok


BAD_CASES, OK_ARGS = _bad_cases()


@pytest.mark.parametrize("impl", ["ref", "ext"])
@pytest.mark.parametrize("change, error, match", BAD_CASES)
def test_bad_arguments_raise_clear_errors(impl, change, error, match):
    args = {**OK_ARGS, **change}
    with pytest.raises(error, match=match):
        gmm_em_stats(**args, impl=impl)
    if "sample_weight" not in change:
        with pytest.raises(error, match=match):
            gmm_log_prob(**args, impl=impl)


@pytest.mark.parametrize("change, error, match", BAD_CASES)
def test_kernels_check_their_arguments(change, error, match):
    """The compiled ops called directly (no Python checks) raise the same kinds of errors."""
    load_library()
    a = {"sample_weight": None, **OK_ARGS, **change}
    op = torch.ops.lightning_genmodels
    with pytest.raises(error, match=match):
        op.gmm_em_stats(a["x"], a["sample_weight"], a["log_weights"], a["means"], a["prec_chol"], a["covariance_type"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("impl", ["ref", "ext"])
def test_mixed_devices_raise(impl):
    args = {**OK_ARGS, "means": OK_ARGS["means"].cuda()}
    with pytest.raises(ValueError, match="means"):
        gmm_em_stats(**args, impl=impl)


def test_invalid_impl_raises():
    with pytest.raises(ValueError, match="impl"):
        gmm_log_prob(**OK_ARGS, impl="fast")



# --- CUDA: the paths small CPU-sized tests would not reach (run once a GPU is there) -------


@requires_cuda
@pytest.mark.parametrize("k", [5, 70])
@pytest.mark.parametrize("cov", COVARIANCE_TYPES)
def test_cuda_multi_chunk_matches_reference(cov, k, monkeypatch):
    """LGM_GMM_CUDA_CHUNK_ROWS caps the chunk so that 1000 rows take 7 chunks (K = 70: the GEMM
    design of diag/spherical)."""
    monkeypatch.setenv("LGM_GMM_CUDA_CHUNK_ROWS", "150")
    log_weights, means, prec_chol = make_params(k, 9, cov, torch.float64, "cuda", seed=2)
    x = make_x(1000, means, seed=2)
    weight = torch.rand(1000, dtype=torch.float64, device="cuda")
    ext = gmm_em_stats(x, log_weights, means, prec_chol, cov, weight, impl="ext")
    assert_stats_close(ext, _gmm_em_stats_ref(x, weight, log_weights, means, prec_chol, cov), torch.float64)
    log_prob = gmm_log_prob(x, log_weights, means, prec_chol, cov, impl="ext")
    torch.testing.assert_close(log_prob, _gmm_log_prob_ref(x, log_weights, means, prec_chol, cov), rtol=1e-10, atol=1e-9)


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_many_components_and_features(dtype):
    """K >= 1024 and D >= 128 (the --large shape, fewer rows: the GEMM design), with a row stride
    larger than D."""
    log_weights, means, prec_chol = make_params(1024, 128, "diag", dtype, "cuda", seed=3, spread=0.5)
    x = make_x(3000, means, seed=3)
    wide = torch.zeros(3000, 200, dtype=dtype, device="cuda")
    wide[:, :128] = x
    strided = wide[:, :128]
    assert strided.stride(0) == 200
    ext = gmm_em_stats(strided, log_weights, means, prec_chol, "diag", impl="ext")
    assert_stats_close(ext, _gmm_em_stats_ref(x, None, log_weights, means, prec_chol, "diag"), dtype)


@requires_cuda
def test_cuda_non_default_stream_and_determinism():
    log_weights, means, prec_chol = make_params(12, 40, "full", torch.float32, "cuda", seed=6)
    x = make_x(5000, means, seed=6)
    first = gmm_em_stats(x, log_weights, means, prec_chol, "full", impl="ext")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        on_stream = gmm_em_stats(x, log_weights, means, prec_chol, "full", impl="ext")
    torch.cuda.current_stream().wait_stream(stream)
    for a, b in zip(first, on_stream):
        assert torch.equal(a, b)  # run-to-run bitwise determinism, on any stream


@requires_cuda
def test_cuda_opcheck_and_compile():
    load_library()
    for args in sample_inputs("cuda", torch.float64):
        x, weight, log_weights, means, prec_chol, cov = args
        if x.shape[0] > 200:
            continue
        torch.library.opcheck(torch.ops.lightning_genmodels.gmm_em_stats.default, args)
        torch.library.opcheck(torch.ops.lightning_genmodels.gmm_log_prob.default, (x, log_weights, means, prec_chol, cov))
    log_weights, means, prec_chol = make_params(3, 4, "diag", torch.float32, "cuda")
    x = make_x(64, means, seed=0)

    def mean_loglik(x: torch.Tensor) -> torch.Tensor:
        nk, sx, sxx, loglik = torch.ops.lightning_genmodels.gmm_em_stats(x, None, log_weights, means, prec_chol, "diag")
        return loglik / nk.sum()

    compiled = torch.compile(mean_loglik, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), mean_loglik(x))
