"""gmm_m_step: the C++ M-step of diag and spherical mixtures against its reference (em.m_step, then
em.precision_cholesky), empty components, bad covariances and bad shapes."""
from __future__ import annotations

import pytest
import torch

from lightning_genmodels.gmm.em import GMMStats, m_step, precision_cholesky
from lightning_genmodels.ops import load_library
from lightning_genmodels.ops.gmm import gmm_m_step
from tests.utils import requires_cuda

EPS32 = float(torch.finfo(torch.float32).eps)


def stats_of(k: int, d: int, cov: str, seed: int = 0, empty: tuple[int, ...] = ()) -> GMMStats:
    """Moments of random responsibilities over random rows; components in ``empty`` get none."""
    g = torch.Generator().manual_seed(seed)
    x = 3.0 * torch.randn(200, d, generator=g, dtype=torch.float64)
    r = torch.softmax(2.0 * torch.randn(200, k, generator=g, dtype=torch.float64), 1)
    r[:, list(empty)] = 0.0
    sxx = r.T @ x.square() if cov == "diag" else r.T @ x.square().sum(1)
    return GMMStats(r.sum(0), r.T @ x, sxx, torch.zeros((), dtype=torch.float64))


def previous(k: int, d: int, cov: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 parameters before the step, as a module holds them."""
    g = torch.Generator().manual_seed(9)
    shape = (k, d) if cov == "diag" else (k,)
    return torch.randn(k, d, generator=g), 0.5 + torch.rand(shape, generator=g)


def reference(stats, cov, reg, prev_means=None, prev_cov=None):
    step = m_step(stats, cov, reg, EPS32, prev_means, prev_cov)
    return (step.weights, step.means, step.covariances, precision_cholesky(step.covariances, cov), step.empty)


@pytest.mark.parametrize("cov", ["diag", "spherical"])
@pytest.mark.parametrize("k, d, empty", [(1, 1, ()), (10, 50, ()), (7, 3, (2, 5)), (100, 17, (0, 99))])
@pytest.mark.parametrize("with_prev", [False, True])
def test_kernel_matches_the_reference(cov, k, d, empty, with_prev):
    load_library()
    stats = stats_of(k, d, cov, seed=k + d, empty=empty)
    prev = previous(k, d, cov) if with_prev else (None, None)
    # the op itself (the wrapper could take the reference without anyone noticing)
    got = torch.ops.lightning_genmodels.gmm_m_step(stats.nk, stats.sx, stats.sxx, cov, 1e-6, EPS32, *prev)
    want = reference(stats, cov, 1e-6, *prev)
    for name, a, b in zip(("weights", "means", "covariances", "prec_chol", "empty"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0, msg=name)
    assert got[4].tolist() == [j in empty for j in range(k)]
    if with_prev and empty:
        j = empty[0]
        assert torch.equal(got[1][j], prev[0][j].double()) and torch.equal(got[2][j], prev[1][j].double())
    step, prec_chol = gmm_m_step(stats, cov, 1e-6, EPS32, *prev, impl="ext")
    torch.testing.assert_close(prec_chol, got[3], rtol=0, atol=0)
    torch.testing.assert_close(step.means, got[1], rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["ref", "ext"])
@pytest.mark.parametrize("cov", ["full", "tied", "diag", "spherical"])
def test_a_component_of_one_point_gets_reg_covar(impl, cov):
    # The covariance about the mean: the raw form sxx / nk' - mu^2 gave 10 eps mu^2 / nk', 0.012 at
    # a feature near 100 in float32 (eps 1.2e-7), where the answer is reg_covar.
    x = torch.tensor([[100.0, -90.0, 95.0], [-80.0, 110.0, 70.0]], dtype=torch.float64)
    sxx = {"full": x[:, :, None] * x[:, None, :], "tied": x.T @ x, "diag": x.square(),
           "spherical": x.square().sum(1)}[cov]
    stats = GMMStats(torch.ones(2, dtype=torch.float64), x.clone(), sxx, torch.zeros((), dtype=torch.float64))
    if impl == "ext":
        load_library()
    step, _ = gmm_m_step(stats, cov, 1e-6, EPS32, impl=impl)
    eye = torch.eye(3, dtype=torch.float64)
    want = {"full": 1e-6 * eye.expand(2, 3, 3), "tied": 1e-6 * eye, "diag": torch.full((2, 3), 1e-6),
            "spherical": torch.full((2,), 1e-6)}[cov].double()
    torch.testing.assert_close(step.covariances, want, rtol=0, atol=1e-7)


@pytest.mark.parametrize("impl", ["ref", "ext"])
@pytest.mark.parametrize("cov", ["diag", "spherical"])
@pytest.mark.parametrize("bad", ["negative", "nan"])
def test_a_covariance_that_is_not_positive_raises_the_advice(impl, cov, bad):
    stats = stats_of(4, 3, cov)
    sxx = stats.sxx.clone()
    # sxx / nk below the squared mean makes the variance negative; NaN moments make it NaN
    sxx[1] = 0.0 if bad == "negative" else float("nan")
    with pytest.raises(ValueError, match="increase reg_covar"):
        gmm_m_step(stats._replace(sxx=sxx), cov, 0.0, EPS32, impl=impl)


@pytest.mark.parametrize("impl", ["ref", "ext"])
@pytest.mark.parametrize("cov", ["diag", "spherical", "full"])
@pytest.mark.parametrize("change, match", [
    ({"reg_covar": -1.0}, "reg_covar must be a finite number >= 0, got -1.0"),  # was: the covariance advice
    ({"reg_covar": float("nan")}, "reg_covar must be a finite number >= 0, got nan"),
    ({"eps": float("inf")}, "eps must be a finite number >= 0, got inf"),
    ({"sxx": "short"}, r"stats.sxx must be \["),  # the reference broadcast or raised deep inside
])
def test_bad_options_and_statistics_are_named(impl, cov, change, match):
    stats = stats_of(4, 3, "diag" if cov == "full" else cov)
    if cov == "full":
        stats = stats._replace(sxx=torch.eye(3, dtype=torch.float64).expand(4, 3, 3) * stats.nk[:, None, None])
    args = {"reg_covar": 1e-6, "eps": EPS32} | {k: v for k, v in change.items() if k != "sxx"}
    if "sxx" in change:
        stats = stats._replace(sxx=stats.sxx[..., :2] if cov != "spherical" else stats.sxx[:3])
    with pytest.raises(ValueError, match=match):
        gmm_m_step(stats, cov, args["reg_covar"], args["eps"], impl=impl)


def test_bad_shapes_name_the_argument():
    load_library()
    stats = stats_of(4, 3, "diag")
    op = torch.ops.lightning_genmodels.gmm_m_step
    with pytest.raises(RuntimeError, match=r"sxx must be \[4, 3\]"):
        op(stats.nk, stats.sx, stats.sxx[:, :2], "diag", 1e-6, EPS32, None, None)
    with pytest.raises(RuntimeError, match=r"nk must be \[K\] and sx \[K, D\]"):
        op(stats.nk[:3], stats.sx, stats.sxx, "diag", 1e-6, EPS32, None, None)
    with pytest.raises(RuntimeError, match=r"prev_means must be \[4, 3\]"):
        op(stats.nk, stats.sx, stats.sxx, "diag", 1e-6, EPS32, torch.zeros(4, 2), None)
    with pytest.raises(RuntimeError, match="must be 'diag' or 'spherical'"):
        op(stats.nk, stats.sx, stats.sxx, "full", 1e-6, EPS32, None, None)


@pytest.mark.parametrize("cov", ["full", "tied"])
def test_full_and_tied_take_the_reference(cov):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    r = torch.softmax(torch.randn(50, 2, generator=g, dtype=torch.float64), 1)
    sxx = torch.einsum("nk,ni,nj->kij", r, x, x) if cov == "full" else x.T @ x
    stats = GMMStats(r.sum(0), r.T @ x, sxx, torch.zeros((), dtype=torch.float64))
    step, prec_chol = gmm_m_step(stats, cov, 1e-6, EPS32, impl="ext")
    torch.testing.assert_close(prec_chol, reference(stats, cov, 1e-6)[3], rtol=0, atol=0)


def test_opcheck():
    load_library()
    for cov in ("diag", "spherical"):
        stats = stats_of(5, 4, cov, empty=(1,))
        for prev in ((None, None), previous(5, 4, cov)):
            args = (stats.nk, stats.sx, stats.sxx, cov, 1e-6, EPS32, *prev)
            torch.library.opcheck(torch.ops.lightning_genmodels.gmm_m_step.default, args)


@requires_cuda
def test_cuda_statistics_take_the_reference():
    stats = GMMStats(*(t.cuda() for t in stats_of(5, 4, "diag")))
    step, prec_chol = gmm_m_step(stats, "diag", 1e-6, EPS32, impl="ext")
    assert prec_chol.is_cuda
    torch.testing.assert_close(prec_chol.cpu(), reference(stats_of(5, 4, "diag"), "diag", 1e-6)[3])


@pytest.mark.parametrize("impl", ["auto", "ext"])
@pytest.mark.parametrize("cov", ["diag", "spherical"])
def test_previous_parameters_requiring_grad_take_the_reference_or_raise(impl, cov):
    """An empty component keeps prev_means/prev_covariances: with them requiring grad, 'auto'
    differentiates through the reference, 'ext' raises (the kernel has no backward)."""
    stats = stats_of(4, 3, cov, empty=(1,))
    prev_means, prev_cov = (t.double().requires_grad_() for t in previous(4, 3, cov))
    call = lambda: gmm_m_step(stats, cov, 1e-6, EPS32, prev_means, prev_cov, impl=impl)  # noqa: E731
    if impl == "ext":
        with pytest.raises(ValueError, match="no backward"):
            call()
        return
    step, prec_chol = call()
    (step.means.sum() + prec_chol.sum()).backward()
    assert prev_means.grad[1].tolist() == [1.0, 1.0, 1.0] and prev_means.grad[0].abs().sum() == 0
    assert prev_cov.grad is not None and prev_cov.grad[1].abs().sum() > 0


@pytest.mark.parametrize("impl", ["ref", "ext"])
@pytest.mark.parametrize("cov", ["full", "tied", "diag", "spherical"])
def test_previous_parameters_of_the_wrong_shape_are_named(impl, cov):
    """prev_means [D] or prev_covariances of one component: a ValueError naming them (the
    reference broadcast them over the components silently, the kernel raised RuntimeError)."""
    if cov in ("diag", "spherical"):
        stats = stats_of(4, 3, cov, empty=(1,))
    else:  # x x^T moments (stats_of has diag's and spherical's only)
        g = torch.Generator().manual_seed(0)
        x = 3.0 * torch.randn(200, 3, generator=g, dtype=torch.float64)
        r = torch.softmax(torch.randn(200, 4, generator=g, dtype=torch.float64), 1)
        r[:, 1] = 0.0
        sxx = torch.einsum("nk,ni,nj->kij", r, x, x) if cov == "full" else x.T @ x
        stats = GMMStats(r.sum(0), r.T @ x, sxx, torch.zeros((), dtype=torch.float64))
    good_cov = {"full": torch.eye(3).expand(4, 3, 3), "tied": torch.eye(3), "diag": torch.ones(4, 3),
                "spherical": torch.ones(4)}[cov].double()
    with pytest.raises(ValueError, match=r"prev_means must be \[4, 3\]"):
        gmm_m_step(stats, cov, 1e-6, EPS32, torch.zeros(3, dtype=torch.float64), good_cov, impl=impl)
    with pytest.raises(ValueError, match=r"prev_covariances must be \["):
        gmm_m_step(stats, cov, 1e-6, EPS32, torch.zeros(4, 3, dtype=torch.float64), good_cov[:1], impl=impl)
    gmm_m_step(stats, cov, 1e-6, EPS32, torch.zeros(4, 3, dtype=torch.float64), good_cov, impl=impl)
