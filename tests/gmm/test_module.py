"""GaussianMixture: parity with scikit-learn, initialisations, errors (Lightning, MNIST and DDP:
test_lightning.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_genmodels.gmm import GaussianMixture
from lightning_genmodels.gmm.batches import padding_weights
from lightning_genmodels.gmm.em import covariance_shape

from ..utils import DEVICES

ROOT = Path(__file__).resolve().parents[2]
COV_TYPES = ["full", "tied", "diag", "spherical"]
PARAMS = ["weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"]
QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
         "enable_model_summary": False}

# Only named warnings: scikit-learn's and ours for fits stopped at max_iter on purpose.
pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning", "ignore::lightning_genmodels.ConvergenceWarning"
)


def blobs(n: int = 500, d: int = 5, k: int = 3, spread: float = 4.0, seed: int = 0) -> np.ndarray:
    """n rows around k centres ``spread`` apart, cluster scales differing per feature."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * spread
    labels = np.arange(n) % k
    return centres[labels] + rng.normal(size=(n, d)) * rng.uniform(0.5, 1.5, size=(k, d))[labels]


def given_init(x: np.ndarray, k: int, covariance_type: str) -> dict:
    """Starting parameters away from the optimum: data rows as means, unit precisions."""
    d = x.shape[1]
    shape = covariance_shape(covariance_type, k, d)
    matrices = covariance_type in ("full", "tied")
    precisions = np.broadcast_to(np.eye(d), shape).copy() if matrices else np.ones(shape)
    weights = np.arange(1, k + 1, dtype=np.float64)
    return {"weights_init": weights / weights.sum(), "means_init": x[:k] + 0.5, "precisions_init": precisions}


def rel_err(ours: torch.Tensor, theirs: np.ndarray) -> float:
    a = ours.detach().cpu().double().numpy()
    return float(np.max(np.abs(a - theirs)) / max(np.max(np.abs(theirs)), 1e-300))


def fit_both(x: np.ndarray, covariance_type: str, **kwargs) -> tuple[GaussianMixture, SkGaussianMixture]:
    k = 3
    init = given_init(x.astype(np.float64), k, covariance_type)
    ours = GaussianMixture(k, covariance_type=covariance_type, **init, **kwargs).fit(x)
    theirs = SkGaussianMixture(k, covariance_type=covariance_type, **init, **kwargs).fit(x)
    return ours, theirs


