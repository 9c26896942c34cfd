"""When a training step should call ``self.log``.

Lightning writes training metrics to the logger every ``log_every_n_steps`` batches, yet each
``self.log`` call costs about 0.1-0.3 ms of Python on every batch (the result's ``Metric.to``),
which is 5-10% of a small CPU model's step. The VAE and GAN modules therefore log
their training metrics only on the batches whose metrics Lightning writes, and on the last
batch of each epoch and of the run (so ``callback_metrics`` hold the epoch's final values for checkpointing
and early stopping), and on every batch while a checkpoint callback monitors a metric within
the epoch (``every_n_train_steps`` or ``train_time_interval``: it ranks the current values) or
a checkpoint or early-stopping callback reads one at validation runs inside the epoch
(``val_check_interval``), or an LR scheduler reads one every step (``ReduceLROnPlateau`` with
``interval="step"``).
A run that ``max_time`` (a :class:`~lightning.pytorch.callbacks.Timer`) may stop at the end of
this batch logs it too: the batches of its last ~3 average batch times.
``Trainer(log_every_n_steps=1)`` logs every batch. Under DDP the metrics are averaged over the
ranks where a callback monitors one (:func:`sync_train_metrics`), each rank's own otherwise.
"""
from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Timer

TIMER_MARGIN = 3  # average batch times: a batch within them of the Timer's limit may be the last


def log_this_step(module: LightningModule, batch_idx: int) -> bool:
    """True when Lightning will write the metrics logged by this training batch, or may."""
    trainer = module._trainer
    if trainer is None:  # a training_step called by hand
        return True
    if batch_idx + 1 >= trainer.num_training_batches or trainer.should_stop:
        return True
    if 0 <= trainer.max_steps <= trainer.global_step + 1:  # the run's last batch (or one before)
        return True
    if any(_monitors_within_epochs(cb) for cb in trainer.checkpoint_callbacks):
        return True
    if any(_reads_at_validation_within_epochs(cb, trainer)
           for cb in [*trainer.checkpoint_callbacks, *trainer.early_stopping_callbacks]):
        return True
    # an LR scheduler stepped on a metric every step (ReduceLROnPlateau, interval "step") raised
    # that it was "not available" on the batches that logged nothing
    if any(config.monitor is not None and config.interval == "step" for config in trainer.lr_scheduler_configs):
        return True
    near_end = any(_may_stop_after_this_batch(cb, trainer) for cb in trainer.callbacks if isinstance(cb, Timer))
    if sync_train_metrics(module):  # each rank's clock: all log (a collective) if one may stop
        near_end = trainer.strategy.reduce_boolean_decision(near_end, all=False)
    if near_end:
        return True
    # Lightning's own test (every log_every_n_steps-th batch that stepped), private but read-only;
    # without it, log every batch.
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


def sync_train_metrics(module: LightningModule) -> bool:
    """Whether training metrics are logged averaged over the ranks (``sync_dist``): under DDP,
    where a ModelCheckpoint or EarlyStopping monitors one. Each rank's own value made the ranks
    disagree: ModelCheckpoint(monitor="train/loss") named rank 1's best checkpoint after rank 1's
    loss, a file rank 0 never wrote, and ``trainer.test(ckpt_path="best")`` raised
    FileNotFoundError there. Otherwise each rank logs its own, with no collective per step."""
    trainer = module._trainer
    if trainer is None or trainer.world_size <= 1:
        return False
    return any(str(getattr(cb, "monitor", None) or "").startswith("train/")
               for cb in [*trainer.checkpoint_callbacks, *trainer.early_stopping_callbacks])


def _monitors_within_epochs(callback: object) -> bool:
    """A ModelCheckpoint that ranks by a metric and may save between epochs (an attribute it
    lacks counts as yes: logging every batch is only slower)."""
    if getattr(callback, "monitor", None) is None:
        return False
    return getattr(callback, "_every_n_train_steps", 1) >= 1 or getattr(callback, "_train_time_interval", None) is not None


def _reads_at_validation_within_epochs(callback: object, trainer: Trainer) -> bool:
    """A ModelCheckpoint or EarlyStopping that reads its metric when a validation run ends, and
    validation may run inside an epoch (without the training metrics logged, they raised that
    the metric was missing, or read stale values)."""
    if getattr(callback, "monitor", None) is None:
        return False
    at_epoch_end = getattr(callback, "_check_on_train_epoch_end", None)  # EarlyStopping's, set at setup
    should_save = getattr(callback, "_should_save_on_train_epoch_end", None)  # ModelCheckpoint's test
    if should_save is not None:
        at_epoch_end = should_save(trainer)
    if at_epoch_end:
        return False
    if getattr(trainer, "_val_check_time_interval", None) is not None or trainer.check_val_every_n_epoch is None:
        return True
    return trainer.val_check_batch is not None and trainer.val_check_batch < trainer.num_training_batches


def _may_stop_after_this_batch(timer: Timer, trainer: Trainer) -> bool:
    """A per-batch Timer (``max_time``) may stop the run when this batch ends: less training time
    is left than :data:`TIMER_MARGIN` batches take on average (validation included) so far."""
    remaining = timer.time_remaining("train")
    if remaining is None or getattr(timer, "_interval", "step") != "step":
        return False
    batches = trainer.fit_loop.total_batch_idx + 1  # this run's batches, this one included
    return remaining <= TIMER_MARGIN * timer.time_elapsed("train") / max(batches, 1)
