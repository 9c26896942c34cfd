"""A failed ``fit(X)`` leaves the model as it was: an unfitted one unfitted, a fitted one with
its parameters, dtype and D (it had kept a half-done start, or the refit's buffers)."""
from __future__ import annotations

import pytest
import torch

from lightning_genmodels import GaussianMixture, NotFittedError


def rows(n: int = 120, d: int = 2, constant_column: bool = False) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    if constant_column:
        x[:, -1] = 1.0  # with reg_covar=0: "ill-defined empirical covariance"
    return x


def test_failed_first_fit_leaves_the_model_unfitted() -> None:
    model = GaussianMixture(2, reg_covar=0.0, max_iter=5, random_state=0)
    with pytest.raises(ValueError, match="ill-defined"):
        model.fit(rows(constant_column=True))
    assert not model.fitted
    with pytest.raises(NotFittedError):
        model.predict(rows())


@pytest.mark.parametrize("refit", [
    pytest.param(lambda m: m.fit(rows(constant_column=True).double()), id="ill-defined"),
    pytest.param(lambda m: m.fit(rows(d=3).double(), accelerator="bogus"), id="bad-trainer-arg"),
])
def test_failed_refit_keeps_the_fit(refit) -> None:
    model = GaussianMixture(2, reg_covar=0.0, random_state=0).fit(rows())
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    labels = model.predict(rows())
    with pytest.raises(ValueError):
        refit(model)
    after = model.state_dict()
    assert model.fitted and model.n_features_in_ == 2 and model.dtype == torch.float32
    assert not model._in_progress
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=0)
    assert torch.equal(model.predict(rows()), labels)


def test_a_failed_load_state_dict_keeps_the_fit() -> None:
    """A state of another D and covariance type had reallocated the buffers before the load failed."""
    model = GaussianMixture(2, random_state=0).fit(rows())
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    labels = model.predict(rows())
    other = GaussianMixture(2, covariance_type="diag", random_state=0).fit(rows(d=3).double())
    with pytest.raises(RuntimeError, match="size mismatch for covariances_"):
        model.load_state_dict(other.state_dict())
    assert model.fitted and model.n_features_in_ == 2 and model.dtype == torch.float32
    for name, value in before.items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)
    assert torch.equal(model.predict(rows()), labels)


@pytest.mark.parametrize("limits", [{"max_epochs": 0}, {"max_steps": 0}, {"limit_train_batches": 0}])
def test_a_fit_that_runs_no_em_iteration_raises(limits):
    """fit(X, max_epochs=0) returned an unfitted model without a word."""
    model = GaussianMixture(2, covariance_type="diag")
    with pytest.raises(RuntimeError, match="before its first EM iteration"):
        model.fit(torch.randn(50, 3), **limits)
    assert not model.fitted
