"""The scikit-learn face of :class:`~.module.GaussianMixture`: ``fit(X)`` on in-memory rows,
``predict``/``score``/``sample``/``bic``/``aic``, and ``get_params``/``set_params`` so that
``sklearn.base.clone`` and ``GridSearchCV`` work (scikit-learn itself is not imported)."""
from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import numbers
import warnings
from typing import Any, Sequence, Union

import numpy as np
import torch
from lightning.pytorch import Trainer
from torch import Tensor

from ..module_utils import as_integer, check_integer
from ..ops.build import IMPLS
from . import em
from .batches import all_finite, batch_tensor
from .init import INIT_PARAMS
from .rows import TensorDataModule

ArrayLike = Union[Tensor, np.ndarray, Sequence[Any]]
PARAMS = ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_")
# fit(X)'s strategy names -> the DDP strategies for EM (see strategy.py)
_EM_STRATEGIES = {"ddp": "ddp_em", "ddp_spawn": "ddp_em_spawn"}


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the lower bound settled (scikit-learn's namesake)."""


class NotFittedError(RuntimeError, ValueError, AttributeError):
    """A fitted model was needed: scikit-learn's namesake, with its bases (ValueError,
    AttributeError), and RuntimeError, which this raised before."""


class ScikitLearnMixin:
    """scikit-learn's estimator API over the LightningModule's EM (mixed into GaussianMixture)."""

    # ------------------------------------------------------------------ parameters

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, as given (scikit-learn's estimator API)."""
        return dict(self._sk_params)

    def set_params(self, **params: Any) -> "ScikitLearnMixin":
        """Change constructor arguments. As in scikit-learn, a fitted model stays fitted (so
        ``warm_start`` continues from it) unless ``n_components`` or ``covariance_type`` change.
        An invalid value raises and leaves the model as it was."""
        unknown = sorted(set(params) - set(self._sk_params))
        if unknown:
            raise ValueError(f"invalid parameters {unknown} for {type(self).__name__}; "
                             f"valid: {sorted(self._sk_params)}")
        shape_kept = all(params.get(k, self._sk_params[k]) == self._sk_params[k]
                         for k in ("n_components", "covariance_type"))
        fitted = self.state_dict() if self.fitted and shape_kept else None
        device, dtype = self.device, self.dtype
        before = dict(self.__dict__)  # __init__ replaces, not mutates, what it holds
        try:
            self.__init__(**{**self._sk_params, **params})
        except Exception:  # (it raised after resetting the module: the fit was lost)
            self.__dict__.clear()
            self.__dict__.update(before)
            raise
        if fitted is not None:
            self.to(device=device, dtype=dtype)
            self.load_state_dict(fitted)
        return self

    def extra_repr(self) -> str:
        """The arguments that differ from their defaults, as scikit-learn prints an estimator
        (``GaussianMixture(n_components=3, covariance_type='diag')``); arrays by their shape."""
        defaults: dict[str, Any] = {}
        for cls in reversed(type(self).__mro__):  # a subclass's defaults over ours (it may take **kwargs)
            if "__init__" in vars(cls):
                defaults.update((k, p.default) for k, p in inspect.signature(cls.__init__).parameters.items()
                                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
        shown = []
        for name, value in self._sk_params.items():
            if isinstance(value, (Tensor, np.ndarray)):
                shown.append(f"{name}=<{type(value).__name__} {list(value.shape)}>")
            elif name not in defaults or defaults[name] is inspect.Parameter.empty or value != defaults[name]:
                shown.append(f"{name}={value!r}")
        return ", ".join(shown)

    def __getattr__(self, name: str) -> Any:
        """A constructor argument as an attribute, as scikit-learn's estimators keep them
        (``gmm.covariance_type``, read by its examples); else nn.Module's lookup."""
        params = self.__dict__.get("_sk_params")
        if params is not None and name in params:
            return params[name]
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        """Setting one of our constructor arguments is ``set_params`` (it was silently ignored); a
        subclass's own are its attributes to set."""
        params = self.__dict__.get("_sk_params")
        if params is not None and name in params and name in self.__dict__.get("_sk_base", ()):
            self.set_params(**{name: value})
        else:
            super().__setattr__(name, value)

    def __sklearn_is_fitted__(self) -> bool:
        """scikit-learn's ``check_is_fitted`` asks this; without it, it takes the attributes
        ending in ``_`` that an unfitted model already holds (``converged_``, ``n_iter_``) for a fit."""
        return bool(self.fitted)

    def __sklearn_tags__(self) -> Any:
        """scikit-learn >= 1.6 asks every estimator for its tags; only it calls this."""
        from sklearn.utils import Tags, TargetTags

        return Tags(estimator_type="density_estimator", target_tags=TargetTags(required=False))

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        X: ArrayLike,
        y: Any = None,
        *,
        trainer: Trainer | None = None,
        accelerator: str = "auto",
        devices: int | str | list[int] = 1,
        strategy: str = "auto",
        batch_size: int = 65536,
        **trainer_kwargs: Any,
    ) -> "ScikitLearnMixin":
        """Fit on in-memory rows with a Lightning Trainer, as scikit-learn's ``fit``.

        The module's dtype follows X: float32 or float64 as given; other tensors become
        torch's default dtype, other NumPy arrays float64. Batches are views of X (no copy)
        and X is checked for NaN/inf once. Under DDP each rank takes a contiguous shard of X.
        The fitted model is left on the Trainer's root device (a GPU fit stays on the GPU).

        Args:
            X: [N, D] Tensor or NumPy array, finite, N >= n_components.
            y: ignored (scikit-learn's signature).
            trainer: a Trainer to use instead of the one built from the arguments below.
            accelerator: the built Trainer's accelerator (``"auto"``, ``"cpu"``, ``"gpu"``).
            devices: its devices (2 or more: DDP, ``"ddp_em"``, under ``strategy="auto"``).
            strategy: its strategy (``"ddp"`` means ``"ddp_em"``, DDP without gradient sync).
            batch_size: rows per E-step batch (views of X, so no memory cost; the result does not
                depend on it but for float rounding). Fewer, larger calls of the op cost less:
                65536 rather than 8192 saves ~15% per EM iteration at K=100, D=784.
            **trainer_kwargs: further ``Trainer`` arguments; they override the built Trainer's
                (``max_epochs``, ``logger``, ``enable_progress_bar``, ...).

        Returns:
            self, fitted.

        Raises:
            ValueError: X is not 2-D, has NaN/inf, or fewer rows than components; batch_size is
                not an integer >= 1; or a covariance is singular (increase ``reg_covar``). A fit
                that raises leaves the model as it was (fitted or not, its dtype and D).
        """
        batch_size = check_integer("batch_size", batch_size, 1)  # (True and 100.0 reached the loader)
        x = _as_tensor(X)
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float64 if not isinstance(X, Tensor) else torch.get_default_dtype())
        x = _rows(x.detach().cpu().contiguous())
        if not all_finite(x):
            raise ValueError("X contains NaN or infinite values")
        self._check_enough_samples(x.shape[0])
        self._check_n_features(x.shape[1])
        warm = self.hparams.warm_start and self.fitted
        if warm and x.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {x.shape[1]} features, the model was fitted with {self.n_features_in_}")
        saved = self._snapshot()
        try:
            self._fit_rows(x, warm, trainer, accelerator, devices, strategy, batch_size, trainer_kwargs)
        except BaseException:  # (a failed fit had left a half-initialised model, or a refit's dtype and D)
            self._restore(saved)
            raise
        return self

    def _fit_rows(self, x: Tensor, warm: bool, trainer: Trainer | None, accelerator: str, devices: Any,
                  strategy: str, batch_size: int, trainer_kwargs: dict[str, Any]) -> None:
        """fit(X)'s Trainer run on checked rows x [N, D]."""
        self.to(x.dtype)
        self._allocate(x.shape[1])
        own_trainer = trainer is None
        with contextlib.ExitStack() as stack:
            if trainer is None:
                stack.enter_context(_quiet_lightning())
                epochs = self.hparams.max_iter * (1 if warm else self.hparams.n_init)
                if strategy == "auto" and _several(devices):
                    strategy = "ddp"
                trainer = Trainer(**{
                    "max_epochs": max(1, epochs), "accelerator": accelerator, "devices": devices,
                    "strategy": _EM_STRATEGIES.get(strategy, strategy) if isinstance(strategy, str) else strategy,
                    "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "limit_val_batches": 0, "num_sanity_val_steps": 0,
                    **trainer_kwargs,
                })
            self._data_finite, self._log_bound = True, not own_trainer
            try:
                trainer.fit(self, datamodule=TensorDataModule(x, batch_size))
            finally:
                self._data_finite, self._log_bound = False, True
        if not self.fitted:  # (the model came back unfitted, silently; the caller's state is restored)
            raise RuntimeError(
                f"fit(X) ended before its first EM iteration finished (trainer state: {trainer.state.status.value}, "
                f"max_epochs={trainer.max_epochs}, max_steps={trainer.max_steps}): no model was fitted"
            )
        # Lightning's teardown moved the module to the CPU: a model fitted on a GPU stays there,
        # so predict and score run where it was fitted (``.cpu()`` moves it).
        self.to(trainer.strategy.root_device)

    def _snapshot(self) -> dict[str, Any]:
        """What fit(X) changes: buffers, fit state, E-step sums, device and dtype."""
        return {"buffers": {k: v.clone() for k, v in self._buffers.items()},
                "state": copy.deepcopy(self.get_extra_state()), "em_stats": self.em_stats,
                "device": self.device, "dtype": self.dtype}

    def _restore(self, saved: dict[str, Any]) -> None:
        """The model as :meth:`_snapshot` saw it, after a failed fit."""
        self._buffers.update(saved["buffers"])
        self.set_extra_state(saved["state"])
        self.em_stats = saved["em_stats"]
        self.to(device=saved["device"], dtype=saved["dtype"])

    def fit_predict(self, X: ArrayLike, y: Any = None, **fit_kwargs: Any) -> Tensor:
        """``fit(X)`` then ``predict(X)``: labels [N] (int64)."""
        return self.fit(X, **fit_kwargs).predict(X)

    def _check_enough_samples(self, n_total: float) -> None:
        if n_total < self.hparams.n_components:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = "
                f"{self.hparams.n_components}, n_samples = {n_total:g}"
            )

    def _check_n_features(self, n_features: int) -> None:
        expected = self.hparams.n_features
        if expected is not None and n_features != expected:
            raise ValueError(f"X has {n_features} features, but the model was built with n_features={expected}")

    # ------------------------------------------------------------------ inference

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Per row: the most probable component ``labels`` [B] and ``log_prob`` log p(x) [B]."""
        self._check_fitted()
        joint = self._ranking_log_prob(self._input(batch_tensor(batch)))
        return {"labels": joint.argmax(dim=1), "log_prob": torch.logsumexp(joint, dim=1).to(self.dtype)}

    @torch.no_grad()
    def sample_images(self, n: int, seed: int = 0) -> Tensor:
        """``n`` samples as square images [n, 1, H, W] clamped to [0, 1] (D = H·W, e.g. MNIST's
        784 pixels), for :class:`~lightning_genmodels.callbacks.SampleGrid`."""
        x, _ = self.sample(n, generator=seed)
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ValueError(f"sample_images needs square images, but D = {x.shape[1]}")
        return x.reshape(n, 1, side, side).clamp(0.0, 1.0)


    def _input(self, X: ArrayLike) -> Tensor:
        """X as a [N, D] tensor on the module's device and dtype, validated against the fit."""
        self._check_fitted()
        x = _rows(_as_tensor(X))
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {x.shape[1]} features, the model was fitted with {self.n_features_in_}")
        x = x.to(device=self.device, dtype=self.dtype)
        if not all_finite(x):
            raise ValueError("X contains NaN or infinite values")
        return x

    @torch.no_grad()
    def _estimate_weighted_log_prob(self, X: ArrayLike) -> Tensor:
        return self._joint_log_prob(self._input(X))

    def _log_likelihoods(self, X: ArrayLike) -> Tensor:
        """log p(x_n) [N] on the module's device."""
        return torch.logsumexp(self._estimate_weighted_log_prob(X), dim=1)

    def score_samples(self, X: ArrayLike) -> Tensor:
        """log p(x_n) [N], on X's device (the CPU for NumPy input)."""
        return self._log_likelihoods(X).to(_device_of(X))

    def score(self, X: ArrayLike, y: Any = None) -> float:
        """Mean log-likelihood of X (higher is better), averaged where it was computed."""
        return float(self._log_likelihoods(X).double().mean())

    @torch.no_grad()
    def predict(self, X: ArrayLike) -> Tensor:
        """Most probable component of each row [N] (int64), on X's device (the CPU for NumPy input)."""
        return self._ranking_log_prob(self._input(X)).argmax(dim=1).to(_device_of(X))

    @torch.no_grad()
    def predict_proba(self, X: ArrayLike) -> Tensor:
        """Responsibilities p(k | x_n) [N, K], on X's device (the CPU for NumPy input)."""
        joint = self._ranking_log_prob(self._input(X))
        return torch.softmax(joint, dim=1).to(_device_of(X), self.dtype)

    def _n_parameters(self) -> int:
        return em.n_parameters(self.hparams.covariance_type, self.hparams.n_components, self.n_features_in_)

    def bic(self, X: ArrayLike) -> float:
        """Bayesian information criterion −2 log L + p log N (lower is better)."""
        log_lik = self._log_likelihoods(X)  # (len(X) first: a TypeError for a scalar X)
        n = log_lik.shape[0]
        return -2.0 * float(log_lik.double().mean()) * n + self._n_parameters() * math.log(n)

    def aic(self, X: ArrayLike) -> float:
        """Akaike information criterion −2 log L + 2 p (lower is better)."""
        log_lik = self._log_likelihoods(X)
        return -2.0 * float(log_lik.double().mean()) * log_lik.shape[0] + 2 * self._n_parameters()

    @torch.no_grad()
    def sample(self, n_samples: int = 1, generator: torch.Generator | int | None = None) -> tuple[Tensor, Tensor]:
        """Draw from the mixture on the generator's device: a seed gives the same rows wherever
        the model was fitted.

        Args:
            n_samples: rows to draw, an integer >= 1 (Python's, NumPy's or a 0-d integer tensor).
            generator: a torch.Generator (its device draws), an integer seed of any of those kinds
                in [-2**63, 2**64) (``torch.Generator.manual_seed``'s range) for a CPU generator,
                or None for torch's global CPU generator.

        Returns:
            (X [n_samples, D] in the model's dtype, labels [n_samples] int64), grouped by
            component in increasing order as scikit-learn's ``sample``.
        """
        self._check_fitted()
        n = as_integer(n_samples)
        if n is None or n < 1:
            raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
        n_samples = n
        generator = _generator(generator)
        device = generator.device if generator is not None else torch.device("cpu")
        d = self.means_.shape[1]
        weights, means, covariances = (t.to(device, torch.float64)
                                       for t in (self.weights_, self.means_, self.covariances_))
        counts = torch.multinomial(weights, n_samples, replacement=True, generator=generator)
        labels = torch.sort(counts).values
        z = torch.randn(n_samples, d, generator=generator, device=device, dtype=torch.float64)
        x = em.sample_from_normals(z, labels, means, covariances, self.hparams.covariance_type)
        return x.to(self.dtype), labels


