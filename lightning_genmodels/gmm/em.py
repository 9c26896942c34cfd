"""Pure functions of Gaussian-mixture EM: the sufficient statistics of given responsibilities
(the moments half of the E-step, also the reference of the ``gmm_em_stats`` op), the M-step
from those raw moments, precision Cholesky factors, and the parameter count behind BIC/AIC.

Layouts follow scikit-learn's ``GaussianMixture`` (K components, D features):

    covariance_type   covariances / precisions / precisions_cholesky
    full              [K, D, D]        (precisions_cholesky upper-triangular: P = U Uᵀ)
    tied              [D, D]
    diag              [K, D]
    spherical         [K]

Every function here computes in float64; callers cast the results to the model's dtype.
"""
from __future__ import annotations

from typing import Any, Literal, NamedTuple, get_args

import numpy as np
import torch
from torch import Tensor

CovarianceType = Literal["full", "tied", "diag", "spherical"]
COVARIANCE_TYPES: tuple[str, ...] = get_args(CovarianceType)

CHOLESKY_ERROR = (
    "Fitting the mixture model failed because some components have ill-defined empirical "
    "covariance (for instance caused by singleton or collapsed samples). Try to decrease the "
    "number of components, increase reg_covar, or scale the input data."
)


class GMMStats(NamedTuple):
    """Sufficient statistics of one E-step pass, float64 (PRML eqs. 9.24-9.27 before dividing):
    nk [K] = Σ s r, sx [K, D] = Σ s r x, sxx (layout of :func:`covariance_shape`), loglik []."""

    nk: Tensor
    sx: Tensor
    sxx: Tensor
    loglik: Tensor


def covariance_shape(covariance_type: str, n_components: int, n_features: int) -> tuple[int, ...]:
    """Shape of the covariances, precisions, precisions_cholesky and ``sxx`` of a covariance type."""
    k, d = n_components, n_features
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]


class MStep(NamedTuple):
    """Parameters after one M-step (float64) and which components were empty."""

    weights: Tensor  # [K]
    means: Tensor  # [K, D]
    covariances: Tensor  # full [K, D, D], tied [D, D], diag [K, D], spherical [K]
    empty: Tensor  # [K] bool


def _add_to_diagonal(matrix: Tensor, value: float) -> Tensor:
    """matrix + value · I over the last two dimensions (out of place)."""
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    return matrix + value * eye


