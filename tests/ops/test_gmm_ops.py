"""gmm_em_stats / gmm_log_prob: the kernels against the reference, scikit-learn, and bad inputs.
The instruction-set paths are in test_gmm_isa.py, float32 precision at scale in
test_gmm_precision.py, the CUDA-only paths in test_gmm_cuda.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_genmodels.ops import load_library
from lightning_genmodels.ops.gmm import (
    COVARIANCE_TYPES,
    GMMStats,
    _gmm_em_stats_ref,
    _gmm_log_prob_ref,
    gmm_em_stats,
    gmm_log_prob,
    gmm_m_step,
)
from tests.ops.gmm_cases import DTYPES, assert_compiles, assert_stats_close, make_params, make_x, sample_inputs
from tests.utils import DEVICES


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
    assert_compiles("cpu")


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


def test_raw_kernel_checks_sample_weight_values():
    load_library()
    a = {**OK_ARGS}
    for bad in (-1.0, float("nan"), float("inf")):
        w = torch.ones(10)
        w[3] = bad
        with pytest.raises(ValueError, match="sample_weight must be finite and >= 0, got .* at row 3"):
            torch.ops.lightning_genmodels.gmm_em_stats(a["x"], w, a["log_weights"], a["means"], a["prec_chol"], "diag")


@pytest.mark.parametrize("impl", ["ref", "ext"])
def test_m_step_rejects_an_unknown_covariance_type(impl):
    stats = gmm_em_stats(**{**OK_ARGS, "covariance_type": "spherical", "prec_chol": torch.ones(3)}, impl="ref")
    for bad in ("diagonal", "Full", None):
        with pytest.raises(ValueError, match="covariance_type must be one of"):
            gmm_m_step(stats, bad, 1e-6, 1e-7, impl=impl)


def test_public_functions_compile_whole():
    """The Python wrappers, not only the raw ops, trace without a graph break (fullgraph)."""
    from lightning_genmodels.ops import rows_dot

    load_library()
    lw, mu, pc = OK_ARGS["log_weights"], OK_ARGS["means"], OK_ARGS["prec_chol"]
    x, w = OK_ARGS["x"], torch.rand(10)
    calls = {
        "log_prob": lambda x: gmm_log_prob(x, lw, mu, pc, "diag"),
        "em_stats": lambda x: gmm_em_stats(x, lw, mu, pc, "diag", w).nk,
        "rows_dot": lambda x: rows_dot(x, mu),
    }
    for name, fn in calls.items():
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(fn, backend="eager", fullgraph=True)(x), fn(x), msg=name)


@pytest.mark.parametrize("impl", ["ref", "ext"])
def test_compiled_calls_still_check_sample_weight(impl):
    """Under torch.compile the host check cannot raise; a check runs in the graph instead (with
    impl="ref" a negative weight gave a negative nk, a NaN weight NaN statistics)."""
    lw, mu, pc, x = OK_ARGS["log_weights"], OK_ARGS["means"], OK_ARGS["prec_chol"], OK_ARGS["x"]
    fn = torch.compile(lambda x, w: gmm_em_stats(x, lw, mu, pc, "diag", w, impl=impl).nk, fullgraph=True)
    n = x.shape[0]
    torch.testing.assert_close(fn(x, torch.ones(n)), gmm_em_stats(x, lw, mu, pc, "diag", torch.ones(n), impl=impl).nk)
    for bad in (-torch.ones(n), torch.full((n,), float("nan"))):
        with pytest.raises(RuntimeError, match="sample_weight must be finite and >= 0"):
            fn(x, bad)


@pytest.mark.parametrize("impl", ["auto", "ext"])
def test_gradients_come_from_the_reference_or_an_error(impl):
    """The kernels have no backward: "auto" differentiates through the reference, "ext" says so."""
    from lightning_genmodels.ops import rows_dot

    lw, pc, x = OK_ARGS["log_weights"], OK_ARGS["prec_chol"], OK_ARGS["x"]
    mu = OK_ARGS["means"].clone().requires_grad_()
    calls = [lambda: gmm_log_prob(x, lw, mu, pc, "diag", impl=impl).sum(),
             lambda: gmm_em_stats(x, lw, mu, pc, "diag", impl=impl).loglik,
             lambda: rows_dot(x, mu, impl=impl).sum()]
    for call in calls:
        if impl == "ext":
            with pytest.raises(ValueError, match="no backward"):
                call()
            with torch.no_grad():
                call()  # no grad mode: the kernel runs
        else:
            mu.grad = None
            call().backward()
            assert mu.grad is not None and torch.isfinite(mu.grad).all()



@pytest.mark.parametrize("impl", ["auto", "ext"])
def test_forward_mode_derivatives_come_from_the_reference_or_an_error(impl):
    """torch.func.jvp: "auto" takes the reference, "ext" raises (the kernels dropped the tangent:
    a jvp of zeros, silently)."""
    from lightning_genmodels.ops import rows_dot

    lw, mu, pc, x = (OK_ARGS[k].double() for k in ("log_weights", "means", "prec_chol", "x"))
    calls = [lambda m, impl: gmm_log_prob(x, lw, m, pc, "diag", impl=impl),
             lambda m, impl: gmm_em_stats(x, lw, m, pc, "diag", impl=impl).loglik,
             lambda m, impl: rows_dot(x, m, impl=impl)]
    tangent = torch.randn_like(mu)
    for call in calls:
        jvp = lambda impl: torch.func.jvp(lambda m: call(m, impl), (mu,), (tangent,))[1]  # noqa: E731
        if impl == "ext":
            with pytest.raises(ValueError, match="no backward .* or carries a tangent"):
                jvp("ext")
        else:
            want = jvp("ref")
            assert want.abs().max() > 0
            torch.testing.assert_close(jvp("auto"), want, rtol=0, atol=0)


def test_float32_spherical_with_tight_components_keeps_its_digits():
    """sigma << the spread of the means: the float32 dot form p^2 (||y||^2 + ||m||^2 - 2 y.m)
    cancelled to 2.9e-3 per row of log-likelihood here; the distance kernels keep diag's 1e-6."""
    g = torch.Generator().manual_seed(0)
    k, d, n = 3, 4, 1000
    mu = torch.randn(k, d, generator=g)
    x = mu[torch.arange(n) % k] + 1e-3 * torch.randn(n, d, generator=g)
    lw = torch.full((k,), -float(np.log(k)))
    pc = torch.full((k,), 1e3)
    ext = gmm_em_stats(x, lw, mu, pc, "spherical", impl="ext")
    exact = gmm_em_stats(x.double(), lw.double(), mu.double(), pc.double(), "spherical", impl="ref")
    assert abs(ext.loglik.item() - exact.loglik.item()) / n < 1e-5
    joint = gmm_log_prob(x, lw, mu, pc, "spherical", impl="ext").double()
    want = gmm_log_prob(x.double(), lw.double(), mu.double(), pc.double(), "spherical", impl="ref")
    torch.testing.assert_close(joint, want, rtol=1e-6, atol=1e-4)  # float32 joints, ~7e6 for far components
