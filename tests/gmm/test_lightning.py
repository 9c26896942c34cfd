"""GaussianMixture in Lightning: Trainer logs and checkpoints, resuming, MNIST through the
DataModule, two-process DDP, non-finite data found by the EM pass."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels.gmm import GaussianMixture

from .test_module import PARAMS, QUIET, ROOT, blobs, given_init, rel_err

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning", "ignore::lightning_genmodels.ConvergenceWarning"
)


def test_trainer_fit_logs_and_checkpoint_round_trips(tmp_path: Path) -> None:
    x = torch.from_numpy(blobs(seed=8)).float()
    model = GaussianMixture(3, covariance_type="tied", max_iter=50, random_state=0)
    trainer = Trainer(max_epochs=50, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    trainer.fit(model, DataLoader(TensorDataset(x), batch_size=128, shuffle=True))
    assert model.converged_ and model.n_iter_ < 50 and trainer.current_epoch == model.n_iter_
    assert float(trainer.callback_metrics["train/lower_bound"]) == pytest.approx(model.lower_bound_, rel=1e-6)
    path = tmp_path / "gmm.ckpt"
    trainer.save_checkpoint(path)
    fresh = GaussianMixture(3, covariance_type="tied")
    for loaded in (GaussianMixture.load_from_checkpoint(path), fresh):
        if not loaded.fitted:
            loaded.load_state_dict(model.state_dict())
        for name in PARAMS:
            assert torch.equal(getattr(loaded, name), getattr(model, name)), name
        assert (loaded.converged_, loaded.n_iter_, loaded.lower_bounds_) == (
            model.converged_, model.n_iter_, model.lower_bounds_)
        assert torch.equal(loaded.predict(x), model.predict(x))


@pytest.mark.parametrize("covariance_type", ["full", "spherical"])
def test_float64_fit_loads_as_float64(tmp_path: Path, covariance_type: str) -> None:
    """A float64 fit (fit(X) on NumPy data, or a .double() model under a Trainer) loads into a
    fresh float32 module as float64: the parameters and predictions are the saved ones (they
    were rounded to float32, score_samples off by ~1e-6)."""
    x = blobs(seed=8)
    model = GaussianMixture(3, covariance_type=covariance_type, max_iter=5, random_state=0).fit(x)
    assert model.dtype == torch.float64
    fresh = GaussianMixture(3, covariance_type=covariance_type)
    fresh.load_state_dict(model.state_dict())
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="gmm")
    trained = GaussianMixture(3, covariance_type=covariance_type, max_iter=5, random_state=0).double()
    trainer = Trainer(max_epochs=5, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.fit(trained, DataLoader(TensorDataset(torch.from_numpy(x)), batch_size=128))
    loaded = GaussianMixture.load_from_checkpoint(tmp_path / "gmm.ckpt")
    for saved, copy in ((model, fresh), (trained, loaded)):
        assert copy.dtype == torch.float64
        for name in PARAMS:
            assert torch.equal(getattr(copy, name), getattr(saved, name)), name
        assert torch.equal(copy.score_samples(x), saved.score_samples(x))


def test_validate_and_test_need_a_fitted_model(tmp_path: Path) -> None:
    """Unfitted, validate and test raise as predict does (they returned [{}]); fit's sanity check
    before the initialisation still passes, and a fitted model validates and tests."""
    loader = DataLoader(TensorDataset(torch.from_numpy(blobs())), batch_size=128)
    trainer = Trainer(default_root_dir=tmp_path, **QUIET)
    for run in (trainer.validate, trainer.test, trainer.predict):
        with pytest.raises(RuntimeError, match="GaussianMixture is not fitted yet.*--ckpt_path on the command line"):
            run(GaussianMixture(3, covariance_type="diag").double(), loader)
    model = GaussianMixture(3, covariance_type="diag", max_iter=3, tol=0.0, random_state=0).double()
    fit = Trainer(max_epochs=3, num_sanity_val_steps=2, default_root_dir=tmp_path, **QUIET)
    fit.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    assert model.n_iter_ == 3 and "val/log_likelihood" in fit.callback_metrics
    (result,) = trainer.test(model, loader, verbose=False)
    assert result["test/log_likelihood"] == pytest.approx(model.score(blobs()), rel=1e-6)


def test_validate_and_test_refuse_nan_data(tmp_path: Path) -> None:
    """A NaN row in validation or test data was logged as a NaN log-likelihood, silently."""
    x = torch.from_numpy(blobs())
    model = GaussianMixture(3, covariance_type="diag", random_state=0).fit(x)
    bad = x.clone()
    bad[5, 1] = float("nan")
    trainer = Trainer(default_root_dir=tmp_path, **QUIET)
    for run, stage in ((trainer.validate, "val"), (trainer.test, "test")):
        with pytest.raises(ValueError, match=f"{stage}: log p\\(x\\) is not finite for 1 of 128 rows"):
            run(model, DataLoader(TensorDataset(bad), batch_size=128))


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_half_precision_trainer_is_refused_by_name(precision: str, tmp_path: Path) -> None:
    """bf16-true failed inside the op: 'x must be float32 or float64, got torch.bfloat16'."""
    trainer = Trainer(precision=precision, max_epochs=1, default_root_dir=tmp_path, **QUIET)
    with pytest.raises(ValueError, match=f"not Trainer\\(precision='{precision}'\\)"):
        trainer.fit(GaussianMixture(3, covariance_type="diag"), DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=32))


def test_resume_from_a_mid_fit_checkpoint(tmp_path: Path) -> None:
    x = torch.from_numpy(blobs(seed=9))
    kwargs = {"n_components": 3, "max_iter": 6, "tol": 0.0, **given_init(x.numpy(), 3, "full")}
    loader = DataLoader(TensorDataset(x), batch_size=128)
    every_epoch = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1)
    straight = GaussianMixture(**kwargs).double()
    trainer = Trainer(max_epochs=6, callbacks=[every_epoch], logger=False, enable_progress_bar=False)
    trainer.fit(straight, loader)
    assert trainer.global_step == straight.n_iter_ == 6  # one step per EM iteration
    mid = tmp_path / "epoch=2-step=3.ckpt"
    resumed = GaussianMixture(**kwargs).double()
    Trainer(max_epochs=6, **QUIET).fit(resumed, loader, ckpt_path=mid)
    assert resumed.lower_bounds_ == straight.lower_bounds_
    for name in PARAMS:
        assert torch.equal(getattr(resumed, name), getattr(straight, name)), name
    partial = GaussianMixture.load_from_checkpoint(mid)  # a mid-fit checkpoint is usable
    assert partial.n_iter_ == 3 and partial.predict(x).shape == (500,)


def test_verbose_resumed_and_warm_fits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """verbose=2 on a fit resumed from a checkpoint (a fresh module: AttributeError '_tick'
    before) and on a warm start, which prints scikit-learn's "Initialization 0" and times its
    own fit (the time since the previous fit's start before)."""
    x = torch.from_numpy(blobs(seed=9))
    kwargs = {"n_components": 3, "max_iter": 6, "tol": 0.0, "random_state": 0}
    loader = DataLoader(TensorDataset(x), batch_size=128)
    every_epoch = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1)
    Trainer(max_epochs=3, callbacks=[every_epoch], logger=False, enable_progress_bar=False).fit(
        GaussianMixture(**kwargs).double(), loader)
    resumed = GaussianMixture(**kwargs, verbose=2, verbose_interval=1)
    Trainer(max_epochs=6, **QUIET).fit(resumed, loader, ckpt_path=tmp_path / "epoch=1-step=2.ckpt")
    assert resumed.n_iter_ == 6 and "Iteration 6\t time lapse" in capsys.readouterr().out
    warm = GaussianMixture(3, covariance_type="diag", random_state=0, warm_start=True, verbose=2).fit(x)
    capsys.readouterr()
    time.sleep(1.0)
    warm.fit(x)
    out = capsys.readouterr().out
    assert out.startswith("Initialization 0\n")
    assert float(re.search(r"time lapse ([0-9.]+)s", out).group(1)) < 1.0


