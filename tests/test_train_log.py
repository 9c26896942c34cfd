"""Training metrics are logged only on the batches Lightning writes, and the same rows reach the logger."""
from __future__ import annotations

import csv
import types
from pathlib import Path

import lightning
import pytest
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels import GAN, VAE
from lightning_genmodels.vae import ConvDecoder, ConvEncoder

BATCHES, EVERY = 7, 3


def tiny(family: str) -> LightningModule:
    torch.manual_seed(0)
    if family == "vae":
        return VAE(latent_dim=4, encoder=ConvEncoder(4, channels=(4, 8)), decoder=ConvDecoder(4, channels=(8, 4)))
    return GAN(latent_dim=8, features=4, n_critic=2)


def loader(family: str) -> DataLoader:
    x = torch.rand(BATCHES * 4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    x = x.round() if family == "vae" else x * 2 - 1
    return DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=4)


def fit_and_count(family: str, tmp_path: Path, monkeypatch, always: bool) -> tuple[list[dict], int, dict]:
    """(CSV rows, self.log calls during training, callback_metrics) of a 7-batch epoch."""
    if always:
        monkeypatch.setattr(f"lightning_genmodels.{family}.module.log_this_step", lambda module, batch_idx: True)
    calls = []
    log = LightningModule.log
    monkeypatch.setattr(LightningModule, "log", lambda self, name, *a, **k: (calls.append(name), log(self, name, *a, **k)))
    model = tiny(family)
    trainer = lightning.Trainer(
        accelerator="cpu", max_epochs=1, log_every_n_steps=EVERY, limit_val_batches=0,
        logger=CSVLogger(tmp_path, name=str(always)), enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=loader(family))
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]
    return rows, sum(name.startswith("train/") for name in calls), trainer.callback_metrics


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_logger_gets_the_same_steps_with_fewer_log_calls(family, tmp_path, monkeypatch) -> None:
    rows, calls, metrics = fit_and_count(family, tmp_path, monkeypatch, always=False)
    every_rows, every_calls, _ = fit_and_count(family, tmp_path, monkeypatch, always=True)
    steps = [row["step"] for row in rows if any(k.startswith("train/") for k in row)]
    assert steps == [row["step"] for row in every_rows if any(k.startswith("train/") for k in row)]
    assert len(steps) == BATCHES // EVERY
    names = {k for row in rows for k in row if k.startswith("train/")}
    assert names == {k for row in every_rows for k in row if k.startswith("train/")}
    if family == "gan":
        assert names == {"train/d_loss", "train/g_loss"}
    # logged on batches 3, 6 and the epoch's last (7) instead of all 7: the VAE's 5 metrics per
    # batch; the GAN's d_loss, and g_loss once a generator step (every 2nd batch) has run
    assert (calls, every_calls) == ((15, 35) if family == "vae" else (6, 13))
    assert all(torch.isfinite(v) for k, v in metrics.items() if k.startswith("train/"))


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_a_run_cut_by_max_steps_still_logs_its_last_batch(family) -> None:
    trainer = lightning.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(tiny(family), train_dataloaders=loader(family))
    assert trainer.fit_loop.epoch_loop.batch_idx + 1 < BATCHES  # stopped inside the epoch
    assert "train/loss" in trainer.callback_metrics or "train/d_loss" in trainer.callback_metrics


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_step_checkpoints_rank_by_the_current_values(family, tmp_path, monkeypatch) -> None:
    """A ModelCheckpoint monitoring a training metric every 2 steps skipped the steps whose
    metric had not been logged, or ranked them by a stale one: it must save the files, with the
    scores, of a run that logs every batch."""
    def saved(name: str) -> dict[str, float]:
        ckpt = ModelCheckpoint(dirpath=tmp_path / name, monitor=monitor, every_n_train_steps=2, save_top_k=-1,
                               filename="{step}")
        trainer = lightning.Trainer(accelerator="cpu", max_epochs=1, log_every_n_steps=50, limit_val_batches=0,
                                    logger=False, callbacks=[ckpt], enable_progress_bar=False,
                                    enable_model_summary=False)
        trainer.fit(tiny(family), train_dataloaders=loader(family))
        return {Path(p).name: float(v) for p, v in ckpt.best_k_models.items()}

    monitor = "train/loss" if family == "vae" else "train/d_loss"
    ours = saved("ours")
    monkeypatch.setattr(f"lightning_genmodels.{family}.module.log_this_step", lambda module, batch_idx: True)
    every = saved("every")
    assert len(every) >= 3 and ours == every


