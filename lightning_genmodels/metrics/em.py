"""EM sufficient statistics as a torchmetrics Metric: ``update`` accumulates one batch's E-step
sums, ``compute`` returns them summed over DDP ranks (``dist_reduce_fx="sum"``) in float64."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from ..gmm.em import COVARIANCE_TYPES, GMMStats, covariance_shape
from ..module_utils import check_integer


STATES = ("nk", "sx", "sxx", "loglik", "n_total", "n_nonfinite")  # in the order of update's values


class EMStatistics(Metric):
    """Float64 sums of the E-step over the batches of one epoch: ``update`` only accumulates;
    ``compute`` returns them summed over DDP ranks.

    States (float64): nk [K], sx [K, D], sxx (layout of the covariance type), loglik [],
    n_total [] (Σ sample weights), n_nonfinite [] (batches whose log-likelihood was not finite).
    """

    full_state_update = False

    def __init__(self, n_components: int, n_features: int, covariance_type: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # torchmetrics' options (distributed_available_fn, process_group, ...)
        if covariance_type not in COVARIANCE_TYPES:  # (a KeyError naming only the value)
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}")
        k, d = check_integer("n_components", n_components, 1), check_integer("n_features", n_features, 1)
        shapes = zip(STATES, [(k,), (k, d), covariance_shape(covariance_type, k, d), (), (), ()])
        for name, shape in shapes:
            self.add_state(name, torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, stats: GMMStats, n_rows: Tensor, n_nonfinite: Tensor) -> None:
        # in place: `self.nk += ...` would go through nn.Module.__setattr__ (~4 us a state)
        values = (*stats, n_rows, n_nonfinite)
        for name, value in zip(STATES, values):
            getattr(self, name).add_(value)

    def compute(self) -> tuple[GMMStats, Tensor, Tensor]:
        return GMMStats(self.nk, self.sx, self.sxx, self.loglik), self.n_total, self.n_nonfinite

    def _apply(self, fn: Any, exclude_state: Sequence[str] = ()) -> "EMStatistics":
        # Follow device moves, but never leave float64: ``module.to(dtype)`` would cast states.
        this = super()._apply(fn, exclude_state)
        for name in this._defaults:
            setattr(this, name, getattr(this, name).double())
            this._defaults[name] = this._defaults[name].double()
        return this