# ------------------------------------------------------------------ scikit-learn parity


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-6), (np.float32, 1e-4)])
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_parity_with_sklearn_fixed_iterations(covariance_type: str, dtype, rtol: float) -> None:
    x = blobs().astype(dtype)
    ours, theirs = fit_both(x, covariance_type, max_iter=5, tol=0.0)
    assert ours.dtype == (torch.float64 if dtype == np.float64 else torch.float32)
    assert (ours.n_iter_, ours.converged_) == (theirs.n_iter_, theirs.converged_) == (5, False)
    assert ours.lower_bound_ == pytest.approx(theirs.lower_bound_, rel=rtol)
    np.testing.assert_allclose(ours.lower_bounds_, theirs.lower_bounds_, rtol=rtol)
    for name in PARAMS:
        assert rel_err(getattr(ours, name), getattr(theirs, name)) < rtol, name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_parity_with_sklearn_compiled_op(covariance_type: str, device: str) -> None:
    """The default impl ("auto": the compiled kernel where it builds) on each device."""
    x = blobs()
    init = given_init(x, 3, covariance_type)
    accelerator = "gpu" if device == "cuda" else "cpu"
    ours = GaussianMixture(3, covariance_type=covariance_type, max_iter=5, tol=0.0, **init)
    ours.fit(x, accelerator=accelerator)
    theirs = SkGaussianMixture(3, covariance_type=covariance_type, max_iter=5, tol=0.0, **init).fit(x)
    assert ours.means_.device.type == device
    assert ours.lower_bound_ == pytest.approx(theirs.lower_bound_, rel=1e-6)
    for name in PARAMS:
        assert rel_err(getattr(ours, name), getattr(theirs, name)) < 1e-6, name
    np.testing.assert_allclose(ours.score_samples(x).numpy(), theirs.score_samples(x), rtol=1e-6)
    # results follow the input (NumPy: the CPU), and a seed draws the same rows on every device
    xt = torch.from_numpy(x).to(device)
    for out in (ours.predict(xt), ours.predict_proba(xt), ours.score_samples(xt)):
        assert out.device.type == device
    assert ours.predict(x).device.type == "cpu" and torch.equal(ours.predict(x), ours.predict(xt).cpu())
    on_cpu = GaussianMixture(3, covariance_type=covariance_type, max_iter=5, tol=0.0, **init).fit(x, accelerator="cpu")
    torch.testing.assert_close(ours.sample(50, generator=3)[0], on_cpu.sample(50, generator=3)[0], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_parity_with_sklearn_until_convergence(covariance_type: str) -> None:
    ours, theirs = fit_both(blobs(), covariance_type, max_iter=200, tol=1e-4)
    assert theirs.converged_ and ours.converged_
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.lower_bound_ == pytest.approx(theirs.lower_bound_, rel=1e-6)
    for name in PARAMS:
        assert rel_err(getattr(ours, name), getattr(theirs, name)) < 1e-6, name


@pytest.fixture(scope="module", params=COV_TYPES)
def fitted_pair(request) -> tuple[GaussianMixture, SkGaussianMixture, np.ndarray]:
    x = blobs(seed=1)
    ours, theirs = fit_both(x, request.param, max_iter=20, tol=1e-3)
    return ours, theirs, x


def test_inference_methods_match_sklearn(fitted_pair) -> None:
    ours, theirs, x = fitted_pair
    test = blobs(n=200, seed=2)
    for data in (test, torch.from_numpy(test)):  # NumPy arrays and tensors alike
        assert isinstance(ours.predict(data), torch.Tensor)
        np.testing.assert_array_equal(ours.predict(data).numpy(), theirs.predict(test))
        np.testing.assert_allclose(ours.predict_proba(data).numpy(), theirs.predict_proba(test), atol=1e-9)
        np.testing.assert_allclose(ours.score_samples(data).numpy(), theirs.score_samples(test), rtol=1e-9)
        assert float(ours.score(data)) == pytest.approx(theirs.score(test), rel=1e-9)
        assert float(ours.bic(data)) == pytest.approx(theirs.bic(test), rel=1e-9)
        assert float(ours.aic(data)) == pytest.approx(theirs.aic(test), rel=1e-9)


def test_sample_matches_the_mixture(fitted_pair) -> None:
    ours, theirs, _ = fitted_pair
    xs, labels = ours.sample(20000, generator=0)
    assert xs.shape == (20000, 5) and labels.dtype == torch.int64 and xs.dtype == ours.dtype
    assert torch.equal(labels, labels.sort().values)  # grouped by component, as scikit-learn
    np.testing.assert_allclose(torch.bincount(labels, minlength=3).numpy() / 20000, theirs.weights_, atol=0.02)
    for k in range(3):
        rows = xs[labels == k].numpy()
        np.testing.assert_allclose(rows.mean(0), theirs.means_[k], atol=0.1)
    x2, l2 = ours.sample(20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(xs, x2) and torch.equal(labels, l2)  # seeded: reproducible
    assert not torch.equal(xs, ours.sample(20000, generator=1)[0])


def test_fit_predict_equals_fit_then_predict() -> None:
    x = blobs()
    init = given_init(x, 3, "diag")
    labels = GaussianMixture(3, covariance_type="diag", **init).fit_predict(x)
    again = GaussianMixture(3, covariance_type="diag", **init).fit(x).predict(x)
    assert torch.equal(labels, again)


# ------------------------------------------------------------------ initialisation


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_every_init_method_finds_separated_blobs(init_params: str) -> None:
    x = blobs(n=600, d=2, k=3, spread=10.0, seed=3)
    truth = np.arange(600) % 3
    # Uniform random responsibilities start every mean at the data mean (in scikit-learn too):
    # EM then needs a tight tol and a few restarts to separate them. random_from_data's first draw
    # for seed 0 (scikit-learn's rows) puts two starts in one blob, in scikit-learn too (ARI 0.45).
    extra = {"n_init": 3, "tol": 1e-6, "max_iter": 500} if init_params == "random" else {}
    extra = {"n_init": 3} if init_params == "random_from_data" else extra
    model = GaussianMixture(3, init_params=init_params, random_state=0, **extra).fit(x)
    assert model.converged_
    assert adjusted_rand_score(truth, model.predict(x).numpy()) == pytest.approx(1.0)
    sk = SkGaussianMixture(3, random_state=0).fit(x)
    assert float(model.score(x)) == pytest.approx(sk.score(x), rel=1e-4)


def test_n_init_keeps_the_best_restart() -> None:
    """Restart r of "random" draws from seed + r (random_from_data and k-means++ draw their
    restarts from one stream, as scikit-learn: test_estimator.py)."""
    x = blobs(n=400, d=2, k=6, spread=3.0, seed=4)
    kwargs = {"covariance_type": "diag", "init_params": "random", "max_iter": 10}
    singles = [GaussianMixture(6, random_state=10 + r, **kwargs).fit(x) for r in range(3)]
    bounds = [m.lower_bound_ for m in singles]
    assert len(set(bounds)) > 1  # the restarts differ
    best = GaussianMixture(6, random_state=10, n_init=3, **kwargs).fit(x)
    winner = singles[int(np.argmax(bounds))]
    assert best.lower_bound_ == pytest.approx(max(bounds), rel=1e-12)
    assert torch.allclose(best.means_, winner.means_) and best.n_iter_ == winner.n_iter_


def test_random_state_is_reproducible() -> None:
    x = blobs(seed=5)
    fit = lambda seed: GaussianMixture(3, init_params="random", max_iter=3, random_state=seed).fit(x)
    a, b, c = fit(7), fit(7), fit(8)
    assert all(torch.equal(getattr(a, n), getattr(b, n)) for n in PARAMS)
    assert not torch.equal(a.means_, c.means_)


def test_warm_start_continues() -> None:
    x = blobs(seed=6)
    init = given_init(x, 3, "full")
    four = GaussianMixture(3, max_iter=4, tol=0.0, **init).fit(x)
    warm = GaussianMixture(3, max_iter=2, tol=0.0, warm_start=True, **init).fit(x)
    warm.fit(x)
    assert warm.n_iter_ == 2  # per call, as scikit-learn
    np.testing.assert_allclose(warm.lower_bounds_, four.lower_bounds_[2:], rtol=1e-12)
    for name in PARAMS:
        assert torch.allclose(getattr(warm, name), getattr(four, name), rtol=1e-10), name


def test_max_iter_zero_only_initialises() -> None:
    x = blobs()
    model = GaussianMixture(3, covariance_type="diag", max_iter=0, random_state=0).fit(x)
    assert model.n_iter_ == 0 and model.fitted and model.lower_bounds_ == []
    assert torch.isfinite(model.means_).all() and model.predict(x).shape == (500,)


# ------------------------------------------------------------------ errors and degenerate cases


def test_clear_errors() -> None:
    x = blobs(n=10)
    with pytest.raises(ValueError, match="n_components"):
        GaussianMixture(11).fit(x)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixture(2).fit(bad)
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        GaussianMixture(2).fit(torch.from_numpy(bad))
    with pytest.raises(ValueError, match="2-D"):
        GaussianMixture(2).fit(x[0])
    with pytest.raises(ValueError, match="covariance_type"):
        GaussianMixture(2, covariance_type="banana")
    with pytest.raises(ValueError, match="init_params"):
        GaussianMixture(2, init_params="kmeans++")
    with pytest.raises(RuntimeError, match="not fitted"):
        GaussianMixture(2).predict(x)
    with pytest.raises(ValueError, match="means_init"):
        GaussianMixture(2, means_init=np.zeros((2, 3))).fit(x)


NOT_SYMMETRIC = np.array([[2.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])


@pytest.mark.parametrize(
    "covariance_type, precisions, match",
    [
        ("full", np.stack([np.eye(3), NOT_SYMMETRIC]), r"precisions_init\[1\] \('full'\) must be symmetric, "
         r"but max \|P - Pᵀ\| = 1"),
        ("tied", NOT_SYMMETRIC, r"precisions_init \('tied'\) must be symmetric"),
        ("full", np.stack([np.eye(3), -np.eye(3)]), r"precisions_init\[1\] \('full'\) must be positive definite, "
         "but its smallest eigenvalue is -1"),
        ("tied", np.diag([1.0, 0.0, 1.0]), r"precisions_init \('tied'\) must be positive definite, but its "
         "smallest eigenvalue is 0"),
        ("diag", np.array([[1.0, 1.0, 1.0], [1.0, -2.0, 1.0]]), r"must be positive, but precisions_init\[1, 1\] = -2"),
        ("spherical", np.array([1.0, 0.0]), r"must be positive, but precisions_init\[1\] = 0"),
    ],
)
def test_precisions_init_must_be_symmetric_positive_definite(covariance_type: str, precisions, match: str) -> None:
    """scikit-learn refuses these too ("'full precision' should be symmetric, positive-definite");
    a non-symmetric one used to be fitted from the matrix its upper triangle makes."""
    x = blobs(n=60, d=3, k=2)
    init = {"means_init": x[:2], "precisions_init": precisions}
    with pytest.raises(ValueError, match=match):
        GaussianMixture(2, covariance_type=covariance_type, max_iter=1, **init).fit(x)
    with pytest.raises(ValueError, match="precision"):
        SkGaussianMixture(2, covariance_type=covariance_type, max_iter=1, **init).fit(x)
    near = np.stack([np.eye(3), np.eye(3) + 1e-9 * NOT_SYMMETRIC])  # within np.allclose, as scikit-learn
    assert GaussianMixture(2, max_iter=1, means_init=x[:2], precisions_init=near).fit(x).fitted


def test_streamed_dataloader_errors() -> None:
    x = torch.from_numpy(blobs(n=100))
    with pytest.raises(ValueError, match="n_components"):  # K > N seen in the init pass
        model = GaussianMixture(20, init_params="random_from_data").double()
        Trainer(max_epochs=2, **QUIET).fit(model, DataLoader(TensorDataset(x[:12]), batch_size=5))
    x[57, 1] = torch.nan
    init = given_init(x.numpy(), 3, "diag")  # given init: the E-step pass finds the NaN
    model = GaussianMixture(3, covariance_type="diag", **init).double()
    with pytest.raises(ValueError, match="NaN"):
        Trainer(max_epochs=2, **QUIET).fit(model, DataLoader(TensorDataset(x), batch_size=32))
    model = GaussianMixture(3, covariance_type="diag").double()  # k-means init pass
    with pytest.raises(ValueError, match="NaN"):
        Trainer(max_epochs=2, **QUIET).fit(model, DataLoader(TensorDataset(x), batch_size=32))


@pytest.mark.parametrize(("dtype", "offset", "init_params"), [
    (np.float32, 1e3, "kmeans"), (np.float64, 1e5, "kmeans"), (np.float64, 1e5, "k-means++")])
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_data_far_from_the_origin_fit_as_centred_data(covariance_type: str, dtype, offset: float,
                                                      init_params: str) -> None:
    """EM's second moments and the ops' products are taken about a point amid the data: rows
    offset by 1e3 (float32) or 1e5 (float64) fit as the same rows near the origin. Raw moments
    lost the spread to cancellation: "ill-defined covariance" errors (float32 full; float64
    k-means++ starts, whose covariance is reg_covar) or other paths. scikit-learn's full copes.
    (Not float32 k-means++: its starting means x / (1 + 10 eps) move by 1e-3 at 1e3, so the
    start itself depends on the offset, in scikit-learn too.)"""
    far = blobs(seed=7).astype(dtype) + dtype(offset)
    x = far - dtype(offset)  # the same rows, near the origin
    near_fit, far_fit = (GaussianMixture(3, covariance_type=covariance_type, init_params=init_params,
                                         max_iter=10, random_state=0).fit(data) for data in (x, far))
    assert far_fit.n_iter_ == near_fit.n_iter_
    assert far_fit.lower_bound_ == pytest.approx(near_fit.lower_bound_, rel=1e-4)
    np.testing.assert_allclose(far_fit.means_.numpy() - offset, near_fit.means_.numpy(), atol=1e-3)
    np.testing.assert_allclose(far_fit.covariances_.numpy(), near_fit.covariances_.numpy(), rtol=1e-3, atol=1e-4)
    assert far_fit.score(far) == pytest.approx(near_fit.score(x), rel=1e-4)


def test_statistics_stay_float64_whatever_the_model_dtype() -> None:
    model = GaussianMixture(3, covariance_type="full", n_features=4)
    for dtype in (torch.float32, torch.float16, torch.float64):
        model.to(dtype)
        assert model.means_.dtype == dtype
        assert all(getattr(model.em_stats, n).dtype == torch.float64 for n in ("nk", "sx", "sxx", "loglik"))


def test_singular_covariance_asks_for_more_reg_covar() -> None:
    x = blobs(n=200)
    # A feature of exact zeros: its covariance row and column are exactly 0 on any device. (A
    # duplicated feature was singular only up to rounding: on an Intel Xeon its Cholesky passed.)
    x[:, 1] = 0.0
    with pytest.raises(ValueError, match="increase reg_covar"):
        GaussianMixture(2, covariance_type="full", reg_covar=0.0, random_state=0).fit(x, accelerator="cpu")
    model = GaussianMixture(2, covariance_type="full", reg_covar=1e-4, random_state=0).fit(x)
    assert torch.isfinite(model.precisions_cholesky_).all()


@pytest.mark.parametrize("cov", ["full", "diag", "spherical"])  # diag, spherical: the C++ M-step
def test_empty_component_keeps_its_previous_mean_and_covariance(cov: str) -> None:
    x = blobs(n=300, d=2, k=2, spread=3.0, seed=7)
    far = np.array([1e3, -1e3])  # no point comes near the third component
    unit = {"full": np.eye(2), "diag": np.ones(2), "spherical": np.ones(())}[cov]
    init = {
        "weights_init": np.array([0.45, 0.45, 0.1]),
        "means_init": np.stack([x[0], x[1], far]),
        "precisions_init": np.broadcast_to(unit, (3, *unit.shape)).copy(),
    }
    with pytest.warns(RuntimeWarning, match="lost all"):
        model = GaussianMixture(3, covariance_type=cov, max_iter=10, **init).fit(x)
    for name in PARAMS:
        assert torch.isfinite(getattr(model, name)).all()
    assert torch.allclose(model.means_[2].cpu(), torch.from_numpy(far))  # fitted on a GPU if one is visible
    assert torch.allclose(model.covariances_[2].cpu(), torch.from_numpy(unit))
    assert float(model.weights_[2]) < 1e-10
    assert float(model.weights_.sum()) == pytest.approx(1.0)
    assert set(model.predict(x).tolist()) == {0, 1}


def test_padding_weights_cancel_distributed_sampler_padding() -> None:
    for n, replicas in [(10, 4), (7, 2), (8, 4), (3, 4)]:
        dataset = TensorDataset(torch.arange(n))
        seen = []
        for r in range(replicas):
            sampler = DistributedSampler(dataset, num_replicas=replicas, rank=r, shuffle=True, seed=3)
            idx = list(sampler)
            w = padding_weights(sampler, 0, len(idx), torch.device("cpu"))
            w = torch.ones(len(idx)) if w is None else w
            # streamed in two chunks, the rank-local counter carries over
            half = len(idx) // 2
            chunks = ((0, half), (half, len(idx) - half))
            w2 = [padding_weights(sampler, s, c, torch.device("cpu")) for s, c in chunks]
            w2 = torch.cat([torch.ones(c) if v is None else v for v, (_, c) in zip(w2, chunks)])
            assert torch.equal(w.float(), w2.float())
            seen += [i for i, wi in zip(idx, w.tolist()) if wi == 1.0]
        assert sorted(seen) == list(range(n))  # every sample exactly once


@pytest.mark.parametrize("kwargs, match", [
    ({"precisions_init": np.stack([np.eye(4), -np.eye(4)])}, r"precisions_init\[1\] \('full'\) must be positive definite"),
    ({"weights_init": [0.3, 0.3]}, "weights_init must lie in"),
    ({"means_init": np.zeros((3, 4))}, r"means_init must have shape \(2, 4\)"),
    ({"means_init": np.zeros((2, 4)), "precisions_init": np.ones((2, 3)), "covariance_type": "diag"},
     r"precisions_init must have shape \(2, 4\)"),
    ({"n_features": 5, "means_init": np.zeros((2, 4))}, r"means_init must have shape \(2, 5\)"),
])
def test_initial_parameters_are_checked_when_built(kwargs, match):
    """They were checked only at fit, though the README says each option is checked when built."""
    with pytest.raises(ValueError, match=match):
        GaussianMixture(n_components=2, **kwargs)


def test_initial_parameters_take_numpy_arrays_as_scikit_learn() -> None:
    """means_init etc. as big-endian or object arrays (scikit-learn takes them; torch raised
    "byte order" ValueError or TypeError) give the float64 parameters; text and complex are named."""
    x = blobs(n=120, d=4, k=2)
    init = given_init(x, 2, "full")
    plain = GaussianMixture(2, max_iter=0, **init).fit(x)
    for convert in (lambda a: a.astype(">f8"), lambda a: a.astype(object)):
        model = GaussianMixture(2, max_iter=0, **{k: convert(np.asarray(v)) for k, v in init.items()}).fit(x)
        for name in PARAMS:
            assert torch.equal(getattr(model, name), getattr(plain, name)), name
    with pytest.raises(ValueError, match="means_init must hold real numbers, got dtype <U"):
        GaussianMixture(2, means_init=np.zeros((2, 4)).astype(str))
    with pytest.raises(ValueError, match="means_init must hold real numbers, got dtype complex128"):
        GaussianMixture(2, means_init=np.zeros((2, 4), dtype=complex))
