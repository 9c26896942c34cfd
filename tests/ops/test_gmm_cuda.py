"""CUDA: the paths that small CPU-sized tests would not reach (they run once a GPU is there)."""
from __future__ import annotations

import pytest
import torch

from lightning_genmodels.ops import load_library
from lightning_genmodels.ops.gmm import COVARIANCE_TYPES, _gmm_em_stats_ref, _gmm_log_prob_ref, gmm_em_stats, gmm_log_prob
from tests.ops.gmm_cases import DTYPES, assert_compiles, assert_stats_close, make_params, make_x, sample_inputs
from tests.ops.test_gmm_isa import _assert_a_nan_row_gives_nan
from tests.utils import requires_cuda


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_nan_row_makes_the_log_likelihood_nan_on_cuda(dtype):
    _assert_a_nan_row_gives_nan("cuda", dtype)


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
    assert_compiles("cuda")
