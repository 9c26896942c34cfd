"""The CPU kernels of every instruction set this machine runs (gmm_simd_<isa>.cpp), forced."""
from __future__ import annotations

import os

import pytest
import torch

from lightning_genmodels.ops.gmm import (
    COVARIANCE_TYPES,
    CPU_ISA_ENV,
    CPU_ISAS,
    _gmm_em_stats_ref,
    _gmm_log_prob_ref,
    available_cpu_isas,
    force_cpu_isa,
    gmm_cpu_isa,
    gmm_em_stats,
    gmm_log_prob,
)
from tests.ops.gmm_cases import DTYPES, assert_stats_close, make_params, make_x, require_isa, sample_inputs


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
    require_isa(isa)
    with force_cpu_isa(isa):
        _assert_a_nan_row_gives_nan("cpu", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("isa", CPU_ISAS)
def test_every_cpu_isa_matches_reference(isa, dtype):
    """Each SIMD path (gmm_simd_<isa>.cpp), forced, against the reference; forcing never falls back."""
    require_isa(isa)
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
    require_isa(isa)
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


@pytest.mark.parametrize("isa", CPU_ISAS)
def test_responsibilities_more_than_87_below_the_best_are_exactly_zero(isa):
    """The float32 exp of the softmaxes gives exactly 0 where a joint lies more than 87 below its
    row's best, and e^gap to float32 accuracy above that: the far component's nk is the sum over
    the kept rows alone (7% less than over all). Unweighted (the fused pass) and weighted (the
    block softmax), diag and spherical."""
    require_isa(isa)
    x = torch.linspace(5.55, 5.75, 2001).float()
    gap = 20.0 * x.double() - 200.0  # joint of the component at 20 minus that of the one at 0
    x = x[(gap + 87.0).abs() > 1e-3]  # none within rounding of the cut
    gap = 20.0 * x.double() - 200.0
    resp = torch.exp(gap) / (1.0 + torch.exp(gap))
    kept = torch.where(gap >= -87.0, resp, 0.0).sum()
    assert resp.sum() > 1.05 * kept
    log_weights, means = torch.log(torch.tensor([0.5, 0.5])), torch.tensor([[0.0], [20.0]])
    with force_cpu_isa(isa):
        for cov, prec_chol in (("diag", torch.ones(2, 1)), ("spherical", torch.ones(2))):
            for weight in (None, torch.ones(len(x))):
                nk = gmm_em_stats(x[:, None], log_weights, means, prec_chol, cov, weight, impl="ext").nk
                torch.testing.assert_close(nk[1], kept, rtol=1e-4, atol=0, msg=f"{cov} weight={weight is not None}")


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
    require_isa(isa)
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
