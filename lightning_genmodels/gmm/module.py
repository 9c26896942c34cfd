"""Gaussian mixture fitted by exact, streamed EM as a LightningModule, with scikit-learn's face.

One training epoch is one EM iteration (Dempster, Laird & Rubin, 1977; Bishop, PRML §9.2.2),
run as one manual-optimisation ``training_step`` that takes Lightning's ``dataloader_iter``:
the fused E-step op runs on every batch and its float64 sufficient statistics accumulate in
:class:`~lightning_genmodels.metrics.EMStatistics` (a torchmetrics ``Metric``, so DDP ranks are
summed in float64 for free); the M-step is the step of the :class:`~.strategy.EMStep` optimizer,
so ``trainer.global_step`` counts EM iterations. One pass over the data per iteration, so a data
set larger than memory is fitted exactly. Under DDP use ``strategy="ddp_em"``
(:class:`~.strategy.EMDDPStrategy`): EM has no gradients for DistributedDataParallel to reduce.

Bookkeeping follows scikit-learn: the lower bound of iteration i (mean log-likelihood) is the
one its E-step computed with the parameters from before its M-step; EM stops when it changes by
less than ``tol`` (``converged_``) or after ``max_iter`` iterations; with ``n_init`` restarts the
run with the best final lower bound is kept.
"""
from __future__ import annotations

import inspect
import math
import time
import warnings
from typing import Any, Iterator

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.parsing import collect_init_args
from torch import Tensor, nn

from ..ddp import eval_means, log_row_means
from ..metrics.em import EMStatistics
from ..module_utils import finite_on_every_rank
from ..ops.build import Impl
from ..ops.gmm import gmm_em_stats, gmm_log_prob, gmm_m_step
from . import em
from .batches import (
    batch_tensor, broadcast_, is_distributed, loader_batches, padding_weights, set_trainer_world, shared_seed,
)
from .em import CovarianceType, GMMStats
from .estimator import PARAMS as _PARAMS
from .estimator import ArrayLike, NotFittedError, ScikitLearnMixin, check_options
from .init import InitParams, initial_moments
from .restarts import RestartsMixin, _say
from .rows import RowBatches
from .strategy import EMDDPStrategy, EMStep

# Lightning's notes on the ``dataloader_iter`` step flavour ("experimental", "batch_idx will not
# match"): this module consumes a whole epoch in one step by design, so they do not apply.
DATALOADER_ITER_NOTES = (
    r"You are using the `dataloader_iter` step flavor",
    r"Found `dataloader_iter` argument in the `training_step`",
)

# The numeric constructor options, whose hyper-parameters are kept as Python numbers
_FLOATS = ("tol", "reg_covar", "kmeans_tol")
_INTS = ("n_components", "max_iter", "n_init", "random_state", "n_features", "kmeans_max_iter", "verbose",
         "verbose_interval")