def test_resume_a_fit_the_trainer_stopped_continues_em(tmp_path: Path) -> None:
    x = torch.from_numpy(blobs(seed=9))
    kwargs = {"n_components": 3, "max_iter": 50, "tol": 0.0, **given_init(x.numpy(), 3, "full")}
    loader = DataLoader(TensorDataset(x), batch_size=128)
    straight = GaussianMixture(**kwargs).double()
    Trainer(max_epochs=6, **QUIET).fit(straight, loader)
    first = GaussianMixture(**kwargs).double()
    trainer = Trainer(max_epochs=3, **QUIET)
    trainer.fit(first, loader)
    trainer.save_checkpoint(tmp_path / "stopped.ckpt")
    resumed = GaussianMixture(**kwargs).double()
    Trainer(max_epochs=6, **QUIET).fit(resumed, loader, ckpt_path=tmp_path / "stopped.ckpt")
    assert resumed.n_iter_ == 6 and resumed.lower_bounds_ == straight.lower_bounds_
    for name in PARAMS:
        assert torch.equal(getattr(resumed, name), getattr(straight, name)), name
    done = GaussianMixture(**{**kwargs, "max_iter": 3}).double()  # nothing left to do: a warning, kept
    with pytest.warns(UserWarning, match="nothing to resume"):
        Trainer(max_epochs=6, **QUIET).fit(done, loader, ckpt_path=tmp_path / "stopped.ckpt")
    assert done.n_iter_ == 3 and torch.equal(done.means_, first.means_)


