"""Bad input to GaussianMixture gets a ValueError naming the problem, not a TypeError from
inside or a silently changed value."""
from __future__ import annotations

import pytest
import torch

from lightning_genmodels import GaussianMixture


@pytest.fixture(scope="module")
def fitted() -> GaussianMixture:
    x = torch.randn(60, 2, generator=torch.Generator().manual_seed(0))
    return GaussianMixture(2, random_state=0).fit(x)


@pytest.mark.parametrize("method", ["bic", "aic"])
@pytest.mark.parametrize("x", [None, 3.0], ids=["None", "float"])
def test_criteria_of_a_scalar_name_the_shape(fitted: GaussianMixture, method: str, x) -> None:
    with pytest.raises(ValueError, match="X must be 2-D"):  # (bic: TypeError from len(X))
        getattr(fitted, method)(x)


@pytest.mark.parametrize("name", ["weights_init", "means_init", "precisions_init"])
def test_complex_tensor_inits_are_refused(name: str) -> None:
    value = {"weights_init": torch.ones(1), "means_init": torch.zeros(1, 2),
             "precisions_init": torch.ones(1)}[name].to(torch.complex64)
    with pytest.raises(ValueError, match=f"{name} must hold real numbers, got dtype torch.complex64"):
        GaussianMixture(1, covariance_type="spherical", **{name: value})
