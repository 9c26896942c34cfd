"""Gaussian-mixture E-step: joint log-probabilities and the EM sufficient statistics.

Parameters follow scikit-learn's ``GaussianMixture``: ``log_weights`` [K] = log w_k, ``means``
[K, D] and ``prec_chol`` = ``precisions_cholesky_``, the Cholesky factor P of each precision
matrix (precision = P Pᵀ) in the layout of the covariance type:

    full [K, D, D] (upper-triangular)   tied [D, D]   diag [K, D] (1 / σ)   spherical [K]

The joint log-probability of row n under component k (Bishop, PRML eq. 9.7 and 2.43) is

    log w_k + log N(x_n | k) = log w_k - ½ (D log 2π + ||(x_n - μ_k) P_k||²) + Σ_d log (P_k)_dd,

the responsibilities are its softmax over k (PRML eq. 9.23), and one E-step pass accumulates,
with per-row weights s_n (1 when ``sample_weight`` is None), in float64 (PRML eqs. 9.24-9.27):

    nk [K] = Σ_n s_n r_nk               sx [K, D] = Σ_n s_n r_nk x_n
    sxx    = Σ_n s_n r_nk x_n x_nᵀ [K, D, D] (full)   Σ_n s_n x_n x_nᵀ [D, D] (tied)
             Σ_n s_n r_nk x_n² [K, D] (diag)          Σ_n s_n r_nk ||x_n||² [K] (spherical)
    loglik [] = Σ_n s_n log Σ_k exp(log w_k + log N(x_n | k))

Rows with s_n = 0 (DDP padding) contribute exactly nothing. The kernels make one pass over x
and never hold more than a tile of the N × K responsibility matrix.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor

# The layouts, the statistics' type and their moments formula are the GMM's own (gmm/em.py).
from ..gmm.em import (
    CHOLESKY_ERROR, COVARIANCE_TYPES, CovarianceType, GMMStats, MStep, m_step, moments, precision_cholesky,
)
from ..gmm.em import covariance_shape as prec_chol_shape
from .build import Impl, load_library, register_on_load, use_ext

LOG_2PI = math.log(2.0 * math.pi)


def _check_inputs(
    x: Tensor,
    log_weights: Tensor,
    means: Tensor,
    prec_chol: Tensor,
    covariance_type: str,
    sample_weight: Tensor | None = None,
) -> None:
    """Raise ValueError/TypeError naming the argument when the inputs do not fit together."""
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}")
    named = {"x": x, "log_weights": log_weights, "means": means, "prec_chol": prec_chol}
    if sample_weight is not None:
        named["sample_weight"] = sample_weight
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    for name, t in named.items():
        if t.dtype != x.dtype:
            raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on the device of x ({x.device}), got {t.device}")
    if x.dim() != 2 or x.shape[1] < 1:
        raise ValueError(f"x must be [N, D] with D >= 1, got shape {tuple(x.shape)}")
    n, d = x.shape
    if log_weights.dim() != 1 or log_weights.shape[0] < 1:
        raise ValueError(f"log_weights must be [K] with K >= 1, got shape {tuple(log_weights.shape)}")
    k = log_weights.shape[0]
    if tuple(means.shape) != (k, d):
        raise ValueError(f"means must be [K, D] = {(k, d)}, got shape {tuple(means.shape)}")
    expected = prec_chol_shape(covariance_type, k, d)
    if tuple(prec_chol.shape) != expected:
        raise ValueError(
            f"prec_chol must be {list(expected)} for covariance_type={covariance_type!r}, "
            f"got shape {tuple(prec_chol.shape)}"
        )
    if sample_weight is not None and tuple(sample_weight.shape) != (n,):
        raise ValueError(f"sample_weight must be [N] = [{n}], got shape {tuple(sample_weight.shape)}")
    if sample_weight is None:
        return
    bad = ~(torch.isfinite(sample_weight) & (sample_weight >= 0))
    if torch.compiler.is_compiling():  # no data-dependent raise in a graph: a check when it runs
        torch._assert_async(~bad.any(), "sample_weight must be finite and >= 0")
    elif bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"sample_weight must be finite and >= 0, got {float(sample_weight[i])} at row {i}")


# --- reference: the specification --------------------------------------------------------


def _log_gaussian_ref(x: Tensor, means: Tensor, prec_chol: Tensor, covariance_type: str) -> Tensor:
    """log N(x_n | μ_k, (P_k P_kᵀ)⁻¹) as [N, K] float64, as scikit-learn's
    ``_estimate_log_gaussian_prob``: quadratic forms expanded into matrix products."""
    x, means, prec_chol = x.double(), means.double(), prec_chol.double()
    n, d = x.shape
    k = means.shape[0]
    # 1. log det P_k = Σ_d log (P_k)_dd
    if covariance_type == "full":
        log_det = torch.log(torch.diagonal(prec_chol, dim1=-2, dim2=-1)).sum(-1)
    elif covariance_type == "tied":
        log_det = torch.log(torch.diagonal(prec_chol)).sum().expand(k)
    elif covariance_type == "diag":
        log_det = torch.log(prec_chol).sum(-1)
    else:
        log_det = d * torch.log(prec_chol)
    # 2. Mahalanobis distance ||(x_n - μ_k) P_k||²
    if covariance_type == "full":
        maha = torch.empty(n, k, dtype=torch.float64, device=x.device)
        for j in range(k):
            y = (x - means[j]) @ prec_chol[j]
            maha[:, j] = y.square().sum(-1)
    elif covariance_type == "tied":
        y = x @ prec_chol
        mu = means @ prec_chol
        maha = y.square().sum(-1, keepdim=True) - 2.0 * y @ mu.T + mu.square().sum(-1)
    elif covariance_type == "diag":
        prec = prec_chol.square()
        maha = (means.square() * prec).sum(-1) - 2.0 * x @ (means * prec).T + x.square() @ prec.T
    else:
        prec = prec_chol.square()
        maha = (
            means.square().sum(-1) * prec
            - 2.0 * (x @ means.T) * prec
            + x.square().sum(-1, keepdim=True) * prec
        )
    return -0.5 * (d * LOG_2PI + maha) + log_det


def _gmm_log_prob_ref(
    x: Tensor, log_weights: Tensor, means: Tensor, prec_chol: Tensor, covariance_type: str
) -> Tensor:
    """Joint log-probabilities [N, K] in x's dtype, computed in float64."""
    joint = log_weights.double() + _log_gaussian_ref(x, means, prec_chol, covariance_type)
    return joint.to(x.dtype)


