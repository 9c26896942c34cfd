"""Gaussian mixture fitted by exact, streamed EM as a LightningModule, with scikit-learn's face.

One training epoch is one EM iteration (Dempster, Laird & Rubin, 1977; Bishop, PRML §9.2.2):
``training_step`` runs the fused E-step op on each batch and accumulates its float64 sufficient
statistics in :class:`EMStatistics` (a torchmetrics ``Metric``, so DDP ranks are summed in
float64 for free); ``on_train_epoch_end`` turns the sums into the M-step. One pass over the
data per iteration, so a data set larger than memory is fitted exactly.

Bookkeeping follows scikit-learn: the lower bound of iteration i (mean log-likelihood) is the
one its E-step computed with the parameters from before its M-step; EM stops when it changes by
less than ``tol`` (``converged_``) or after ``max_iter`` iterations; with ``n_init`` restarts the
run with the best final lower bound is kept.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Sequence, Union

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from . import gmm_math
from .gmm_data import (
    EMStatistics,
    TensorDataModule,
    batch_tensor,
    broadcast_,
    loader_batches,
    padding_weights,
    shared_seed,
)
from .gmm_init import INIT_PARAMS, InitParams, initial_moments
from .ops.build import IMPLS, Impl
from .ops.gmm import COVARIANCE_TYPES, CovarianceType, GMMStats, gmm_em_stats, gmm_log_prob

ArrayLike = Union[Tensor, np.ndarray, Sequence[Any]]
_PARAMS = ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_")


class GaussianMixture(LightningModule):
    """Gaussian mixture model trained by EM, one epoch per iteration; scikit-learn compatible.

    Parameters are buffers in the model's dtype (K components, D features):
    ``weights_`` [K], ``means_`` [K, D], and ``covariances_``, ``precisions_``,
    ``precisions_cholesky_`` of shape full [K, D, D], tied [D, D], diag [K, D], spherical [K]
    (scikit-learn's layouts). D is taken from the data on the first fit unless ``n_features``.

    Empty components: a component whose responsibilities sum to ~0 keeps its previous mean and
    covariance, with weight ``10·eps / N`` (see :func:`~.gmm_math.m_step`), and a warning.

    Methods taking data (``predict``, ``predict_proba``, ``score_samples``, ``score``, ``bic``,
    ``aic``, ``fit``, ``fit_predict``) accept a Tensor or NumPy array [N, D] and return Tensors
    on the module's device (``score``, ``bic`` and ``aic`` 0-d).

    Args:
        n_components: K.
        covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
        tol: stop when the lower bound changes by less than this.
        reg_covar: added to the diagonal of every covariance.
        max_iter: EM iterations (epochs) per initialisation.
        n_init: initialisations; the best final lower bound wins.
        init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``
            (see :mod:`~.gmm_init`).
        weights_init: [K] starting weights (sum 1).
        means_init: [K, D] starting means.
        precisions_init: starting precisions (inverse covariances), layout of the type.
        random_state: seed of the initialisation; None draws one (shared by DDP ranks).
        warm_start: a fitted model continues from its parameters (one initialisation).
        n_features: D, to allocate the buffers before seeing data.
        kmeans_max_iter: Lloyd passes of the ``kmeans`` initialisation at most.
        kmeans_tol: relative tolerance of those passes.
        impl: E-step op implementation (``"auto"``, ``"ref"``, ``"ext"``).
    """

    input_format = "dequantized_flat"

    def __init__(
        self,
        n_components: int = 1,
        covariance_type: CovarianceType = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: InitParams = "kmeans",
        weights_init: ArrayLike | None = None,
        means_init: ArrayLike | None = None,
        precisions_init: ArrayLike | None = None,
        random_state: int | None = None,
        warm_start: bool = False,
        n_features: int | None = None,
        kmeans_max_iter: int = 300,
        kmeans_tol: float = 1e-4,
        impl: Impl = "auto",
    ) -> None:
        super().__init__()
        _check_options(covariance_type, init_params, impl, n_components, tol, reg_covar, max_iter, n_init)
        self._init = {
            "weights": gmm_math.as_float64(weights_init, "weights_init"),
            "means": gmm_math.as_float64(means_init, "means_init"),
            "precisions": gmm_math.as_float64(precisions_init, "precisions_init"),
        }
        self.save_hyperparameters(ignore=["weights_init", "means_init", "precisions_init"])
        # Plain lists in the hyper-parameters: YAML- and weights_only-checkpoint-friendly.
        self.hparams.update({f"{k}_init": None if v is None else v.tolist() for k, v in self._init.items()})
        self.automatic_optimization = False
        # Parameters, in the model's dtype, empty until D is known (see _allocate):
        # weights_ [K], means_ [K, D]; covariances_, precisions_cholesky_, precisions_:
        # full [K, D, D], tied [D, D], diag [K, D], spherical [K].
        for name in _PARAMS:
            self.register_buffer(name, torch.empty(0))
        self.em_stats: EMStatistics | None = None
        self._reset_fit_state()
        self.fitted = False
        self.n_features_in_: int | None = None
        if n_features is not None:
            self._allocate(n_features)

    # ------------------------------------------------------------------ state

    def _reset_fit_state(self) -> None:
        self.converged_ = False
        self.n_iter_ = 0
        self.lower_bound_ = -math.inf
        self.lower_bounds_: list[float] = []
        self._restart = 0
        self._n_restarts = self.hparams.n_init
        self._best: dict[str, Any] | None = None
        self._in_progress = False
        self._seed = 0

    def _allocate(self, n_features: int) -> None:
        """(Re)create the buffers [shapes in the class docstring] and the E-step sums for D."""
        k, cov = self.hparams.n_components, self.hparams.covariance_type
        shapes = {
            "weights_": (k,),
            "means_": (k, n_features),
            **{n: gmm_math.covariance_shape(cov, k, n_features) for n in _PARAMS[2:]},
        }
        for name, shape in shapes.items():
            if tuple(self._buffers[name].shape) != shape:
                self._buffers[name] = torch.zeros(shape, dtype=self.dtype, device=self.device)
        if self.em_stats is None or self.n_features_in_ != n_features:
            self.em_stats = EMStatistics(k, n_features, cov).to(self.device)
        self.n_features_in_ = n_features

    def get_extra_state(self) -> dict[str, Any]:
        """Fitted flags and the progress of an interrupted fit (saved in ``state_dict``)."""
        keys = ("fitted", "n_features_in_", "converged_", "n_iter_", "lower_bound_", "lower_bounds_",
                "_restart", "_n_restarts", "_best", "_in_progress", "_seed")
        return {k: getattr(self, k) for k in keys}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        means = state_dict.get(prefix + "means_")
        if means is not None and means.dim() == 2:
            self._allocate(means.shape[1])  # buffers of a fresh module take the saved shapes
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _set_params(self, weights: Tensor, means: Tensor, covariances: Tensor, prec_chol: Tensor) -> None:
        """Write float64 parameters into the buffers (model dtype); precisions = U Uᵀ."""
        cov_type = self.hparams.covariance_type
        prec = gmm_math.precisions_from_cholesky(prec_chol.double(), cov_type)
        for name, value in zip(_PARAMS, (weights, means, covariances, prec_chol, prec)):
            self._buffers[name].copy_(value.to(self._buffers[name].dtype))

    def _params(self) -> dict[str, Tensor]:
        return {name: self._buffers[name].clone() for name in _PARAMS}

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("GaussianMixture is not fitted yet: call fit(X) or Trainer.fit(model, ...) first")

    # ------------------------------------------------------------------ Lightning hooks

    def configure_optimizers(self) -> None:
        return None

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        if stage == "fit" and isinstance(strategy, DDPStrategy):
            # EM has no gradients for DDP to reduce, and DistributedDataParallel refuses a module
            # without trainable parameters; EMStatistics sums the statistics across ranks instead.
            strategy.configure_ddp = lambda: None

    def _train_batches(self):
        loader = self.trainer.train_dataloader
        return loader_batches(loader, getattr(loader, "sampler", None), self.device, self.dtype)

    def on_train_start(self) -> None:
        batches = self._train_batches()
        if self.n_features_in_ is None:
            x, _ = next(iter(batches()))
            self._allocate(x.shape[1])
        if self._in_progress and self.trainer.ckpt_path is not None:
            return  # resuming an interrupted fit from a checkpoint
        warm = self.hparams.warm_start and self.fitted
        prev_bound = self.lower_bound_
        self._reset_fit_state()
        self._in_progress = True
        self._seed = shared_seed(self.hparams.random_state, self.device)
        if warm:
            self._n_restarts, self.lower_bound_ = 1, prev_bound
        else:
            self._initialize(batches)
        if self.hparams.max_iter == 0:
            self._end_restart(converged=False)

    def on_train_epoch_start(self) -> None:
        self._seen = 0
        self.em_stats.reset()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """E-step of one batch: accumulate its float64 sufficient statistics."""
        x = batch_tensor(batch).to(self.dtype)
        loader = self.trainer.train_dataloader
        w = padding_weights(getattr(loader, "sampler", None), self._seen, x.shape[0], x.device)
        self._seen += x.shape[0]
        w = None if w is None else w.to(x.dtype)
        stats = gmm_em_stats(
            x, torch.log(self.weights_), self.means_, self.precisions_cholesky_,
            self.hparams.covariance_type, w, impl=self.hparams.impl,
        )
        n_rows = torch.tensor(float(x.shape[0]), device=x.device) if w is None else w.sum()
        # NaN/inf in x make the batch's log-likelihood non-finite: a free check, no extra pass.
        self.em_stats.update(stats, n_rows, (~torch.isfinite(stats.loglik)).double())

    def on_train_epoch_end(self) -> None:
        """M-step on the epoch's statistics summed over ranks; convergence and restarts."""
        if not self._in_progress:
            return
        stats, n_total, n_nonfinite = self.em_stats.compute()
        self.em_stats.reset()
        if float(n_nonfinite) > 0:
            raise ValueError(
                "the E-step's log-likelihood is not finite: the data contain NaN or infinite values "
                "(or values so large that every density underflows: scale the data)"
            )
        self._check_enough_samples(float(n_total))
        bound = float(stats.loglik / n_total)
        self._m_step(stats)
        self._count_em_step()
        change = bound - self.lower_bound_
        self.n_iter_ += 1
        self.lower_bound_ = bound
        self.lower_bounds_.append(bound)
        self.log("train/lower_bound", bound, sync_dist=True)
        converged = abs(change) < self.hparams.tol
        if converged or self.n_iter_ >= self.hparams.max_iter:
            self._end_restart(converged)

    def _count_em_step(self) -> None:
        """Count the M-step as the epoch's one optimisation step: ``trainer.global_step`` then
        counts EM iterations, so ``max_steps`` and ModelCheckpoint (which skips saving while the
        step count stands still) work without an optimizer."""
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    def on_train_end(self) -> None:
        if self._in_progress:  # the trainer stopped first (max_epochs): keep the best so far
            self._finish(self._candidate(converged=False) if self.n_iter_ > 0 or self._best is None else None)

    # ------------------------------------------------------------------ EM

    def _check_enough_samples(self, n_total: float) -> None:
        if n_total < self.hparams.n_components:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = "
                f"{self.hparams.n_components}, n_samples = {n_total:g}"
            )

    def _m_step(self, stats: GMMStats) -> None:
        cov_type = self.hparams.covariance_type
        step = gmm_math.m_step(
            stats, cov_type, self.hparams.reg_covar, torch.finfo(self.dtype).eps,
            prev_means=self.means_, prev_covariances=self.covariances_,
        )
        if bool(step.empty.any()):
            rank_zero_warn(
                f"GaussianMixture: components {step.empty.nonzero().flatten().tolist()} lost all "
                "their points; they keep their previous mean and covariance with weight ~0",
                category=RuntimeWarning,
            )
        prec_chol = gmm_math.precision_cholesky(step.covariances, cov_type)
        self._set_params(step.weights, step.means, step.covariances, prec_chol)

    def _initialize(self, batches) -> None:
        """Starting parameters of restart ``self._restart``, identical on every rank."""
        hp, cov_type, given = self.hparams, self.hparams.covariance_type, self._init
        k, d = hp.n_components, self.n_features_in_
        gmm_math.check_given_init(given, cov_type, k, d)
        if any(v is None for v in given.values()):
            moments = initial_moments(
                batches, hp.init_params, k, cov_type, self._seed + self._restart,
                hp.kmeans_max_iter, hp.kmeans_tol,
            )
            self._check_enough_samples(moments.n_total)
            centers = None if moments.centers is None else moments.centers.to(self.device)
            step = gmm_math.m_step(moments.stats, cov_type, hp.reg_covar, torch.finfo(self.dtype).eps, centers)
            weights, means, cov = step.weights, step.means, step.covariances
        dev = {"device": self.device}
        if given["weights"] is not None:
            weights = given["weights"].to(**dev)
        if given["means"] is not None:
            means = given["means"].to(**dev)
        if given["precisions"] is not None:
            prec_chol = gmm_math.precision_cholesky_from_precisions(given["precisions"].to(**dev), cov_type)
            cov = gmm_math.covariances_from_precisions(given["precisions"].to(**dev), cov_type)
        else:
            prec_chol = gmm_math.precision_cholesky(cov, cov_type)
        self._set_params(weights, means, cov, prec_chol)
        broadcast_(*(self._buffers[n] for n in _PARAMS))
        self.n_iter_, self.lower_bound_, self.lower_bounds_, self.converged_ = 0, -math.inf, [], False
        self.fitted = True  # usable parameters from here on (mid-fit checkpoints included)

    def _candidate(self, converged: bool) -> dict[str, Any]:
        return {"params": self._params(), "n_iter_": self.n_iter_, "lower_bound_": self.lower_bound_,
                "lower_bounds_": list(self.lower_bounds_), "converged_": converged}

    def _end_restart(self, converged: bool) -> None:
        """Keep this run if it is the best so far; start the next one or finish."""
        cand = self._candidate(converged)
        if self._best is None or cand["lower_bound_"] > self._best["lower_bound_"]:
            self._best = cand
        self._restart += 1
        if self._restart < self._n_restarts:
            self._initialize(self._train_batches())
        else:
            self._finish(None)
            self.trainer.should_stop = True

    def _finish(self, candidate: dict[str, Any] | None) -> None:
        best = self._best
        if candidate is not None and (best is None or candidate["lower_bound_"] > best["lower_bound_"]):
            best = candidate
        for name, value in best["params"].items():
            self._buffers[name].copy_(value)
        for key in ("n_iter_", "lower_bound_", "lower_bounds_", "converged_"):
            setattr(self, key, best[key])
        self._best, self._in_progress, self.fitted = None, False, True
        if not self.converged_ and self.hparams.max_iter > 0:
            rank_zero_warn(
                "GaussianMixture: the best initialisation did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                category=RuntimeWarning,
            )

    # ------------------------------------------------------------------ scikit-learn face

    def _input(self, X: ArrayLike) -> Tensor:
        """X as a [N, D] tensor on the module's device and dtype, validated against the fit."""
        self._check_fitted()
        x = X if isinstance(X, Tensor) else torch.as_tensor(np.asarray(X))
        if x.dim() != 2:
            raise ValueError(f"X must be 2-D [n_samples, n_features], got shape {tuple(x.shape)}")
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {x.shape[1]} features, the model was fitted with {self.n_features_in_}")
        x = x.to(device=self.device, dtype=self.dtype)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("X contains NaN or infinite values")
        return x

    def fit(
        self,
        X: ArrayLike,
        y: Any = None,
        *,
        trainer: Trainer | None = None,
        accelerator: str = "auto",
        devices: int | str | list[int] = 1,
        strategy: str = "auto",
        batch_size: int = 8192,
        num_workers: int = 0,
        **trainer_kwargs: Any,
    ) -> "GaussianMixture":
        """Fit on in-memory rows with a Lightning Trainer, as scikit-learn's ``fit``.

        The module's dtype follows X: float32 or float64 as given; other tensors become
        torch's default dtype, other NumPy arrays float64. Under DDP each rank gets its own
        shard of X, without DistributedSampler padding.

        Args:
            X: [N, D] Tensor or NumPy array, finite, N >= n_components.
            y: ignored (scikit-learn's signature).
            trainer: a Trainer to use instead of the one built from the arguments below.
            accelerator: the built Trainer's accelerator (``"auto"``, ``"cpu"``, ``"gpu"``).
            devices: its devices (2 or more: DDP with ``strategy="ddp"``).
            strategy: its strategy.
            batch_size: rows per E-step batch (the result does not depend on it).
            num_workers: DataLoader worker processes.
            **trainer_kwargs: further ``Trainer`` arguments.

        Returns:
            self, fitted.

        Raises:
            ValueError: X is not 2-D, has NaN/inf, or fewer rows than components; or a
                covariance is singular (increase ``reg_covar``).
        """
        x = X if isinstance(X, Tensor) else torch.as_tensor(np.asarray(X))
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float64 if not isinstance(X, Tensor) else torch.get_default_dtype())
        x = x.detach().cpu()
        if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"X must be 2-D [n_samples, n_features], got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("X contains NaN or infinite values")
        self._check_enough_samples(x.shape[0])
        warm = self.hparams.warm_start and self.fitted
        if warm and x.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {x.shape[1]} features, the model was fitted with {self.n_features_in_}")
        self.to(x.dtype)
        self._allocate(x.shape[1])
        with contextlib.ExitStack() as stack:
            if trainer is None:
                stack.enter_context(_quiet_lightning())
                epochs = self.hparams.max_iter * (1 if warm else self.hparams.n_init)
                trainer = Trainer(
                    max_epochs=max(1, epochs), accelerator=accelerator, devices=devices, strategy=strategy,
                    logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, **trainer_kwargs,
                )
            trainer.fit(self, datamodule=TensorDataModule(x, batch_size, num_workers))
        return self

    def fit_predict(self, X: ArrayLike, y: Any = None, **fit_kwargs: Any) -> Tensor:
        """``fit(X)`` then ``predict(X)``: labels [N] (int64)."""
        return self.fit(X, **fit_kwargs).predict(X)

    @torch.no_grad()
    def _estimate_weighted_log_prob(self, X: ArrayLike) -> Tensor:
        x = self._input(X)
        return gmm_log_prob(
            x, torch.log(self.weights_), self.means_, self.precisions_cholesky_,
            self.hparams.covariance_type, impl=self.hparams.impl,
        )

    def score_samples(self, X: ArrayLike) -> Tensor:
        """log p(x_n) [N]."""
        return torch.logsumexp(self._estimate_weighted_log_prob(X), dim=1)

    def score(self, X: ArrayLike, y: Any = None) -> Tensor:
        """Mean log-likelihood of X (higher is better), 0-d."""
        return self.score_samples(X).mean()

    def predict(self, X: ArrayLike) -> Tensor:
        """Most probable component of each row [N] (int64)."""
        return self._estimate_weighted_log_prob(X).argmax(dim=1)

    def predict_proba(self, X: ArrayLike) -> Tensor:
        """Responsibilities p(k | x_n) [N, K]."""
        return torch.softmax(self._estimate_weighted_log_prob(X), dim=1)

    # ------------------------------------------------------------------ evaluation

    def _eval_step(self, batch: Any, stage: str) -> Tensor | None:
        """Mean log-likelihood of a batch under the current parameters, logged as
        ``{stage}/log_likelihood`` (Lightning weights batches by size: the data set's mean).
        Within fit, validation scores the parameters the epoch's E-step used."""
        if not (self.fitted or self._in_progress):
            return None  # the sanity check before initialisation
        x = batch_tensor(batch).to(self.dtype)
        log_prob = torch.logsumexp(
            gmm_log_prob(x, torch.log(self.weights_), self.means_, self.precisions_cholesky_,
                         self.hparams.covariance_type, impl=self.hparams.impl),
            dim=1,
        )
        mean = log_prob.mean()
        self.log(f"{stage}/log_likelihood", mean, batch_size=x.shape[0], sync_dist=True)
        return mean

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        return self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Per row: the most probable component ``labels`` [B] and ``log_prob`` log p(x) [B]."""
        self._check_fitted()
        joint = self._estimate_weighted_log_prob(batch_tensor(batch))
        return {"labels": joint.argmax(dim=1), "log_prob": torch.logsumexp(joint, dim=1)}

    @torch.no_grad()
    def sample_images(self, n: int, seed: int = 0) -> Tensor:
        """``n`` samples as square images [n, 1, H, W] clamped to [0, 1] (D = H·W, e.g. MNIST's
        784 pixels), for :class:`~lightning_genmodels.callbacks.SampleGrid`."""
        x, _ = self.sample(n, generator=seed)
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ValueError(f"sample_images needs square images, but D = {x.shape[1]}")
        return x.reshape(n, 1, side, side).clamp(0.0, 1.0)

    def _n_parameters(self) -> int:
        return gmm_math.n_parameters(self.hparams.covariance_type, self.hparams.n_components, self.n_features_in_)

    def bic(self, X: ArrayLike) -> Tensor:
        """Bayesian information criterion −2 log L + p log N (lower is better), 0-d."""
        n = len(X)
        return -2.0 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X: ArrayLike) -> Tensor:
        """Akaike information criterion −2 log L + 2 p (lower is better), 0-d."""
        return -2.0 * self.score(X) * len(X) + 2 * self._n_parameters()

    @torch.no_grad()
    def sample(self, n_samples: int = 1, generator: torch.Generator | int | None = None) -> tuple[Tensor, Tensor]:
        """Draw from the mixture on the module's device.

        Args:
            n_samples: rows to draw (>= 1).
            generator: a torch.Generator on the module's device, or an int seed for one; None
                uses torch's global generator.

        Returns:
            (X [n_samples, D] in the model's dtype, labels [n_samples] int64), grouped by
            component in increasing order as scikit-learn's ``sample``.
        """
        self._check_fitted()
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if isinstance(generator, int):
            generator = torch.Generator(device=self.device).manual_seed(generator)
        k, d = self.means_.shape
        counts = torch.multinomial(self.weights_.double(), n_samples, replacement=True, generator=generator)
        labels = torch.sort(counts).values
        z = torch.randn(n_samples, d, generator=generator, device=self.device, dtype=torch.float64)
        x = gmm_math.sample_from_normals(
            z, labels, self.means_.double(), self.covariances_.double(), self.hparams.covariance_type
        )
        return x.to(self.dtype), labels


@contextlib.contextmanager
def _quiet_lightning():
    """Silence Lightning's info messages (accelerator banner, tips) for the sklearn-style fit."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _check_options(
    covariance_type: str, init_params: str, impl: str, n_components: int, tol: float,
    reg_covar: float, max_iter: int, n_init: int,
) -> None:
    """Raise ValueError with the allowed values for an invalid constructor option."""
    for name, value, allowed in (
        ("covariance_type", covariance_type, COVARIANCE_TYPES),
        ("init_params", init_params, INIT_PARAMS),
        ("impl", impl, IMPLS),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    for name, value, low in (("n_components", n_components, 1), ("n_init", n_init, 1),
                             ("max_iter", max_iter, 0), ("tol", tol, 0.0), ("reg_covar", reg_covar, 0.0)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
