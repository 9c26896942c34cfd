"""Inputs and checks shared by the gmm_em_stats / gmm_log_prob tests (not a test module)."""
from __future__ import annotations

import pytest
import torch

from lightning_genmodels.ops import load_library
from lightning_genmodels.ops.gmm import COVARIANCE_TYPES, GMMStats, available_cpu_isas

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


def require_isa(isa: str) -> None:
    if isa not in available_cpu_isas():
        pytest.skip(f"this CPU cannot run the {isa} kernels")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def assert_compiles(device: str) -> None:
    """The E-step op inside a torch.compile'd function (fullgraph) gives the eager result."""
    load_library()
    log_weights, means, prec_chol = make_params(3, 4, "diag", torch.float32, device)
    x = make_x(64, means, seed=0)

    def mean_loglik(x: torch.Tensor) -> torch.Tensor:
        nk, sx, sxx, loglik = torch.ops.lightning_genmodels.gmm_em_stats(x, None, log_weights, means, prec_chol, "diag")
        return loglik / nk.sum()

    compiled = torch.compile(mean_loglik, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), mean_loglik(x))