def _generator(generator: Any) -> torch.Generator | None:
    """sample's ``generator``: a torch.Generator or None as given, an integer seed as a CPU generator."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    seed = as_integer(generator)
    if seed is None:
        raise ValueError(f"generator must be a torch.Generator, an integer seed or None, got {generator!r}")
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"generator seed must lie in [-2**63, 2**64), got {seed}")
    return torch.Generator().manual_seed(seed)


def _as_tensor(X: ArrayLike) -> Tensor:
    """X as a real tensor: a NumPy object array of numbers (as scikit-learn accepts) as float64,
    a big-endian one in native byte order (torch refuses those), a read-only one without
    torch's warning about writing to it (X is only read); text and other non-numeric arrays
    refused, naming their dtype."""
    if isinstance(X, Tensor):
        return _real(X)
    a = np.asarray(X)
    if a.dtype.kind == "O":
        try:
            a = a.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"X of dtype object must hold numbers: {e}") from None
    elif a.dtype.kind not in "biufc":
        raise ValueError(f"X must hold numbers, got a NumPy array of dtype {a.dtype}")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    with warnings.catch_warnings():  # (np.load(..., mmap_mode="r"), np.broadcast_to: read-only)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return _real(torch.as_tensor(a))


def _real(x: Tensor) -> Tensor:
    if x.is_complex():
        raise ValueError(f"X must hold real numbers, got dtype {x.dtype}")
    return x


def _rows(x: Tensor) -> Tensor:
    """x if it is [N, D] with N, D >= 1, else ValueError naming the shape."""
    if x.dim() != 2:
        raise ValueError(f"X must be 2-D [n_samples, n_features], got shape {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"X needs at least one sample and one feature, got shape {tuple(x.shape)}")
    return x


def _several(devices: Any) -> bool:
    """Whether a Trainer's ``devices`` names more than one device (``"auto"`` and -1: unknown here)."""
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    if isinstance(devices, str):
        parts = [p for p in devices.split(",") if p.strip()]
        return len(parts) > 1 or (len(parts) == 1 and parts[0].strip().isdigit() and int(parts[0]) > 1)
    return isinstance(devices, int) and devices > 1


