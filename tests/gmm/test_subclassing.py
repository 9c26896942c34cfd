"""A user's subclass of GaussianMixture with its own constructor arguments: scikit-learn's
get_params, set_params and clone keep them (they went back to their defaults, silently)."""
from __future__ import annotations

import pytest
import torch
from sklearn.base import clone

from lightning_genmodels import GaussianMixture


class TaggedGMM(GaussianMixture):
    def __init__(self, tag: str = "default", **kwargs) -> None:
        super().__init__(**kwargs)
        self.tag = tag


def test_subclass_arguments_survive_get_params_set_params_and_clone() -> None:
    model = TaggedGMM(tag="mine", n_components=2, covariance_type="diag")
    assert model.get_params()["tag"] == "mine" and model.get_params()["n_components"] == 2
    assert repr(model) == "TaggedGMM(n_components=2, covariance_type='diag', tag='mine')"
    copy = clone(model)
    assert type(copy) is TaggedGMM and copy.tag == "mine" and copy.hparams.covariance_type == "diag"
    model.set_params(tol=1e-2)
    assert model.tag == "mine" and model.hparams.tol == 1e-2
    model.set_params(tag="other")
    assert model.tag == "other" and model.hparams.tag == "other" and model.hparams.n_components == 2


@pytest.mark.filterwarnings("ignore::lightning_genmodels.ConvergenceWarning")
def test_set_params_of_a_fitted_subclass_keeps_the_fit_and_the_argument() -> None:
    x = torch.randn(60, 2, generator=torch.Generator().manual_seed(0))
    model = TaggedGMM(tag="mine", n_components=2, covariance_type="diag", max_iter=2, random_state=0).fit(x)
    means = model.means_.clone()
    model.max_iter = 3  # set_params, as for GaussianMixture
    assert model.fitted and torch.equal(model.means_, means) and model.tag == "mine"