def m_step(
    stats: GMMStats,
    covariance_type: str,
    reg_covar: float,
    eps: float,
    prev_means: Tensor | None = None,
    prev_covariances: Tensor | None = None,
    centre: Tensor | None = None,
) -> MStep:
    """Maximum-likelihood mixture parameters from the E-step's raw moments (PRML eqs. 9.24-9.27).

    As scikit-learn's ``_estimate_gaussian_parameters``, every count gets ``10 · eps`` so that
    no weight is exactly 0 (nk' = nk + 10 eps):

        weights = nk' / Σ nk'         means μ = sx / nk'
        full  = Σ_n r_nk (x_n − μ)(x_n − μ)ᵀ / nk' + reg I = (sxx − c μ μᵀ) / nk' + reg I
        diag  = (sxx − c μ²) / nk' + reg         spherical = mean_d(diag)
        tied  = (sxx − Σ_k c_k μ_k μ_kᵀ) / Σ nk' + reg I

    with c = 2 nk' − nk = nk' + 10 eps: the covariances about μ, as scikit-learn's full. The raw
    form sxx / nk' − μ² (scikit-learn's diag and tied) adds 10 eps μ² / nk': in float32 (eps
    1.2e-7) at a component seeded by one point, as k-means++ and random_from_data seed them,
    1.2e-6 μ², which is 0.012 for a feature near 100 where the covariance should be reg_covar.

    Empty-component policy: a component whose count nk is below ``1e-10 · max(Σ nk, 1)`` (it lost
    all its points) keeps ``prev_means`` / ``prev_covariances`` when given (so it does not
    collapse onto the origin with covariance ``reg_covar``, as the plain formula would make it)
    and its weight stays the tiny ``10 eps / Σ nk'``; it stays dormant unless points come back.

    Args:
        stats: float64 moments of one E-step pass (``gmm_em_stats``).
        covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
        reg_covar: added to the diagonal of every covariance.
        eps: machine epsilon of the model's dtype (scikit-learn uses the data's).
        prev_means: [K, D] means before this step, kept for empty components.
        prev_covariances: covariances before this step, kept for empty components.
        centre: [D], the point ``sxx`` was taken about (:func:`moments`; ``sx`` stays raw), for
            data far from the origin, whose raw sxx loses the spread to cancellation; then the
            scatter is sxx − d s_cᵀ − s_c dᵀ + nk d dᵀ with d = μ − centre, s_c = sx − nk centre.

    Returns:
        MStep(weights [K], means [K, D], covariances, empty [K]) in float64.
    """
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}")
    nk_raw, sx, sxx = stats.nk.double(), stats.sx.double(), stats.sxx.double()
    # 1. counts, weights and means
    nk = nk_raw + 10.0 * eps
    total = nk.sum()
    weights = nk / total
    means = sx / nk[:, None]
    # 2. scatter Σ r (x − μ)(x − μ)ᵀ about the means, from sxx about ``centre`` or raw moments
    c = nk + 10.0 * eps
    if centre is not None:
        scatter = _scatter_about_centre(nk_raw, sx, sxx, means, centre.double(), covariance_type)
    elif covariance_type == "full":
        scatter = sxx - c[:, None, None] * means[:, :, None] * means[:, None, :]
    elif covariance_type == "tied":
        scatter = sxx - torch.einsum("k,ki,kj->ij", c, means, means)
    elif covariance_type == "diag":
        scatter = sxx - c[:, None] * means.square()
    else:
        scatter = sxx - c * means.square().sum(1)
    # 3. covariances
    if covariance_type == "full":
        cov = _add_to_diagonal(scatter / nk[:, None, None], reg_covar)
    elif covariance_type == "tied":
        cov = _add_to_diagonal(scatter / total, reg_covar)
    elif covariance_type == "diag":
        cov = scatter / nk[:, None] + reg_covar
    else:
        cov = scatter / nk / sx.shape[1] + reg_covar
    # 4. empty components keep their previous mean and covariance
    empty = nk_raw < 1e-10 * max(float(nk_raw.sum()), 1.0)
    if bool(empty.any()):
        if prev_means is not None:
            means = torch.where(empty[:, None], prev_means.double(), means)
        if prev_covariances is not None and covariance_type != "tied":
            shape = (-1,) + (1,) * (cov.dim() - 1)
            cov = torch.where(empty.reshape(shape), prev_covariances.double(), cov)
    return MStep(weights, means, cov, empty)


def _scatter_about_centre(
    nk: Tensor, sx: Tensor, sxx: Tensor, means: Tensor, centre: Tensor, covariance_type: str
) -> Tensor:
    """Σ_n r_nk (x_n − μ_k)(x_n − μ_k)ᵀ in the layout of the type (tied: summed over k) from
    sxx about ``centre`` [D] and raw sx: sxx − d s_cᵀ − s_c dᵀ + nk d dᵀ, d = μ − c, s_c = sx − nk c."""
    d = means - centre
    s_c = sx - nk[:, None] * centre
    if covariance_type == "full":
        return sxx - d[:, :, None] * s_c[:, None, :] - s_c[:, :, None] * d[:, None, :] + (
            nk[:, None, None] * d[:, :, None] * d[:, None, :])
    if covariance_type == "tied":
        return sxx - d.T @ s_c - s_c.T @ d + (nk[:, None] * d).T @ d
    per_feature = nk[:, None] * d.square() - 2.0 * d * s_c
    return sxx + (per_feature if covariance_type == "diag" else per_feature.sum(1))


def precision_cholesky(covariances: Tensor, covariance_type: str) -> Tensor:
    """Cholesky factors of the precisions from covariances (scikit-learn's
    ``_compute_precision_cholesky``): full/tied ``U = (L⁻¹)ᵀ`` with ``Σ = L Lᵀ``, so that
    ``Σ⁻¹ = U Uᵀ``; diag/spherical ``1 / √σ²``.

    Raises:
        ValueError: a covariance is not positive definite (advice: increase ``reg_covar``).
    """
    cov = covariances.double()
    if covariance_type in ("full", "tied"):
        chol, info = torch.linalg.cholesky_ex(cov)
        if bool((info != 0).any()):
            raise ValueError(CHOLESKY_ERROR)
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
        return torch.linalg.solve_triangular(chol, eye, upper=False).transpose(-1, -2)
    if not bool(torch.isfinite(cov).all()) or bool((cov <= 0).any()):
        raise ValueError(CHOLESKY_ERROR)
    return cov.rsqrt()