class GaussianMixture(RestartsMixin, ScikitLearnMixin, LightningModule):
    """Gaussian mixture model trained by EM, one epoch per iteration; scikit-learn compatible.

    Parameters are buffers in the model's dtype (K components, D features):
    ``weights_`` [K], ``means_`` [K, D], and ``covariances_``, ``precisions_``,
    ``precisions_cholesky_`` of shape full [K, D, D], tied [D, D], diag [K, D], spherical [K]
    (scikit-learn's layouts). D is taken from the data on the first fit unless ``n_features``.

    Empty components: a component whose responsibilities sum to ~0 keeps its previous mean and
    covariance, with weight ``10·eps / N`` (see :func:`~.em.m_step`), and a warning.

    Methods taking data (``predict``, ``predict_proba``, ``score_samples``, ``score``, ``bic``,
    ``aic``, ``fit``, ``fit_predict``) accept a Tensor or NumPy array [N, D], run on the module's
    device (a GPU fit stays on the GPU) and return Tensors on X's device, the CPU for NumPy input
    (``score``, ``bic`` and ``aic`` Python floats, as scikit-learn's). ``sample`` draws on its
    generator's device (an int seed: the CPU, the same rows wherever the model was fitted).
    ``get_params``/``set_params`` make it a scikit-learn estimator (``clone``, ``GridSearchCV``).

    Args:
        n_components: K.
        covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
        tol: stop when the lower bound changes by less than this.
        reg_covar: added to the diagonal of every covariance.
        max_iter: EM iterations (epochs) per initialisation.
        n_init: initialisations; the best final lower bound wins.
        init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``
            (see :mod:`~.init`).
        weights_init: [K] starting weights (sum 1).
        means_init: [K, D] starting means.
        precisions_init: starting precisions (inverse covariances), layout of the type.
        random_state: seed of the initialisation; None draws one (shared by DDP ranks). With
            ``fit(X)`` and ``init_params`` ``"k-means++"`` or ``"random_from_data"``, scikit-learn's
            start for the same int.
        warm_start: a fitted model continues from its parameters (one initialisation).
        n_features: D, to allocate the buffers before seeing data (a fit checks the data's D).
        kmeans_max_iter: Lloyd passes of the ``kmeans`` initialisation at most.
        kmeans_tol: relative tolerance of those passes.
        impl: E-step op implementation (``"auto"``, ``"ref"``, ``"ext"``).
        verbose: 0 silent; 1 prints each initialisation, every ``verbose_interval``-th iteration
            and the end; 2 adds the time and lower-bound change to them (scikit-learn's lines).
        verbose_interval: iterations between the iteration lines.
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
        verbose: int = 0,
        verbose_interval: int = 10,
    ) -> None:
        # The arguments as given, for get_params (scikit-learn's clone checks identity), with a
        # subclass's own from its __init__ above this one: set_params and clone had reset them to
        # their defaults. Setting an attribute of the same name is set_params for ours only.
        params = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self._sk_base = frozenset(params)
        for args in collect_init_args(inspect.currentframe(), [], classes=(GaussianMixture,)):
            params.update(args)
        self._sk_params = params
        super().__init__()
        check_options(covariance_type, init_params, impl, n_components, tol, reg_covar, max_iter, n_init,
                      random_state, verbose_interval, n_features, kmeans_max_iter, kmeans_tol, verbose, warm_start)
        self._init = {
            "weights": em.as_float64(weights_init, "weights_init"),
            "means": em.as_float64(means_init, "means_init"),
            "precisions": em.as_float64(precisions_init, "precisions_init"),
        }
        em.check_given_init(self._init, covariance_type, n_components,
                            em.given_n_features(self._init, covariance_type, n_features))  # (fit checks D too)
        self.save_hyperparameters(ignore=["weights_init", "means_init", "precisions_init"])
        # Plain lists in the hyper-parameters: YAML- and weights_only-checkpoint-friendly.
        self.hparams.update({f"{k}_init": None if v is None else v.tolist() for k, v in self._init.items()})
        # Python numbers for NumPy scalars (np.float32 tol, np.int64 n_components): the ops take
        # Python floats, YAML and weights_only checkpoints no NumPy types.
        for k in _FLOATS + _INTS:
            v = self.hparams[k]
            if v is not None and not isinstance(v, bool):
                self.hparams[k] = float(v) if k in _FLOATS else int(v)
        self.automatic_optimization = False
        # Parameters, in the model's dtype, empty until D is known (see _allocate):
        # weights_ [K], means_ [K, D]; covariances_, precisions_cholesky_, precisions_:
        # full [K, D, D], tied [D, D], diag [K, D], spherical [K].
        for name in _PARAMS:
            self.register_buffer(name, torch.empty(0))
        self.em_stats: EMStatistics | None = None
        self.eval_means: nn.ModuleDict | None = None  # {stage}/log_likelihood, made at the first (see ddp.py)
        self._data_finite = False  # fit(X) checked its rows once: the passes need not
        self._log_bound = True  # off in fit(X)'s own Trainer, which logs nothing
        self._reset_fit_state()
        self.fitted = False
        self.n_features_in_: int | None = None
        if n_features is not None:
            self._allocate(int(n_features))

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
            **{n: em.covariance_shape(cov, k, n_features) for n in _PARAMS[2:]},
        }
        for name, shape in shapes.items():
            if tuple(self._buffers[name].shape) != shape:
                self._buffers[name] = torch.zeros(shape, dtype=self.dtype, device=self.device)
        if self.em_stats is None or self.n_features_in_ != n_features:
            self.em_stats = EMStatistics(k, n_features, cov, distributed_available_fn=is_distributed).to(self.device)
        self.n_features_in_ = n_features

    def get_extra_state(self) -> dict[str, Any]:
        """Fitted flags and the progress of an interrupted fit (saved in ``state_dict``)."""
        keys = ("fitted", "n_features_in_", "converged_", "n_iter_", "lower_bound_", "lower_bounds_",
                "_restart", "_n_restarts", "_best", "_in_progress", "_seed")
        return {k: getattr(self, k) for k in keys}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """nn.Module's, leaving the model as it was when it fails (a state of another D or
        covariance type had reallocated the buffers: a fitted model lost its parameters)."""
        saved = self._snapshot()
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except BaseException:
            self._restore(saved)
            raise

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        means = state_dict.get(prefix + "means_")
        if means is not None and means.dim() == 2:
            # buffers of a fresh module take the saved shapes and dtype: a float64 fit (fit(X) on
            # NumPy data) loaded into a float32 module would round its parameters and predictions
            if means.is_floating_point():
                self.to(dtype=means.dtype)
            self._allocate(means.shape[1])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _set_params(self, weights: Tensor, means: Tensor, covariances: Tensor, prec_chol: Tensor) -> None:
        """Write float64 parameters into the buffers (model dtype); precisions = U Uᵀ."""
        cov_type = self.hparams.covariance_type
        prec = em.precisions_from_cholesky(prec_chol.double(), cov_type)
        for name, value in zip(_PARAMS, (weights, means, covariances, prec_chol, prec)):
            self._buffers[name].copy_(value.to(self._buffers[name].dtype))

    def _params(self) -> dict[str, Tensor]:
        return {name: self._buffers[name].clone() for name in _PARAMS}

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise NotFittedError("GaussianMixture is not fitted yet: call fit(X) or Trainer.fit(model, ...) first, "
                               "or load a fitted one (load_from_checkpoint; --ckpt_path on the command line)")

    # ------------------------------------------------------------------ Lightning hooks

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return EMStep()

    def configure_callbacks(self) -> list:
        """No callbacks; called as a Trainer starts, before Lightning's checks of the step's
        signature: the place to hide its notes on the ``dataloader_iter`` flavour (inside ``fit(X)``
        only for the fit, under its own ``catch_warnings``)."""
        for note in DATALOADER_ITER_NOTES:
            warnings.filterwarnings("ignore", message=note)
        return []

    def setup(self, stage: str) -> None:
        if str(self.trainer.precision) in ("16-true", "bf16-true"):  # (the op's dtype error, later)
            raise ValueError(f"GaussianMixture runs in float32 or float64, not Trainer(precision="
                             f"{self.trainer.precision!r}): use '32-true' or '64-true'")
        set_trainer_world(self.trainer.world_size)
        strategy = self.trainer.strategy
        if stage == "fit" and isinstance(strategy, DDPStrategy) and not isinstance(strategy, EMDDPStrategy):
            raise ValueError(
                f"GaussianMixture under {type(strategy).__name__} needs strategy='ddp_em' "
                "(lightning_genmodels.gmm.EMDDPStrategy): EM has no gradients for "
                "DistributedDataParallel to reduce; EMStatistics sums the statistics across ranks"
            )

    def teardown(self, stage: str) -> None:
        set_trainer_world(None)

    def _train_batches(self):
        """The initialisation's passes: the batches EM reads (``limit_train_batches`` too), in
        one order drawn from the shared seed (a shuffling loader's otherwise follows torch's global
        generator, and would differ from pass to pass and from run to run)."""
        loader = self.trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        limit = self.trainer.num_training_batches
        return loader_batches(loader, sampler, self.device, self.dtype, check_finite=not self._data_finite,
                              max_batches=None if math.isinf(limit) else int(limit), order_seed=self._seed)

    def on_train_start(self) -> None:
        if self.n_features_in_ is None or self.hparams.n_features is not None:
            x, _ = next(iter(self._train_batches()()))  # D from the data, or checked against n_features
            self._check_n_features(x.shape[1])
            self._allocate(x.shape[1])
        # verbose's time lapses count from this fit (a resumed or warm fit has no earlier start)
        self._tick = self._start = time.perf_counter()
        if self.trainer.ckpt_path is not None and (self._in_progress or self.fitted):
            self._resume()
            return
        warm = self.hparams.warm_start and self.fitted
        prev_bound = self.lower_bound_
        self._reset_fit_state()
        self._in_progress = True
        self._seed = shared_seed(self.hparams.random_state, self.device)
        if warm:
            self._n_restarts, self.lower_bound_ = 1, prev_bound
            if self.hparams.verbose:
                _say("Initialization 0")  # scikit-learn's line for its one warm initialisation
        else:
            self._initialize(self._train_batches())
        if self.hparams.max_iter == 0:
            self._end_restart(converged=False)

    def training_step(self, dataloader_iter: Iterator[Any]) -> None:
        """One EM iteration: the E-step over every batch of the epoch, then the M-step as the
        step of the :class:`~.strategy.EMStep` optimizer (one optimizer step per epoch)."""
        if not self._in_progress:
            for _ in dataloader_iter:  # finished (max_iter=0): let the epoch end
                pass
            return
        self.em_stats.reset()
        sampler = getattr(self.trainer.train_dataloader, "sampler", None)
        log_weights = torch.log(self.weights_)
        centre = self._centre()
        means = self.means_ if centre is None else self.means_ - centre
        sums: list[Tensor] | None = None  # nk, sx, sxx, loglik, n_rows, n_nonfinite: one update per epoch
        seen = 0
        for item in dataloader_iter:  # (batch, batch_idx, dataloader_idx)
            x = batch_tensor(item[0]).to(device=self.device, dtype=self.dtype)
            w = padding_weights(sampler, seen, x.shape[0], x.device)
            seen += x.shape[0]
            x = x if centre is None else x - centre
            batch = self._e_step(x, log_weights, means, None if w is None else w.to(x.dtype))
            sums = batch if sums is None else [a.add_(b) for a, b in zip(sums, batch)]
        if sums is not None:
            self.em_stats.update(GMMStats(*sums[:4]), sums[4], sums[5])
        self.optimizers().step(closure=self._end_iteration)

    def _e_step(self, x: Tensor, log_weights: Tensor, means: Tensor, w: Tensor | None) -> list[Tensor]:
        """One batch's float64 sufficient statistics, row count and non-finite flag (x and means
        taken about :meth:`_centre`)."""
        stats = gmm_em_stats(
            x, log_weights, means, self.precisions_cholesky_,
            self.hparams.covariance_type, w, impl=self.hparams.impl,
        )
        if w is None:
            n_rows = torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device)
        else:
            n_rows = w.double().sum()
        # NaN/inf in x make the batch's log-likelihood non-finite: a free check, no extra pass.
        return [*stats, n_rows, (~torch.isfinite(stats.loglik)).double()]

    def _end_iteration(self) -> None:
        """M-step on the epoch's statistics summed over ranks; convergence and restarts."""
        stats, n_total, n_nonfinite = self.em_stats.compute()
        # torchmetrics squeezes one-element results: K = 1 gives nk [1] -> []; restore shapes.
        stats = GMMStats(*(v.reshape(getattr(self.em_stats, k).shape) for k, v in zip(GMMStats._fields, stats)))
        if float(n_nonfinite) > 0:
            raise ValueError(
                "the E-step's log-likelihood is not finite: the data contain NaN or infinite values "
                "(or values so large that every density underflows: scale the data)"
            )
        self._check_enough_samples(float(n_total))
        bound = float(stats.loglik / n_total)
        self._m_step(stats)
        change = bound - self.lower_bound_
        self.n_iter_ += 1
        self.lower_bound_ = bound
        self.lower_bounds_.append(bound)
        if self._log_bound:
            self.log("train/lower_bound", bound, batch_size=1)
        self._report_iteration(change)
        converged = abs(change) < self.hparams.tol
        if converged or self.n_iter_ >= self.hparams.max_iter:
            self._end_restart(converged)

    def on_train_end(self) -> None:
        if self._in_progress:  # the trainer stopped first (max_epochs): keep the best so far
            self._finish(self._candidate(converged=False) if self.n_iter_ > 0 or self._best is None else None)

    # ------------------------------------------------------------------ EM

    def _centre(self) -> Tensor | None:
        """The mixture's mean c = Σ_k w_k μ_k [D] (model dtype) where the data lie far from the
        origin, more than 10 standard deviations (the mixture's) in some feature; else None.
        The ops then see x − c and μ − c: their float32 products and raw moments Σ r x xᵀ lose
        the spread of such data to cancellation (a float32 fit of data offset by 1e3 failed with
        "ill-defined covariance"; scikit-learn's full covariances are centred). Near the origin
        the copy x − c would only cost time."""
        w, means, cov = self.weights_.double(), self.means_.double(), self.covariances_.double()
        if self.hparams.covariance_type in ("full", "tied"):
            variances = cov.diagonal(dim1=-2, dim2=-1)  # [K, D] or [D]
        else:
            variances = cov if self.hparams.covariance_type == "diag" else cov[:, None]  # [K, D] or [K, 1]
        centre = w @ means
        spread = w @ (variances + means.square()) - centre.square()  # [D], the mixture's variance
        return centre.to(self.dtype) if bool((centre.square() > 100.0 * spread).any()) else None

    def _joint_log_prob(self, x: Tensor) -> Tensor:
        """log w_k + log N(x_n | k) [N, K] of rows x [N, D] (model dtype), about :meth:`_centre`."""
        centre, means = self._centre(), self.means_
        if centre is not None:
            x, means = x - centre, means - centre
        return gmm_log_prob(x, torch.log(self.weights_), means, self.precisions_cholesky_,
                            self.hparams.covariance_type, impl=self.hparams.impl)

    def _ranking_log_prob(self, x: Tensor) -> Tensor:
        """:meth:`_joint_log_prob` for ranking components (predict, predict_proba): rows with no
        finite joint in the model's dtype (float32 squared distances overflow beyond features of
        about 1.8e19) taken again in float64, where they stay finite (float64 [N, K] then; the
        label was component 0 and the probabilities NaN, silently)."""
        joint = self._joint_log_prob(x)
        lost = ~torch.isfinite(joint).any(dim=1)
        if joint.dtype == torch.float64 or not bool(lost.any()):
            return joint
        joint = joint.double()
        centre, means = self._centre(), self.means_.double()
        rows = x[lost].double()
        if centre is not None:
            rows, means = rows - centre.double(), means - centre.double()
        joint[lost] = gmm_log_prob(rows, torch.log(self.weights_.double()), means, self.precisions_cholesky_.double(),
                                   self.hparams.covariance_type, impl=self.hparams.impl)
        return joint

    def _m_step(self, stats: GMMStats) -> None:
        """The M-step on statistics taken about :meth:`_centre` (the parameters, so the centre,
        are still those of the E-step)."""
        cov_type = self.hparams.covariance_type
        centre = self._centre()
        step, prec_chol = gmm_m_step(
            stats, cov_type, self.hparams.reg_covar, torch.finfo(self.dtype).eps,
            prev_means=self.means_ if centre is None else self.means_ - centre,
            prev_covariances=self.covariances_, impl=self.hparams.impl,
        )
        if bool(step.empty.any()):
            rank_zero_warn(
                f"GaussianMixture: components {step.empty.nonzero().flatten().tolist()} lost all "
                "their points; they keep their previous mean and covariance with weight ~0",
                category=RuntimeWarning,
            )
        means = step.means if centre is None else step.means + centre.double()
        self._set_params(step.weights, means, step.covariances, prec_chol)

    def _initialize(self, batches) -> None:
        """Starting parameters of restart ``self._restart``, identical on every rank."""
        hp, cov_type, given = self.hparams, self.hparams.covariance_type, self._init
        k, d = hp.n_components, self.n_features_in_
        if hp.verbose:
            _say(f"Initialization {self._restart}")
        self._tick = self._start = time.perf_counter()
        em.check_given_init(given, cov_type, k, d)
        if any(v is None for v in given.values()):
            loader = self.trainer.train_dataloader
            rows = loader.x.to(self.device, self.dtype) if isinstance(loader, RowBatches) else None
            moments = initial_moments(
                batches, hp.init_params, k, cov_type, self._seed,
                hp.kmeans_max_iter, hp.kmeans_tol, rows, hp.impl, self._restart,
            )
            self._check_enough_samples(moments.n_total)
            centers = None if moments.centers is None else moments.centers.to(self.device)
            centre = None if moments.centre is None else moments.centre.to(self.device)
            step = em.m_step(moments.stats, cov_type, hp.reg_covar, torch.finfo(self.dtype).eps, centers,
                             centre=centre)
            weights, means, cov = step.weights, step.means, step.covariances
        dev = {"device": self.device}
        if given["weights"] is not None:
            weights = given["weights"].to(**dev)
        if given["means"] is not None:
            means = given["means"].to(**dev)
        if given["precisions"] is not None:
            prec_chol = em.precision_cholesky_from_precisions(given["precisions"].to(**dev), cov_type)
            cov = em.covariances_from_precisions(given["precisions"].to(**dev), cov_type)
        else:
            prec_chol = em.precision_cholesky(cov, cov_type)
        self._set_params(weights, means, cov, prec_chol)
        broadcast_(*(self._buffers[n] for n in _PARAMS))
        self.n_iter_, self.lower_bound_, self.lower_bounds_, self.converged_ = 0, -math.inf, [], False
        self.fitted = True  # usable parameters from here on (mid-fit checkpoints included)

    # ------------------------------------------------------------------ evaluation

    def _shared_step(self, batch: Any, stage: str, batch_idx: int = 0) -> Tensor | None:
        """Mean log-likelihood of a batch under the current parameters; ``{stage}/log_likelihood``
        logs the data set's mean (under DDP each row once: see lightning_genmodels/ddp.py).
        Within fit, validation scores the parameters after the epoch's M-step."""
        if not (self.fitted or self._in_progress):
            if self._trainer is not None and self._trainer.sanity_checking:
                return None  # fit's sanity check, before initialisation
            self._check_fitted()  # Trainer.validate/test of an unfitted model
        x = batch_tensor(batch).to(self.dtype)
        log_prob = torch.logsumexp(self._joint_log_prob(x), dim=1)
        if not finite_on_every_rank(self, log_prob):  # (a NaN {stage}/log_likelihood was logged, silently)
            bad = int((~torch.isfinite(log_prob)).sum())
            raise ValueError(
                f"{stage}: log p(x) is not finite for {bad} of {x.shape[0]} rows of a batch"
                f"{'' if bad else ' on another rank'}: the data contain NaN or infinite values "
                "(or values so large that every density underflows: scale the data)"
            )
        if self.eval_means is None:  # (not in __init__: repr stays scikit-learn's, GaussianMixture())
            self.eval_means = eval_means(("log_likelihood",)).to(self.device)
        log_row_means(self, self.eval_means, stage, {"log_likelihood": log_prob}, batch_idx)
        return log_prob.mean()

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        return self._shared_step(batch, "val", batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        return self._shared_step(batch, "test", batch_idx)