def _device_of(X: ArrayLike) -> torch.device:
    """Where results for X go: a tensor's device, else the CPU."""
    return X.device if isinstance(X, Tensor) else torch.device("cpu")


# Lightning 2.6's own use of a torch pytree API that torch 2.14 deprecates: not ours to fix.
PYTREE_NOTE = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


@contextlib.contextmanager
def _quiet_lightning():
    """No Lightning banner or tips (info logs) during the scikit-learn-style fit, and not
    Lightning's pytree deprecation notice (:data:`PYTREE_NOTE`)."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=PYTREE_NOTE)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def check_options(
    covariance_type: str, init_params: str, impl: str, n_components: int, tol: float,
    reg_covar: float, max_iter: int, n_init: int, random_state: Any = None, verbose_interval: int = 10,
    n_features: Any = None, kmeans_max_iter: int = 300, kmeans_tol: float = 1e-4, verbose: int = 0,
    warm_start: bool = False,
) -> None:
    """Raise ValueError with the allowed values for an invalid constructor option."""
    for name, value, allowed in (
        ("covariance_type", covariance_type, em.COVARIANCE_TYPES),
        ("init_params", init_params, INIT_PARAMS),
        ("impl", impl, IMPLS),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    for name, value, low in (("n_components", n_components, 1), ("n_init", n_init, 1),
                             ("max_iter", max_iter, 0), ("verbose_interval", verbose_interval, 1),
                             ("kmeans_max_iter", kmeans_max_iter, 1)):
        if not _is_int(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value in (("tol", tol), ("reg_covar", reg_covar), ("kmeans_tol", kmeans_tol)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not 0.0 <= value < math.inf:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if random_state is not None and not _is_int(random_state):
        raise ValueError(f"random_state must be an int seed or None, got {random_state!r}")
    if n_features is not None and (not _is_int(n_features) or n_features < 1):
        raise ValueError(f"n_features must be an integer >= 1 or None, got {n_features!r}")
    if not isinstance(verbose, (bool, np.bool_)) and (not _is_int(verbose) or verbose < 0):
        raise ValueError(f"verbose must be an integer >= 0 or a bool, got {verbose!r}")  # scikit-learn's rule
    if not isinstance(warm_start, (bool, np.bool_)):
        raise ValueError(f"warm_start must be a bool, got {warm_start!r}")


def _is_int(value: Any) -> bool:
    """An integer (Python's or NumPy's), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