def precision_cholesky_from_precisions(precisions: Tensor, covariance_type: str) -> Tensor:
    """Upper-triangular ``U`` with ``P = U Uᵀ`` (scikit-learn's flip trick: chol(J P J) = L,
    U = J L J with J the exchange matrix); ``√P`` for diag/spherical. ``precisions`` as
    :func:`check_precisions` (run by :func:`check_given_init`) passed them."""
    prec = precisions.double()
    if covariance_type in ("full", "tied"):
        chol, info = torch.linalg.cholesky_ex(prec.flip(-1, -2))
        if bool((info != 0).any()):  # positive definite, yet too ill-conditioned for float64
            raise ValueError(f"precisions_init ({covariance_type!r}) is too ill-conditioned for a Cholesky factor")
        return chol.flip(-1, -2)
    return prec.sqrt()


def check_precisions(precisions: Tensor, covariance_type: str) -> None:
    """Raise ValueError naming the component unless every precision is symmetric positive definite
    (full/tied; symmetric as scikit-learn's ``np.allclose(P, Pᵀ)``) or positive (diag/spherical)."""
    prec = precisions.double()
    if covariance_type in ("full", "tied"):
        mats = prec.reshape(-1, *prec.shape[-2:])
        name = "precisions_init" if covariance_type == "tied" else "precisions_init[{}]"
        transposed = mats.transpose(-1, -2)
        asym = (mats - transposed).abs()
        not_sym = (asym > 1e-8 + 1e-5 * transposed.abs()).flatten(1).any(1)
        if bool(not_sym.any()):
            i = int(not_sym.nonzero()[0])
            raise ValueError(f"{name.format(i)} ({covariance_type!r}) must be symmetric, but "
                             f"max |P - Pᵀ| = {float(asym[i].max()):.6g}")
        _, info = torch.linalg.cholesky_ex(mats)
        if bool((info != 0).any()):
            i = int((info != 0).nonzero()[0])
            low = float(torch.linalg.eigvalsh(mats[i]).min())
            raise ValueError(f"{name.format(i)} ({covariance_type!r}) must be positive definite, but "
                             f"its smallest eigenvalue is {low:.6g}")
        return
    bad = (prec <= 0).nonzero()
    if bad.numel():
        i = tuple(bad[0].tolist())
        raise ValueError(f"precisions_init ({covariance_type!r}) must be positive, but "
                         f"precisions_init[{', '.join(map(str, i))}] = {float(prec[i]):.6g}")


def precisions_from_cholesky(prec_chol: Tensor, covariance_type: str) -> Tensor:
    """Precisions ``U Uᵀ`` (full/tied) or ``U²`` (diag/spherical)."""
    if covariance_type in ("full", "tied"):
        return prec_chol @ prec_chol.transpose(-1, -2)
    return prec_chol.square()


def covariances_from_precisions(precisions: Tensor, covariance_type: str) -> Tensor:
    """Inverse of the precisions (matrix inverse for full/tied, reciprocal otherwise)."""
    prec = precisions.double()
    if covariance_type in ("full", "tied"):
        return torch.linalg.inv(prec)
    return prec.reciprocal()


def moments(
    x: Tensor, resp: Tensor, covariance_type: str, sample_weight: Tensor | None = None, centre: Tensor | None = None
) -> GMMStats:
    """Raw moments of rows ``x`` under responsibilities ``resp`` (PRML eqs. 9.24-9.27 before
    dividing by N_k), float64, with row weights s (ones when None):

        nk = Σ_n s_n r_nk      sx = Σ_n s_n r_nk x_n
        sxx = Σ_n s_n r_nk x_n x_nᵀ (full)   Σ_n s_n x_n x_nᵀ (tied)
              Σ_n s_n r_nk x_n² (diag)       Σ_n s_n r_nk ||x_n||² (spherical)

    A row of weight 0 contributes exactly 0, even where its responsibilities are not finite.

    Args:
        x: [N, D].
        resp: [N, K] responsibilities (rows need not sum to 1: one-hot labels, random rows).
        covariance_type: selects the layout of ``sxx`` (:func:`covariance_shape`).
        sample_weight: [N] row weights; None means ones.
        centre: [D]: ``sxx`` of x − centre instead (``sx`` stays raw; :func:`m_step`'s ``centre``).

    Returns:
        GMMStats in float64 with ``loglik`` = 0.
    """
    x64, r = x.double(), resp.double()
    s = torch.ones(x64.shape[0], dtype=torch.float64, device=x.device)
    if sample_weight is not None:
        s = sample_weight.double()
        r = torch.where(s[:, None] != 0, r * s[:, None], 0.0)
    nk = r.sum(0)
    sx = r.T @ x64
    if centre is not None:
        x64 = x64 - centre.to(x64)
    if covariance_type == "full":
        sxx = torch.stack([(x64 * r[:, j : j + 1]).T @ x64 for j in range(r.shape[1])])
    elif covariance_type == "tied":
        sxx = (x64 * s[:, None]).T @ x64
    elif covariance_type == "diag":
        sxx = r.T @ x64.square()
    else:
        sxx = r.T @ x64.square().sum(1)
    return GMMStats(nk, sx, sxx, x64.new_zeros(()))