class Clock(lightning.Callback):
    """One second of the Timer's clock per training batch (its ``time.monotonic`` is patched)."""

    def __init__(self) -> None:
        self.now = 0.0

    def on_train_batch_start(self, *args) -> None:
        self.now += 1.0


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_a_run_stopped_by_max_time_logs_its_last_batch(family, tmp_path, monkeypatch) -> None:
    """max_time stops the run after the 5th of 7 batches and Lightning writes that batch's row, but
    the modules had not logged it: the row held stale values (a run shorter than
    log_every_n_steps logged nothing at all, and the CLI printed no metrics)."""
    def fit(name: str) -> tuple[list[str], dict]:
        clock = Clock()
        timer_clock = types.SimpleNamespace(monotonic=lambda: clock.now)
        monkeypatch.setattr("lightning.pytorch.callbacks.timer.time", timer_clock)
        trainer = lightning.Trainer(accelerator="cpu", max_time={"seconds": 4.5}, log_every_n_steps=EVERY,
                                    limit_val_batches=0, logger=CSVLogger(tmp_path, name=name), callbacks=[clock],
                                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(tiny(family), train_dataloaders=loader(family))
        assert trainer.fit_loop.epoch_loop.batch_idx == 4  # stopped by the Timer, inside the epoch
        with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
            rows = [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]
        return [row for row in rows if any(k.startswith("train/") for k in row)], trainer.callback_metrics

    rows, metrics = fit("ours")
    monkeypatch.setattr(f"lightning_genmodels.{family}.module.log_this_step", lambda module, batch_idx: True)
    every_rows, every_metrics = fit("every")
    assert [row["step"] for row in every_rows] == ["2", "4"]
    assert rows == every_rows  # the last row held batch 3's values, written as step 4's
    assert {k: v.item() for k, v in metrics.items()} == {k: v.item() for k, v in every_metrics.items()}


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_checkpoints_at_validation_inside_the_epoch_rank_by_the_current_values(family, tmp_path, monkeypatch) -> None:
    """val_check_interval=3 with a ModelCheckpoint monitoring a training metric: it ranks at each
    validation's end, and raised that it could not find the metric (batch 3 was not logged)."""
    def saved(name: str) -> dict[str, float]:
        ckpt = ModelCheckpoint(dirpath=tmp_path / name, monitor=monitor, save_top_k=-1, filename="{step}")
        trainer = lightning.Trainer(accelerator="cpu", max_epochs=1, val_check_interval=EVERY, limit_val_batches=1,
                                    num_sanity_val_steps=0, log_every_n_steps=50, logger=False, callbacks=[ckpt],
                                    enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(tiny(family), train_dataloaders=loader(family), val_dataloaders=loader(family))
        return {Path(p).name: float(v) for p, v in ckpt.best_k_models.items()}

    monitor = "train/loss" if family == "vae" else "train/d_loss"
    ours = saved("ours")
    monkeypatch.setattr(f"lightning_genmodels.{family}.module.log_this_step", lambda module, batch_idx: True)
    every = saved("every")
    assert len(every) == 2 and ours == every


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_early_stopping_at_validation_inside_the_epoch_reads_the_current_values(family, monkeypatch) -> None:
    """EarlyStopping on a training metric with val_check_interval=3 checks at each validation's
    end, and raised that the metric was not available."""
    def best() -> float:
        stop = EarlyStopping(monitor, patience=10)
        trainer = lightning.Trainer(accelerator="cpu", max_epochs=1, val_check_interval=EVERY, limit_val_batches=1,
                                    num_sanity_val_steps=0, log_every_n_steps=50, logger=False, callbacks=[stop],
                                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(tiny(family), train_dataloaders=loader(family), val_dataloaders=loader(family))
        return stop.best_score.item()

    monitor = "train/loss" if family == "vae" else "train/d_loss"
    ours = best()
    monkeypatch.setattr(f"lightning_genmodels.{family}.module.log_this_step", lambda module, batch_idx: True)
    assert ours == best()