def _gmm_em_stats_ref(
    x: Tensor,
    sample_weight: Tensor | None,
    log_weights: Tensor,
    means: Tensor,
    prec_chol: Tensor,
    covariance_type: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(nk, sx, sxx, loglik) in float64; argument order of the op's schema."""
    x64 = x.double()
    n, d = x64.shape
    # 1. E-step: joint log-probabilities, their log-sum-exp and the responsibilities (PRML 9.23)
    joint = log_weights.double() + _log_gaussian_ref(x64, means, prec_chol, covariance_type)
    log_norm = torch.logsumexp(joint, dim=1)
    resp = torch.exp(joint - log_norm[:, None])
    s = torch.ones(n, dtype=torch.float64, device=x.device) if sample_weight is None else sample_weight.double()
    # Rows of weight 0 contribute exactly 0, even where their likelihood is not finite.
    loglik = torch.where(s != 0, s * log_norm, 0.0).sum()
    # 2. statistics (PRML 9.24-9.27, before normalisation)
    nk, sx, sxx, _ = moments(x64, resp, covariance_type, s)
    return nk, sx, sxx, loglik


# --- public wrappers ---------------------------------------------------------------------


def gmm_em_stats(
    x: Tensor,
    log_weights: Tensor,
    means: Tensor,
    prec_chol: Tensor,
    covariance_type: CovarianceType,
    sample_weight: Tensor | None = None,
    *,
    impl: Impl = "auto",
) -> GMMStats:
    """One fused E-step pass: the EM sufficient statistics of x under the mixture.

    Args:
        x: [N, D] float32 or float64 (any strides).
        log_weights: [K] log mixture weights.
        means: [K, D].
        prec_chol: Cholesky factors of the precisions, scikit-learn layout (module docstring),
            with positive entries (diag, spherical) or diagonals (full, tied): log det takes
            their logarithm, so others give NaN or -inf, unchecked (as scikit-learn's).
        covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
        sample_weight: [N] non-negative finite row weights (0 drops a padding row from loglik and,
            when its features are finite, from every statistic: 0 x NaN is NaN); None means ones.
            The float32 kernels multiply in float32: weights near float32's maximum (3e38)
            overflow there, where the float64 reference does not.
        impl: ``"ext"`` the compiled kernel, ``"ref"`` the PyTorch reference, ``"auto"`` the
            kernel when it builds, else the reference.

    Returns:
        GMMStats(nk [K], sx [K, D], sxx, loglik []) in float64; sxx is [K, D, D] (full),
        [D, D] (tied, Σ s_n x_n x_nᵀ), [K, D] (diag) or [K] (spherical). A row with a NaN
        feature makes them NaN, loglik included (the modules reject NaN input before this op).
        The kernels compute distances in x's dtype: float32 data whose squared distances pass
        float32's range (features beyond about 1.8e19) give loglik -inf where the float64
        reference stays finite; the estimator and module stop there with an error that says
        to scale the data.
        The CPU kernel runs with subnormal floats flushed to zero (the float mode is restored
        after the call): a value below the dtype's smallest normal, in x or in a
        responsibility, counts as 0 there. Its float32 diag, spherical and tied second moments
        are raw sums Σ r x²; where they would cancel in Σ r x² / n_k − μ² (a component over
        ~90 of its standard deviations from the origin in some feature), the call is redone by
        the float64 kernel, at its speed.
    """
    _check_inputs(x, log_weights, means, prec_chol, covariance_type, sample_weight)
    if use_ext(impl, x.device, (x, log_weights, means, prec_chol, sample_weight)):
        out = torch.ops.lightning_genmodels.gmm_em_stats(
            x, sample_weight, log_weights, means, prec_chol, covariance_type
        )
    else:
        out = _gmm_em_stats_ref(x, sample_weight, log_weights, means, prec_chol, covariance_type)
    return GMMStats(*out)


def gmm_log_prob(
    x: Tensor,
    log_weights: Tensor,
    means: Tensor,
    prec_chol: Tensor,
    covariance_type: CovarianceType,
    *,
    impl: Impl = "auto",
) -> Tensor:
    """Joint log-probabilities log w_k + log N(x_n | k).

    Args: as :func:`gmm_em_stats`.

    Returns:
        [N, K] in x's dtype; ``torch.logsumexp(out, 1)`` is scikit-learn's ``score_samples``.
    """
    _check_inputs(x, log_weights, means, prec_chol, covariance_type)
    if use_ext(impl, x.device, (x, log_weights, means, prec_chol)):
        return torch.ops.lightning_genmodels.gmm_log_prob(x, log_weights, means, prec_chol, covariance_type)
    return _gmm_log_prob_ref(x, log_weights, means, prec_chol, covariance_type)


def gmm_m_step(
    stats: GMMStats,
    covariance_type: CovarianceType,
    reg_covar: float,
    eps: float,
    prev_means: Tensor | None = None,
    prev_covariances: Tensor | None = None,
    *,
    impl: Impl = "auto",
) -> tuple[MStep, Tensor]:
    """The M-step and the new precisions' Cholesky factors: :func:`~..gmm.em.m_step`, then
    :func:`~..gmm.em.precision_cholesky` (the reference, with the same arguments). Diag and
    spherical on the CPU take one C++ pass (a tenth of a D = 50 EM iteration in ATen calls);
    full and tied (Cholesky factorisations) and CUDA tensors always take the reference.

    Returns:
        (MStep, prec_chol), float64.

    Raises:
        ValueError: a covariance is not positive definite (advice: increase ``reg_covar``).
    """
    _check_m_step_inputs(stats, covariance_type, reg_covar, eps, prev_means, prev_covariances)
    inputs = (*stats, prev_means, prev_covariances)
    if covariance_type in ("diag", "spherical") and stats.nk.device.type == "cpu" and use_ext(impl, None, inputs):
        try:
            weights, means, cov, prec_chol, empty = torch.ops.lightning_genmodels.gmm_m_step(
                stats.nk, stats.sx, stats.sxx, covariance_type, reg_covar, eps, prev_means, prev_covariances
            )
        except ValueError:  # only the covariance check raises ValueError (shapes: RuntimeError)
            raise ValueError(CHOLESKY_ERROR) from None
        return MStep(weights, means, cov, empty), prec_chol
    step = m_step(stats, covariance_type, reg_covar, eps, prev_means, prev_covariances)
    return step, precision_cholesky(step.covariances, covariance_type)


def _check_m_step_inputs(
    stats: GMMStats, covariance_type: str, reg_covar: float, eps: float,
    prev_means: Tensor | None = None, prev_covariances: Tensor | None = None,
) -> None:
    """Raise ValueError naming a bad option or statistic shape (not the covariance check's advice),
    or previous parameters of the wrong shape (the reference broadcast them)."""
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}")
    for name, value in (("reg_covar", reg_covar), ("eps", eps)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < math.inf:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    nk, sx, sxx = stats.nk, stats.sx, stats.sxx
    if nk.dim() != 1 or sx.dim() != 2 or sx.shape[0] != nk.shape[0]:
        raise ValueError(f"stats must have nk [K] and sx [K, D], got {tuple(nk.shape)} and {tuple(sx.shape)}")
    want = prec_chol_shape(covariance_type, *sx.shape)
    if tuple(sxx.shape) != want:
        raise ValueError(f"stats.sxx must be {list(want)} for covariance_type={covariance_type!r}, "
                         f"got {tuple(sxx.shape)}")
    for name, t, shape in (("prev_means", prev_means, tuple(sx.shape)), ("prev_covariances", prev_covariances, want)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {list(shape)}, got {tuple(t.shape)}")


def _register_fake() -> None:
    @torch.library.register_fake("lightning_genmodels::gmm_em_stats")
    def _(x, sample_weight, log_weights, means, prec_chol, covariance_type):
        torch._check(covariance_type in COVARIANCE_TYPES, lambda: f"unknown covariance_type {covariance_type!r}")
        k, d = means.shape
        f64 = {"dtype": torch.float64}
        sxx = x.new_empty(prec_chol_shape(covariance_type, k, d), **f64)
        return x.new_empty((k,), **f64), x.new_empty((k, d), **f64), sxx, x.new_empty((), **f64)

    @torch.library.register_fake("lightning_genmodels::gmm_m_step")
    def _(nk, sx, sxx, covariance_type, reg_covar, eps, prev_means, prev_covariances):
        f64 = {"dtype": torch.float64}
        return (nk.new_empty(nk.shape, **f64), sx.new_empty(sx.shape, **f64), sxx.new_empty(sxx.shape, **f64),
                sxx.new_empty(sxx.shape, **f64), nk.new_empty(nk.shape, dtype=torch.bool))

    @torch.library.register_fake("lightning_genmodels::gmm_log_prob")
    def _(x, log_weights, means, prec_chol, covariance_type):
        return x.new_empty((x.shape[0], log_weights.shape[0]))


register_on_load(_register_fake)


# --- CPU instruction set of the kernels ----------------------------------------------------

CpuIsa = Literal["auto", "avx512", "avx2", "generic"]
CPU_ISAS: tuple[str, ...] = ("avx512", "avx2", "generic")
CPU_ISA_ENV = "LGM_GMM_CPU_ISA"


def gmm_cpu_isa(isa: CpuIsa | None = None) -> str:
    """The instruction set the CPU kernels take for ``isa`` (None: ``$LGM_GMM_CPU_ISA``, else
    ``auto``, the widest this CPU runs): ``"avx512"``, ``"avx2"`` or ``"generic"`` (16-byte vectors).

    Raises:
        ValueError: for an unknown name, or one this CPU cannot run.
        ExtensionBuildError: when the extension does not build.
    """
    load_library()
    return torch.ops.lightning_genmodels.gmm_cpu_isa("" if isa is None else isa)


def available_cpu_isas() -> list[str]:
    """Every instruction set of the CPU kernels that this CPU runs, widest first."""
    out = []
    for isa in CPU_ISAS:
        try:
            out.append(gmm_cpu_isa(isa))
        except ValueError:
            pass
    return out


@contextmanager
def force_cpu_isa(isa: CpuIsa) -> Iterator[str]:
    """Run the CPU kernels on ``isa`` inside the block (sets ``$LGM_GMM_CPU_ISA``; not thread-safe).

    Raises ValueError at entry when this CPU cannot run ``isa``: never a silent fallback.
    """
    resolved = gmm_cpu_isa(isa)
    old = os.environ.get(CPU_ISA_ENV)
    os.environ[CPU_ISA_ENV] = isa
    try:
        yield resolved
    finally:
        if old is None:
            os.environ.pop(CPU_ISA_ENV, None)
        else:
            os.environ[CPU_ISA_ENV] = old