def sample_from_normals(
    z: Tensor, labels: Tensor, means: Tensor, covariances: Tensor, covariance_type: str
) -> Tensor:
    """Mixture draws x_n = μ_k + L_k z_n (Σ_k = L_k L_kᵀ) for standard normals z [N, D] and
    component labels [N]; float64 [N, D]."""
    x = means[labels].clone()
    if covariance_type == "full":
        chol = torch.linalg.cholesky(covariances)
        for k in labels.unique().tolist():
            rows = labels == k
            x[rows] += z[rows] @ chol[k].T
    elif covariance_type == "tied":
        x += z @ torch.linalg.cholesky(covariances).T
    elif covariance_type == "diag":
        x += z * covariances[labels].sqrt()
    else:
        x += z * covariances[labels].sqrt()[:, None]
    return x


def n_parameters(covariance_type: str, n_components: int, n_features: int) -> int:
    """Free parameters of the mixture (for BIC/AIC), as scikit-learn's ``_n_parameters``."""
    k, d = n_components, n_features
    cov = {"full": k * d * (d + 1) // 2, "tied": d * (d + 1) // 2, "diag": k * d, "spherical": k}
    return cov[covariance_type] + k * d + k - 1


def as_float64(value: Any, name: str) -> Tensor | None:
    """A user-given array (Tensor, NumPy array, nested lists) as a float64 tensor; None stays.
    NumPy arrays as scikit-learn takes them: object arrays of numbers and big-endian ones too
    (torch refuses both); text and complex numbers refused, naming the dtype."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        if value.is_complex():  # (.double() had dropped the imaginary part with a warning)
            raise ValueError(f"{name} must hold real numbers, got dtype {value.dtype}")
        t = value.double()
    else:
        a = np.asarray(value)
        if a.dtype.kind not in "biufO":
            raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
        try:
            t = torch.from_numpy(a.astype(np.float64))  # (native byte order)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must hold real numbers: {e}") from None
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def given_n_features(given: dict[str, Tensor | None], covariance_type: str, n_features: int | None) -> int:
    """D for checking the given initial parameters before any data: ``n_features``, else the
    means' or the precisions' last dimension (1 where none tells: spherical or nothing given)."""
    m, p = given["means"], given["precisions"]
    if n_features is not None:
        return int(n_features)
    if m is not None and m.dim() >= 1:
        return m.shape[-1]
    if p is not None and covariance_type != "spherical" and p.dim() >= 1:
        return p.shape[-1]
    return 1


def check_given_init(given: dict[str, Tensor | None], covariance_type: str, k: int, d: int) -> None:
    """Validate weights_init, means_init and precisions_init against K and D (scikit-learn's rules)."""
    w, m, p = given["weights"], given["means"], given["precisions"]
    if w is not None:
        if tuple(w.shape) != (k,):
            raise ValueError(f"weights_init must have shape ({k},), got {tuple(w.shape)}")
        if bool((w < 0).any() or (w > 1).any()) or abs(float(w.sum()) - 1.0) > 1e-6:
            raise ValueError("weights_init must lie in [0, 1] and sum to 1")
    if m is not None and tuple(m.shape) != (k, d):
        raise ValueError(f"means_init must have shape ({k}, {d}), got {tuple(m.shape)}")
    if p is not None:
        shape = covariance_shape(covariance_type, k, d)
        if tuple(p.shape) != shape:
            raise ValueError(
                f"precisions_init must have shape {shape} for {covariance_type!r}, got {tuple(p.shape)}"
            )
        check_precisions(p, covariance_type)
