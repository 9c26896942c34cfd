"""FIDCallback: 2-process CPU DDP gives the metrics of 1 process; drives ModelCheckpoint."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_genmodels import VAE
from lightning_genmodels.callbacks import FIDCallback
from lightning_genmodels.metrics import SampleQuality
from lightning_genmodels.metrics.quality import sample_chunks

from .ddp_fid_script import NoisyBank, loader, run

ROOT = Path(__file__).resolve().parents[2]
# KID draws its subsets from features in a canonical order, so it does not depend on the ranks;
# its MMD cancels large kernel sums, which magnifies the features' rounding (2e-6 relative seen)
KID_REL = 1e-5


def test_chunks_split_the_same_samples_over_any_number_of_ranks() -> None:
    one = sample_chunks(300, 64, seed=7)
    assert [s for _, s in one] == [64, 64, 64, 64, 44] and [seed for seed, _ in one] == [7, 8, 9, 10, 11]
    two = sample_chunks(300, 64, 7, rank=0, world_size=2) + sample_chunks(300, 64, 7, rank=1, world_size=2)
    assert sorted(two) == one


def run_two_processes(mnist_dir: Path, cache: Path, out: Path, **overrides) -> list[dict]:
    """ddp_fid_script.py on 2 processes: each rank's callback.last and logged metrics."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    script = Path(__file__).with_name("ddp_fid_script.py")
    try:
        proc = subprocess.run([sys.executable, str(script), str(mnist_dir), str(cache), str(out), json.dumps(overrides)],
                              env=env, cwd=out, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"DDP run hung:\n{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_process_ddp_equals_one_process(mnist_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ranks = run_two_processes(mnist_dir, cache, tmp_path)
    _, single = run(str(mnist_dir), str(cache), devices=1)
    assert ranks[0]["last"] == ranks[1]["last"]  # every rank logs the synchronised values
    # the same images; their float32 features may round differently per process (threads, batch
    # sizes): on a 2-core Xeon (2026-11-29) FID and confidence differed by 1.4e-9 and 2e-9 relative.
    for name in ("fid", "precision", "recall", "mode_coverage", "confidence"):
        assert ranks[0]["last"][name] == pytest.approx(single.last[name], rel=1e-7, abs=1e-12), name
        assert ranks[0]["logged"][f"val/{name}"] == pytest.approx(single.last[name], rel=1e-6), name
    assert ranks[0]["last"]["kid"] == pytest.approx(single.last["kid"], rel=KID_REL)
    assert single.last["fid"] > 0


def test_a_rank_without_samples_joins_the_sync(mnist_dir: Path, tmp_path: Path, fid_cache: Path) -> None:
    """4 samples in one chunk: rank 1 draws nothing, yet both ranks get the 1-process metrics."""
    small = {"num_samples": 4, "batch_size": 4, "num_real": 100, "kid_subset_size": 4}
    ranks = run_two_processes(mnist_dir, fid_cache, tmp_path, **small)
    _, single = run(str(mnist_dir), str(fid_cache), devices=1, **small)
    assert ranks[0]["last"] == ranks[1]["last"]
    for name in ("fid", "precision", "recall", "mode_coverage", "confidence"):
        assert ranks[0]["last"][name] == pytest.approx(single.last[name], rel=1e-7, abs=1e-12), name
    assert ranks[0]["last"]["kid"] == pytest.approx(single.last["kid"], rel=KID_REL)


def test_drives_model_checkpoint_on_best_fid(mnist_dir: Path, tmp_path: Path) -> None:
    fid = FIDCallback(data_dir=str(mnist_dir), cache_dir=str(tmp_path / "cache"), num_samples=128, batch_size=64,
                      num_real=500, kid_subset_size=50, every_n_epochs=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/fid", mode="min", every_n_epochs=2, save_top_k=1)
    trainer = Trainer(accelerator="cpu", max_epochs=4, limit_train_batches=1, limit_val_batches=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[fid, ckpt])
    trainer.fit(NoisyBank(str(mnist_dir)), loader(), loader())
    assert ckpt.best_model_path and ckpt.best_model_score is not None
    assert float(ckpt.best_model_score) == pytest.approx(fid.last["fid"])  # same samples each time


@pytest.mark.parametrize("kwargs, match", [
    ({"num_samples": 0}, "num_samples must be >= 4 .*nearest neighbours need 4 images.*got 0"),
    ({"num_samples": 3}, "num_samples must be >= 4 .*got 3"),
    ({"num_real": 3}, "num_real must be >= 4 .*got 3"),
    ({"kid_subset_size": 1}, "kid_subset_size must be >= 2, got 1"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"every_n_epochs": 0}, "every_n_epochs must be >= 1, got 0"),
])
def test_bad_arguments_are_rejected_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FIDCallback(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_samples": 1e4}, "num_samples must be an integer, got 10000.0"),  # failed at the first evaluation
    ({"batch_size": 100.0}, "batch_size must be an integer, got 100.0"),
    ({"seed": -3}, r"seed must be an integer in \[0, 2\*\*64 - 20\] .*got -3"),
    ({"seed": 2**64 - 5}, r"chunk j of the 20 sample chunks has seed \+ j\), got 18446744073709551611"),
])
def test_non_integer_counts_and_out_of_range_seeds_are_rejected_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FIDCallback(**kwargs)