def test_initialisation_reads_limited_batches_in_one_order(tmp_path: Path) -> None:
    class Counted(TensorDataset):
        reads = 0

        def __getitem__(self, i):
            Counted.reads += 1
            return super().__getitem__(i)

    x = torch.from_numpy(blobs(n=600, seed=3))
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # the shuffle's order: the start must not depend on it
        Counted.reads = 0
        model = GaussianMixture(3, covariance_type="diag", init_params="kmeans", max_iter=0, random_state=0,
                                kmeans_max_iter=3).double()
        loader = DataLoader(Counted(x), batch_size=50, shuffle=True)
        Trainer(max_epochs=1, limit_train_batches=2, **QUIET).fit(model, loader)
        runs.append(model.means_.clone())
        assert Counted.reads <= 1000  # 950: some 9 passes over the 2 batches (of all 600 rows: ~5,000)
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_mnist_diag_through_trainer_and_datamodule(mnist_dir: Path) -> None:
    from lightning_genmodels.data import MNISTDataModule

    dm = MNISTDataModule(data_dir=str(mnist_dir), val_split=55000, batch_size=1000, seed=0)
    model = GaussianMixture(10, covariance_type="diag", max_iter=3, random_state=0, kmeans_max_iter=10)
    Trainer(max_epochs=3, **QUIET).fit(model, datamodule=dm)
    assert model.means_.shape == (10, 784) and model.n_iter_ == 3
    assert all(math.isfinite(b) for b in model.lower_bounds_)
    for name in PARAMS:
        assert torch.isfinite(getattr(model, name)).all(), name
    assert model.lower_bounds_[-1] > model.lower_bounds_[0]
    batch = next(iter(dm.train_dataloader()))[0]
    assert torch.isfinite(model.score_samples(batch)).all()


def test_mnist_full_covariance_cholesky_works(mnist_dir: Path) -> None:
    from lightning_genmodels.data import MNISTDataModule

    dm = MNISTDataModule(data_dir=str(mnist_dir), val_split=58000, batch_size=1000, seed=0)
    model = GaussianMixture(2, covariance_type="full", max_iter=2, init_params="k-means++", random_state=0)
    Trainer(max_epochs=2, **QUIET).fit(model, datamodule=dm)  # constant border pixels: reg_covar
    assert torch.isfinite(model.precisions_cholesky_).all() and math.isfinite(model.lower_bound_)


def test_two_process_ddp_equals_one_process(tmp_path: Path) -> None:
    """2 CPU ranks with N = 1003 (not divisible by 2 × 64): padding must not bias the sums; fit(X)'s
    k-means++ start over the two shards (501 and 502 rows) is scikit-learn's on all the rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(340, 4, generator=g, dtype=torch.float64) + 4 * i for i in range(3)])[:1003]
    init = given_init(x.numpy(), 3, "full")
    kwargs = {"n_components": 3, "covariance_type": "full", "max_iter": 4, "tol": 0.0,
              **{k: v.tolist() for k, v in init.items()}}
    torch.save({"x": x, "kwargs": kwargs, "batch_size": 64}, tmp_path / "in.pt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    script = ROOT / "tests" / "gmm" / "ddp_script.py"
    try:
        proc = subprocess.run([sys.executable, str(script), str(tmp_path / "in.pt"), str(tmp_path)],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"DDP run hung:\n{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    single = GaussianMixture(**kwargs).fit(x, batch_size=64)
    for case in ("loader", "fit", "kmeans", "kmeanspp"):
        ranks = [torch.load(tmp_path / f"{case}.rank{r}.pt") for r in (0, 1)]
        for name in PARAMS[:4]:
            assert torch.equal(ranks[0][name], ranks[1][name]), (case, name)  # ranks agree
            if case not in ("kmeans", "kmeanspp"):
                assert rel_err(ranks[0][name], getattr(single, name).cpu().numpy()) < 1e-8, (case, name)
        if case not in ("kmeans", "kmeanspp"):
            assert ranks[0]["lower_bound_"] == pytest.approx(single.lower_bound_, rel=1e-8)
    alone = GaussianMixture(3, covariance_type="diag", init_params="k-means++", max_iter=3, random_state=5)
    alone.fit(x, batch_size=64, accelerator="cpu")
    for r in (0, 1):  # each rank's one-process fit saw all the rows, and only its own
        after = torch.load(tmp_path / f"after.rank{r}.pt")
        for name in PARAMS[:4]:
            assert rel_err(after[name], getattr(alone, name).cpu().numpy()) < 1e-10, (r, name)
    centres = sk_kmeans_plusplus(x.numpy(), 3, random_state=5)[0]
    means = torch.load(tmp_path / "kmeanspp.rank0.pt")["means_"]  # the rows over nk + 10 eps, as scikit-learn's
    torch.testing.assert_close(means, torch.from_numpy(centres), rtol=1e-14, atol=0)


@pytest.mark.parametrize("impl", ["ref", "ext"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_data_found_by_the_em_pass(impl: str, bad: float) -> None:
    x = torch.from_numpy(blobs(n=100))
    x[41, 0] = bad
    init = given_init(x.numpy(), 3, "diag")
    model = GaussianMixture(3, covariance_type="diag", impl=impl, **init).double()
    with pytest.raises(ValueError, match="NaN or infinite"):
        Trainer(max_epochs=2, **QUIET).fit(model, DataLoader(TensorDataset(x), batch_size=32))
