"""DDP helpers shared by the families: DistributedSampler's padding weighted out of per-row
averages, and torchmetrics' syncing tied to the running Trainer.

``DistributedSampler`` (and Lightning's ``DistributedSamplerWrapper``, a subclass) with
``drop_last=False`` repeats the first ``total_size - len(dataset)`` indices at the END of its
padded index list, and rank r takes positions ``r, r + R, r + 2R, ...`` of it (R replicas). The
j-th sample rank r sees is therefore padding exactly when ``r + j R >= len(dataset)``; those
rows get weight 0 so each data point counts once across ranks. Lightning gives validation and
test loaders such a sampler under DDP, so a metric averaged over rows counted the repeated rows
twice (5 images on 2 ranks: 6 rows, image 0 twice).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler
from torchmetrics import Metric
from torchmetrics.aggregation import MeanMetric

__all__ = ["eval_batch_weights", "eval_means", "follow_world", "log_row_means", "padding_weights"]


def padding_weights(sampler: Any, start: int, n_rows: int, device: torch.device) -> Tensor | None:
    """Sample weights [n_rows] (0 on DistributedSampler padding, 1 elsewhere), or None when
    no row of ``start .. start + n_rows`` (rank-local positions) is padding."""
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return None
    n_data = len(sampler.dataset)  # type: ignore[arg-type]
    if sampler.total_size <= n_data:
        return None
    first_pad = max(0, math.ceil((n_data - sampler.rank) / sampler.num_replicas))
    if start + n_rows <= first_pad:
        return None
    j = torch.arange(start, start + n_rows, device=device)
    return (j < first_pad).to(torch.float64)


def eval_batch_weights(module: LightningModule, batch_idx: int, n_rows: int) -> Tensor | None:
    """Weights [n_rows] (0 on padding) of batch ``batch_idx`` of the validation or test loader
    the module's Trainer is running, or None where no row is padding (or the loader is not one
    DataLoader of fixed ``batch_size``, whose rows' positions are unknown)."""
    trainer = module._trainer
    if trainer is None or trainer.world_size <= 1:
        return None
    try:  # the loader of the running loop (private: a Lightning without it weighs no row out)
        combined = trainer._evaluation_loop._combined_loader
    except (AttributeError, RuntimeError):  # RuntimeError: not evaluating
        return None
    loader = None if combined is None else combined.iterables
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        return None
    return padding_weights(loader.sampler, batch_idx * loader.batch_size, n_rows, module.device)


def eval_means(names: tuple[str, ...]) -> nn.ModuleDict:
    """A float64 ``MeanMetric`` per stage (val, test) and name, keyed ``f"{stage}_{name}"``, for
    :func:`log_row_means` (their states are not saved in checkpoints). A NaN row makes the mean
    NaN: ``nan_strategy=nan`` puts NaN back in with weight 1 (torchmetrics 1.9's "disable" also
    set every weight to 1, counting the padding again)."""
    return nn.ModuleDict({f"{stage}_{name}": MeanMetric(nan_strategy=math.nan).set_dtype(torch.float64)
                          for stage in ("val", "test") for name in names})


def log_row_means(module: LightningModule, means: nn.ModuleDict, stage: str, rows: dict[str, Tensor],
                  batch_idx: int, **log_kwargs: Any) -> None:
    """Log each per-row value [B] of a validation or test batch as ``{stage}/{name}``: its mean
    over the data set, through the metric ``means[f"{stage}_{name}"]`` (:func:`eval_means`),
    with the rows DistributedSampler repeats weighted 0. torchmetrics sums the weighted sums and
    the weights over ranks at the epoch's end; Lightning's own epoch mean of ``self.log(value,
    batch_size=n)`` could not weight rows, and averaged the ranks' integer row counts with
    integer division."""
    weights = eval_batch_weights(module, batch_idx, next(iter(rows.values())).shape[0])
    trainer = module._trainer
    follow_world(means, 1 if trainer is None else trainer.world_size)
    for name, value in rows.items():
        metric = means[f"{stage}_{name}"]
        metric.update(value.detach(), torch.ones_like(value) if weights is None else weights.to(value))
        module.log(f"{stage}/{name}", metric, **log_kwargs)


def follow_world(module: nn.Module, world_size: int) -> None:
    """Make every torchmetrics Metric in ``module`` sync across ranks when ``world_size`` (the
    running Trainer's) is above 1, and only then: their default follows any initialised process
    group, so after a DDP fit a one-process Trainer in the same script joined the finished group
    and failed ("Connection closed by peer", or a hang while the other rank still runs)."""
    synced = _synced if world_size > 1 else _alone
    for metric in module.modules():
        if isinstance(metric, Metric):
            metric.distributed_available_fn = synced


def _synced() -> bool:
    return True


def _alone() -> bool:
    return False
