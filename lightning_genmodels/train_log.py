"""When a training step should call ``self.log``.

Lightning writes training metrics to the logger every ``log_every_n_steps`` batches, yet each
``self.log`` call costs about 0.1-0.3 ms of Python on every batch (the result's ``Metric.to``),
which is 5-10% of a small CPU model's step. The VAE and GAN modules therefore log
their training metrics only on the batches whose metrics Lightning writes, and on the last
batch of each epoch and of the run (so ``callback_metrics`` hold the epoch's final values for checkpointing
and early stopping). ``Trainer(log_every_n_steps=1)`` logs every batch.
"""
from __future__ import annotations

from lightning.pytorch import LightningModule


def log_this_step(module: LightningModule, batch_idx: int) -> bool:
    """True when Lightning will write the metrics logged by this training batch, or may."""
    trainer = module._trainer
    if trainer is None:  # a training_step called by hand
        return True
    if batch_idx + 1 >= trainer.num_training_batches or trainer.should_stop:
        return True
    if 0 <= trainer.max_steps <= trainer.global_step + 1:  # the run's last batch (or one before)
        return True
    # Lightning's own test (every log_every_n_steps-th batch that stepped), private but read-only;
    # without it, log every batch.
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))