def test_module_without_sample_images_is_rejected() -> None:
    with pytest.raises(TypeError, match="no sample_images"):
        FIDCallback().setup(None, object(), "fit")


def test_a_model_of_other_images_is_refused_at_setup() -> None:
    """A VAE on 32x32 images failed only at the end of the first validation epoch."""
    with pytest.raises(ValueError, match=r"FIDCallback scores MNIST-like images \[N, 1, 28, 28\]; VAE draws "
                                         r"images of shape \[N, 1, 32, 32\]"):
        FIDCallback().setup(None, VAE(latent_dim=4, image_size=32), "fit")


def test_warns_when_validation_is_off(mnist_dir: Path, tmp_path: Path) -> None:
    """With limit_val_batches=0 no FID was ever logged, and nothing said so."""
    fid = FIDCallback(data_dir=str(mnist_dir), cache_dir=str(tmp_path), num_samples=4, batch_size=4, num_real=4)
    trainer = SimpleNamespace(global_rank=0, world_size=1, limit_val_batches=0)
    with pytest.warns(UserWarning, match=r"Trainer\(limit_val_batches=0\) runs none: no val/fid will be logged"):
        fid.setup(trainer, NoisyBank(str(mnist_dir)), "fit")


def test_the_smallest_accepted_counts_evaluate(mnist_dir: Path, tmp_path: Path) -> None:
    """4 samples against 4 real images give finite metrics; 3 would not (k = 3 neighbours)."""
    fid = FIDCallback(data_dir=str(mnist_dir), cache_dir=str(tmp_path), num_samples=4, batch_size=3, num_real=4)
    module = NoisyBank(str(mnist_dir))
    fid.setup(SimpleNamespace(global_rank=0, world_size=1), module, "fit")
    assert all(math.isfinite(v) for v in fid.evaluate(module).values())
    fid.quality.update(module.sample_images(3))
    with pytest.raises(RuntimeError, match="needs more than 3 generated samples"):
        fid.quality.compute()
    with pytest.raises(ValueError, match="kid_subset_size must be >= 2"):
        SampleQuality(kid_subset_size=1)


@pytest.mark.filterwarnings("ignore::lightning_genmodels.ConvergenceWarning")  # 2 iterations on purpose
def test_gmm_logs_fid_during_its_fit(mnist_dir: Path, tmp_path: Path, fid_cache: Path) -> None:
    """The GMM's samples, reshaped to images, are scored at a validation epoch mid-fit."""
    from lightning_genmodels import GaussianMixture, MNISTDataModule

    dm = MNISTDataModule(data_dir=str(mnist_dir), batch_size=2000, val_split=500)
    fid = FIDCallback(data_dir=str(mnist_dir), num_samples=200, batch_size=100, num_real=500,
                      cache_dir=str(fid_cache), kid_subset_size=100)
    model = GaussianMixture(n_components=3, covariance_type="diag", max_iter=2, init_params="random", random_state=0)
    trainer = Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[fid], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path)
    trainer.fit(model, dm)
    assert 0.0 < fid.last["fid"] < float("inf")
    assert "val/fid" in trainer.callback_metrics


def test_evaluates_under_trainer_validate(mnist_dir: Path, fid_cache: Path) -> None:
    """Trainer.validate runs in torch.inference_mode: the callback still scores the samples."""
    fid = FIDCallback(data_dir=str(mnist_dir), cache_dir=str(fid_cache), num_samples=8, batch_size=4, num_real=100,
                      kid_subset_size=4)
    trainer = Trainer(accelerator="cpu", limit_val_batches=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[fid])
    trainer.validate(NoisyBank(str(mnist_dir)), loader(), verbose=False)
    assert set(fid.last) == {"fid", "kid", "precision", "recall", "mode_coverage", "confidence"}
    assert math.isfinite(fid.last["fid"]) and fid.last["fid"] > 0
