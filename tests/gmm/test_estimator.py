"""GaussianMixture's scikit-learn face: quiet fits, ConvergenceWarning, clone/GridSearchCV,
verbose, views as batches, and the DDP strategy it needs."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels import ConvergenceWarning, GaussianMixture, NotFittedError
from lightning_genmodels.gmm.rows import RowBatches


def blobs(n: int = 300, d: int = 3, k: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(size=(n // k, d)) + 6.0 * i for i in range(k)])


def test_fit_predict_score_print_and_warn_nothing(capfd: pytest.CaptureFixture) -> None:
    x = blobs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = GaussianMixture(3, covariance_type="diag", random_state=0).fit(x)
        model.predict(x)
        score = model.score(x)
    out, err = capfd.readouterr()
    assert model.converged_ and isinstance(score, float)
    assert [str(w.message) for w in caught] == [] and out == "" and err == ""


def test_stopping_at_max_iter_warns_once() -> None:
    x = blobs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = GaussianMixture(3, covariance_type="full", max_iter=2, tol=0.0, n_init=2, random_state=0).fit(x)
    assert not model.converged_ and model.n_iter_ == 2
    assert [w.category for w in caught] == [ConvergenceWarning], [str(w.message) for w in caught]
    assert "max_iter=2" in str(caught[0].message)


def test_fit_is_quiet_when_the_model_was_built_under_other_warning_filters(capfd: pytest.CaptureFixture) -> None:
    with warnings.catch_warnings():
        model = GaussianMixture(3, covariance_type="diag", random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(blobs())
    assert [str(w.message) for w in caught] == [] and capfd.readouterr().err == ""


def test_a_trainer_that_stops_first_says_so() -> None:
    model = GaussianMixture(3, covariance_type="full", max_iter=100, tol=0.0, random_state=0)
    with pytest.warns(ConvergenceWarning, match="in 2 iterations: the Trainer stopped it first"):
        model.fit(blobs(), max_epochs=2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_components": 2.5}, "n_components must be an integer >= 1, got 2.5"),
        ({"n_components": "3"}, "n_components must be an integer >= 1, got '3'"),
        ({"tol": float("nan")}, "tol must be a finite number >= 0, got nan"),
        ({"reg_covar": float("nan")}, "reg_covar must be a finite number >= 0, got nan"),
        ({"reg_covar": -1.0}, "reg_covar must be a finite number >= 0, got -1.0"),
        ({"verbose_interval": 0}, "verbose_interval must be an integer >= 1, got 0"),
        ({"max_iter": -1}, "max_iter must be an integer >= 0, got -1"),
        ({"random_state": np.random.RandomState(0)}, "random_state must be an int seed or None"),
        ({"n_features": 0}, "n_features must be an integer >= 1 or None, got 0"),
        ({"n_features": -1}, "n_features must be an integer >= 1 or None, got -1"),
        ({"n_features": 2.5}, "n_features must be an integer >= 1 or None, got 2.5"),
        ({"kmeans_max_iter": -1}, "kmeans_max_iter must be an integer >= 1, got -1"),
        ({"kmeans_max_iter": 1.5}, "kmeans_max_iter must be an integer >= 1, got 1.5"),
        ({"kmeans_tol": -1.0}, "kmeans_tol must be a finite number >= 0, got -1.0"),
        ({"kmeans_tol": float("nan")}, "kmeans_tol must be a finite number >= 0, got nan"),
        ({"verbose": -1}, "verbose must be an integer >= 0 or a bool, got -1"),
        ({"verbose": "x"}, "verbose must be an integer >= 0 or a bool, got 'x'"),
        ({"warm_start": "no"}, "warm_start must be a bool, got 'no'"),
        ({"warm_start": 1}, "warm_start must be a bool, got 1"),
    ],
)
def test_bad_options_name_the_value(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**({"n_components": 2} | kwargs))


def test_numpy_scalar_options_fit_as_python_numbers(tmp_path) -> None:
    """NumPy scalars (a GridSearchCV grid's np.float32 tol, np.int64 n_components) are accepted as
    scikit-learn accepts them (np.float32 was refused), fit as the Python numbers do, keep their
    identity for clone, and leave a checkpoint that loads with weights_only (np.int64 failed)."""
    x = blobs()
    numpy = {"n_components": np.int64(3), "tol": np.float32(1e-3), "reg_covar": np.float32(1e-6),
             "kmeans_tol": np.float32(1e-4), "max_iter": np.int64(20), "random_state": np.int64(0)}
    model = GaussianMixture(**numpy).fit(x)
    plain = GaussianMixture(**{k: v.item() for k, v in numpy.items()}).fit(x)
    assert torch.equal(model.means_, plain.means_) and model.n_iter_ == plain.n_iter_
    assert all(model.get_params()[k] is v for k, v in numpy.items())
    trainer = Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(TensorDataset(torch.from_numpy(x)), batch_size=300))
    trainer.save_checkpoint(tmp_path / "gmm.ckpt")
    saved = torch.load(tmp_path / "gmm.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["n_components"] == 3


def test_n_features_must_match_the_data() -> None:
    x = blobs()  # D = 3
    with pytest.raises(ValueError, match="X has 3 features, but the model was built with n_features=5"):
        GaussianMixture(3, n_features=5).fit(x)
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="X has 3 features, but the model was built with n_features=5"):
        trainer.fit(GaussianMixture(3, n_features=5).double(), DataLoader(TensorDataset(torch.from_numpy(x))))
    model = GaussianMixture(3, n_features=np.int64(3), verbose=False, warm_start=np.bool_(False), random_state=0)
    assert model.means_.shape == (3, 3) and model.fit(x).converged_


def test_empty_and_complex_data_name_the_problem() -> None:
    x = blobs()
    model = GaussianMixture(3, random_state=0).fit(x)
    for method in (model.fit, model.predict, model.score, model.bic, model.score_samples):
        with pytest.raises(ValueError, match=r"at least one sample and one feature, got shape \(0, 3\)"):
            method(x[:0])
    with pytest.raises(ValueError, match="X must hold real numbers, got dtype torch.complex128"):
        GaussianMixture(3).fit(x.astype(np.complex128))


def test_object_arrays_of_numbers_are_accepted_and_text_refused() -> None:
    """An object array of numbers (scikit-learn takes it as float64) fits and predicts as the
    float64 array does (torch's TypeError before); text names its dtype."""
    x = blobs()
    model = GaussianMixture(3, random_state=0).fit(x.astype(object))
    assert model.dtype == torch.float64
    assert torch.equal(model.means_, GaussianMixture(3, random_state=0).fit(x).means_)
    assert torch.equal(model.score_samples(x.astype(object)), model.score_samples(x))
    assert model.bic(x.astype(object)) == model.bic(x)
    with pytest.raises(ValueError, match="X of dtype object must hold numbers"):
        model.predict(np.array([[1.0, "a", 2.0]], dtype=object))
    with pytest.raises(ValueError, match="X contains NaN"):
        model.predict(np.array([[1.0, None, 2.0]], dtype=object))
    with pytest.raises(ValueError, match="X must hold numbers, got a NumPy array of dtype <U"):
        model.predict(x.astype(str))


def test_fit_batch_size_must_be_an_integer() -> None:
    """fit(X, batch_size=...) names a non-integer (a float or None raised TypeError deep in the
    loader; True fitted in batches of one row)."""
    x = blobs()
    for bad in (100.0, True, None, "100", 0):
        with pytest.raises(ValueError, match=f"batch_size={re.escape(repr(bad))} must be an integer >= 1"):
            GaussianMixture(3, random_state=0).fit(x, batch_size=bad)
    model = GaussianMixture(3, random_state=0).fit(x, batch_size=np.int64(100))
    assert torch.equal(model.means_, GaussianMixture(3, random_state=0).fit(x, batch_size=100).means_)


def test_big_endian_and_read_only_arrays_fit_quietly() -> None:
    """A big-endian array (scikit-learn takes it; torch raised "byte order different from the
    native byte order") and a read-only one (np.load with mmap_mode="r": torch warned that
    writing to it is undefined) fit and predict as the plain array, without a warning."""
    x = blobs()
    read_only = x.copy()
    read_only.setflags(write=False)
    plain = GaussianMixture(3, random_state=0).fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for data in (x.astype(">f8"), read_only):
            model = GaussianMixture(3, random_state=0).fit(data)
            assert torch.equal(model.means_, plain.means_)
            assert torch.equal(model.score_samples(data), plain.score_samples(x))


def test_set_params_keeps_the_fit_for_a_warm_start() -> None:
    x = blobs()
    model = GaussianMixture(3, warm_start=True, max_iter=2, tol=1e-8, init_params="k-means++", random_state=0)
    with pytest.warns(ConvergenceWarning):
        model.fit(x)
    means = model.means_.clone()
    model.set_params(max_iter=200)
    assert model.fitted and torch.equal(model.means_, means) and model.hparams.max_iter == 200
    model.fit(x)  # continues from the 2 iterations: scikit-learn counts only the new ones
    assert model.converged_ and model.n_iter_ < 20
    assert not model.set_params(n_components=2).fitted  # a new shape: unfitted


def test_invalid_set_params_leaves_the_model_as_it_was() -> None:
    """set_params with an invalid value raises and keeps the params and the fit (it left the
    invalid value in get_params and no weights_: predict raised AttributeError, fit KeyError)."""
    x = blobs()
    model = GaussianMixture(3, covariance_type="diag", random_state=0).fit(x)
    labels, means = model.predict(x), model.means_.clone()
    for bad in ({"tol": -1.0}, {"n_components": 0}, {"means_init": np.zeros((2, 3))}):
        with pytest.raises(ValueError):
            model.set_params(**bad)
        assert model.get_params()["tol"] == 1e-3 and model.get_params()["n_components"] == 3
        assert torch.equal(model.predict(x), labels) and torch.equal(model.means_, means)
    assert model.set_params(warm_start=True, max_iter=5).fit(x).n_iter_ >= 1


def test_repr_shows_the_arguments_that_differ_from_the_defaults() -> None:
    """repr() printed ``GaussianMixture()`` whatever the arguments (scikit-learn prints them)."""
    assert repr(GaussianMixture()) == "GaussianMixture()"
    model = GaussianMixture(3, covariance_type="diag", tol=1e-4, means_init=np.zeros((3, 2)))
    assert repr(model) == "GaussianMixture(n_components=3, covariance_type='diag', tol=0.0001, means_init=<ndarray [3, 2]>)"


def test_constructor_arguments_are_attributes() -> None:
    """As in scikit-learn, ``gmm.covariance_type`` reads the argument (AttributeError before) and
    ``gmm.n_components = 2`` sets it as set_params does (it was silently ignored)."""
    x = blobs()
    means = np.zeros((3, 3))
    model = GaussianMixture(3, covariance_type="diag", means_init=means, random_state=0)
    assert (model.n_components, model.covariance_type, model.tol, model.random_state) == (3, "diag", 1e-3, 0)
    assert model.means_init is means and model.warm_start is False and model.impl == "auto"
    model.fit(x)
    model.max_iter = 7  # a fit is kept, as by set_params
    assert model.get_params()["max_iter"] == 7 and model.hparams.max_iter == 7 and model.fitted
    with pytest.raises(ValueError, match="tol must be a finite number >= 0"):
        model.tol = -1.0
    assert model.tol == 1e-3 and model.fitted
    model.means_init, model.n_components = None, 2
    assert model.fit(x).means_.shape == (2, 3)
    with pytest.raises(AttributeError):
        model.no_such_thing


def test_verbose_reports_progress(capsys: pytest.CaptureFixture) -> None:
    GaussianMixture(3, random_state=0, verbose=1, verbose_interval=1).fit(blobs())
    out = capsys.readouterr().out  # scikit-learn's verbose=1 lines
    assert "Initialization 0" in out and "  Iteration 1\n" in out and "Initialization converged." in out
    GaussianMixture(3, random_state=0, verbose=2, verbose_interval=1).fit(blobs())
    out = capsys.readouterr().out
    assert "Initialization 0" in out and "Iteration 1\t" in out and "Initialization converged" in out
    GaussianMixture(3, random_state=0).fit(blobs())
    assert capsys.readouterr().out == ""


def test_sklearn_clone_params_and_grid_search() -> None:
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV

    means = np.zeros((3, 3))
    model = GaussianMixture(3, covariance_type="diag", means_init=means, random_state=0)
    params = model.get_params()
    assert params["n_components"] == 3 and params["means_init"] is means
    copy = clone(model)
    assert type(copy) is GaussianMixture and copy.get_params()["covariance_type"] == "diag"
    assert model.set_params(n_components=2, means_init=None) is model and model.hparams.n_components == 2
    with pytest.raises(ValueError, match="invalid parameters"):
        model.set_params(n_compnents=2)
    x = np.random.default_rng(1).permutation(blobs(n=240))  # each fold sees every blob
    search = GridSearchCV(GaussianMixture(covariance_type="diag", random_state=0), {"n_components": [1, 3]}, cv=2)
    search.fit(x)
    assert search.best_params_ == {"n_components": 3}


def test_an_unfitted_model_raises_not_fitted_error_with_scikit_learns_bases() -> None:
    """predict, predict_proba, score, score_samples, bic, aic and sample of an unfitted model raise
    NotFittedError: a ValueError and an AttributeError as scikit-learn's is, and the RuntimeError
    that was raised before."""
    model, x = GaussianMixture(3, covariance_type="diag"), blobs()
    calls = [lambda: model.predict(x), lambda: model.predict_proba(x), lambda: model.score(x),
             lambda: model.score_samples(x), lambda: model.bic(x), lambda: model.aic(x), lambda: model.sample(2)]
    for call in calls:
        with pytest.raises(NotFittedError, match="not fitted yet") as info:
            call()
        assert isinstance(info.value, ValueError) and isinstance(info.value, AttributeError)
        assert isinstance(info.value, RuntimeError)
    model.fit(x)
    for call in calls:
        call()


def test_sklearn_check_is_fitted_follows_the_fit() -> None:
    """scikit-learn's check_is_fitted took an unfitted model for fitted (its ``converged_``,
    ``n_iter_``, ... exist before any fit); a clone of a fitted model is unfitted."""
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    model = GaussianMixture(3, covariance_type="diag", random_state=0)
    with pytest.raises(NotFittedError):
        check_is_fitted(model)
    check_is_fitted(model.fit(blobs()))
    with pytest.raises(NotFittedError):
        check_is_fitted(clone(model))


def test_in_memory_batches_are_views() -> None:
    x = torch.randn(10, 4)
    batches = list(RowBatches(x, 4))
    assert [b.shape[0] for b in batches] == [4, 4, 2] and len(RowBatches(x, 4)) == 3
    assert all(b.data_ptr() == x[4 * i].data_ptr() for i, b in enumerate(batches))  # no copy
    shards = [torch.cat(list(RowBatches(x, 3, r, 3))) for r in range(3)]
    assert torch.equal(torch.cat(shards), x)  # ranks: contiguous shards, each row once


def test_plain_ddp_strategy_is_refused_with_advice(tmp_path) -> None:
    x = torch.from_numpy(blobs())
    trainer = Trainer(accelerator="cpu", devices=1, strategy="ddp", max_epochs=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="strategy='ddp_em'"):
        trainer.fit(GaussianMixture(3).double(), DataLoader(TensorDataset(x), batch_size=100))


def test_global_step_counts_em_iterations() -> None:
    x = torch.from_numpy(blobs())
    trainer = Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    model = GaussianMixture(3, max_iter=4, tol=0.0, random_state=0).double()
    trainer.fit(model, DataLoader(TensorDataset(x), batch_size=64))
    assert trainer.global_step == model.n_iter_ == 4


@pytest.mark.parametrize("covariance_type", ["diag", "spherical", "full"])
def test_one_component(covariance_type: str) -> None:
    x = blobs()
    model = GaussianMixture(1, covariance_type=covariance_type).fit(x)
    assert model.converged_ and model.means_.shape == (1, 3)
    np.testing.assert_allclose(model.means_[0].cpu().numpy(), x.mean(0), rtol=1e-10)  # fitted on a GPU if one is visible


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_fit_and_predict_refuse_non_finite_rows(bad: float) -> None:
    """One bad value anywhere (here in the middle of X) is found by fit and by predict."""
    x = torch.rand(64, 5, generator=torch.Generator().manual_seed(0))
    model = GaussianMixture(2, random_state=0).fit(x)
    y = x.clone()
    y[37, 2] = bad
    with pytest.raises(ValueError, match="X contains NaN or infinite values"):
        GaussianMixture(2, random_state=0).fit(y)
    with pytest.raises(ValueError, match="X contains NaN or infinite values"):
        model.predict(y)


def test_all_finite_is_isfinite_all() -> None:
    from lightning_genmodels.gmm.batches import all_finite

    x = torch.randn(50, 7, dtype=torch.float64)
    assert all_finite(x) and all_finite(x[:0]) and all_finite(x.float())
    for bad in (float("nan"), float("inf"), -float("inf")):
        for at in ((0, 0), (25, 3), (49, 6)):
            y = x.clone()
            y[at] = bad
            assert not all_finite(y) and not all_finite(y.float()), (bad, at)


@pytest.mark.parametrize("impl", ["ref", "ext"])
@pytest.mark.parametrize("init_params", ["k-means++", "kmeans"])
def test_impl_reaches_the_seeding(impl: str, init_params: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The greedy k-means++ seeding of fit(X) computes its distances with the model's impl."""
    import lightning_genmodels.gmm.kmeans as kmeans

    seen, original = [], kmeans.seeding_distances

    def recording(*args, impl="auto"):
        seen.append(impl)
        return original(*args, impl=impl)

    monkeypatch.setattr(kmeans, "seeding_distances", recording)
    GaussianMixture(3, init_params=init_params, impl=impl, random_state=0).fit(blobs())
    assert seen and set(seen) == {impl}


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("init_params", ["k-means++", "random_from_data"])
def test_float32_start_from_single_rows_has_reg_covar(covariance_type: str, init_params: str) -> None:
    """Both seedings start each component from one row: its covariance is reg_covar in float32
    as in float64 (the raw-moment formula gave ~0.012 for features near 100)."""
    x = (np.random.default_rng(0).normal(size=(200, 2)) + 100).astype(np.float32)
    gm = GaussianMixture(2, covariance_type=covariance_type, init_params=init_params, max_iter=0,
                         random_state=0, reg_covar=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter=0: the start alone
        gm.fit(x)
    cov = gm.covariances_.double()
    eye = torch.eye(2, dtype=torch.float64)
    want = {"full": 1e-3 * eye.expand(2, 2, 2), "tied": 1e-3 * eye}.get(covariance_type, torch.full_like(cov, 1e-3))
    torch.testing.assert_close(cov, want, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("init_params", ["k-means++", "random_from_data"])
def test_same_random_state_fits_as_sklearn(init_params: str) -> None:
    """An int random_state gives scikit-learn's start (k-means++ centres, or rows drawn from the
    data), the second of n_init = 2 too (one stream), so EM takes its path: in float64 the same
    iteration count and its parameters to rounding. (In float32 scikit-learn's sums are float32
    and the paths part.)"""
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 5)) + 1.5 * (np.arange(600) % 4)[:, None]  # overlapping clusters
    opts = {"covariance_type": "diag", "init_params": init_params, "n_init": 2, "tol": 1e-6, "reg_covar": 1e-6,
            "max_iter": 500, "random_state": 11}
    theirs = SkGaussianMixture(4, **opts).fit(x)
    ours = GaussianMixture(4, **opts).fit(x)
    assert theirs.n_iter_ > 20 and ours.converged_ and ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.means_.cpu().numpy(), theirs.means_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ours.weights_.cpu().numpy(), theirs.weights_, rtol=1e-10, atol=1e-12)
    assert ours.lower_bound_ == pytest.approx(theirs.lower_bound_, rel=1e-12)


def test_sample_arguments_are_checked() -> None:
    model = GaussianMixture(2, covariance_type="diag", random_state=0).fit(blobs(k=2))
    for bad in (0, -1, 2.5, True, "3", None, np.float64(3.0), torch.tensor([3]), torch.tensor(3.0)):
        with pytest.raises(ValueError, match=f"n_samples must be an integer >= 1, got {re.escape(repr(bad))}"):
            model.sample(bad)
    for bad in (1.5, "a", True, np.float32(0.0)):
        with pytest.raises(ValueError, match="generator must be a torch.Generator, an integer seed or None"):
            model.sample(3, generator=bad)
    with pytest.raises(ValueError, match=r"generator seed must lie in \[-2\*\*63, 2\*\*64\), got 18446744073709551616"):
        model.sample(3, generator=2**64)
    x, labels = model.sample(5, generator=7)
    for n, seed in ((np.int64(5), np.int64(7)), (torch.tensor(5), torch.tensor(7)), (np.uint8(5), np.int32(7))):
        x2, labels2 = model.sample(n, generator=seed)  # integers of any kind: the same draw
        assert torch.equal(x, x2) and torch.equal(labels, labels2)
    assert model.sample(3, generator=2**64 - 1)[0].shape == (3, 3)


@pytest.mark.parametrize("cov", ["diag", "spherical", "tied"])
def test_float32_fit_of_a_tight_component_far_from_the_origin_matches_float64(cov) -> None:
    """Blobs at 0 (σ = 1) and at 1000 (σ = 0.01): float32 raw second moments cancel there (the far
    blob's variances came out from -7.5e-3 to 7.0e-3 where they are 1e-4); the kernel redoes such
    statistics in float64, so the float32 fit's covariances are the float64 fit's to 1e-4."""
    g = torch.Generator().manual_seed(0)
    near = torch.randn(4000, 4, generator=g, dtype=torch.float64)
    far = 1e3 + 0.01 * torch.randn(4000, 4, generator=g, dtype=torch.float64)
    x = torch.cat([near, far]).float()
    fits = [GaussianMixture(2, covariance_type=cov, random_state=0, impl="ext").fit(x.to(dt).numpy())
            for dt in (torch.float32, torch.float64)]
    c32, c64 = (torch.as_tensor(f.covariances_).double() for f in fits)
    torch.testing.assert_close(c32, c64, rtol=1e-4, atol=0)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_rows_beyond_float32_squared_range_are_ranked_in_float64(covariance_type):
    """A float32 model's squared distances overflow for features beyond ~1.8e19: such a row got
    label 0 and NaN probabilities, silently; it is ranked in float64 now, as scikit-learn does."""
    from lightning_genmodels.ops.gmm import _gmm_log_prob_ref

    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    model = GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(x)
    far = torch.tensor([[1e30, 0.0, 0.0], [0.1, 0.2, 0.3], [-1e30, 5.0, 0.0], [2e20, -3e25, 1.0]])
    joint = _gmm_log_prob_ref(far.double(), model.weights_.double().log(), model.means_.double(),
                              model.precisions_cholesky_.double(), covariance_type)
    assert torch.equal(model.predict(far), joint.argmax(1))
    proba = model.predict_proba(far)
    assert proba.dtype == torch.float32 and torch.isfinite(proba).all()
    torch.testing.assert_close(proba, torch.softmax(joint, 1).float())
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (out,) = trainer.predict(model, DataLoader(TensorDataset(far), batch_size=4))
    assert torch.equal(out["labels"], joint.argmax(1))
    assert out["log_prob"].dtype == torch.float32 and torch.isneginf(out["log_prob"][[0, 2, 3]]).all()
