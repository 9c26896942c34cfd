"""gmm/em.py: the one moments reference and covariance-shape table; the op's sample_weight rule."""
from __future__ import annotations

import pytest
import torch

from lightning_genmodels.gmm.em import COVARIANCE_TYPES, covariance_shape, moments
from lightning_genmodels.ops.gmm import gmm_em_stats


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_moments_match_their_formulas(covariance_type: str) -> None:
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(40, 3, generator=g, dtype=torch.float64), torch.rand(40, 2, generator=g, dtype=torch.float64)
    s = torch.rand(40, generator=g, dtype=torch.float64)
    s[3] = 0.0
    r[3] = torch.nan  # a row of weight 0 adds exactly nothing, whatever its responsibilities
    nk, sx, sxx, _ = moments(x, r, covariance_type, s)
    rs = torch.nan_to_num(r) * s[:, None]
    outer = x[:, :, None] * x[:, None, :]
    expected = {"full": torch.einsum("nk,nij->kij", rs, outer), "tied": torch.einsum("n,nij->ij", s, outer),
                "diag": rs.T @ x.square(), "spherical": rs.T @ x.square().sum(1)}[covariance_type]
    torch.testing.assert_close(nk, rs.sum(0))
    torch.testing.assert_close(sx, rs.T @ x)
    torch.testing.assert_close(sxx, expected)
    assert tuple(sxx.shape) == covariance_shape(covariance_type, 2, 3)


@pytest.mark.parametrize("impl", ["ref", "ext"])
@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_sample_weight_must_be_finite_and_non_negative(impl: str, bad: float) -> None:
    x = torch.randn(10, 2, dtype=torch.float64)
    params = (torch.zeros(1, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64),
              torch.ones(1, 2, dtype=torch.float64))
    w = torch.ones(10, dtype=torch.float64)
    w[7] = bad
    with pytest.raises(ValueError, match=r"sample_weight must be finite and >= 0, got .* at row 7"):
        gmm_em_stats(x, *params, "diag", w, impl=impl)
