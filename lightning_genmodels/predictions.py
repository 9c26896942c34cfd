"""PredictionWriter: ``Trainer.predict``'s outputs saved to one file, in dataset order, the same
from one process or many (Lightning's ``BasePredictionWriter`` leaves the writing to you)."""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor


def _rows(outputs: list[Any], indices: list[list[int]]) -> dict[str, Tensor] | None:
    """The batch outputs (each a Tensor or a dict of Tensors, one row per sample) joined along
    the batch, with ``index`` [N]; None when they are not of that form."""
    if len(outputs) != len(indices) or not outputs:
        return None
    batches = [{"prediction": out} if isinstance(out, Tensor) else out for out in outputs]
    keys = batches[0].keys() if isinstance(batches[0], dict) else None
    for out, idx in zip(batches, indices):
        if not isinstance(out, dict) or out.keys() != keys or "index" in keys:
            return None
        if not all(isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == len(idx) for v in out.values()):
            return None
    rows = {k: torch.cat([out[k] for out in batches]) for k in keys}
    rows["index"] = torch.tensor([i for idx in indices for i in idx], dtype=torch.long)
    return rows


def _in_dataset_order(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The ranks' rows joined, sorted by ``index``, each index once (DistributedSampler pads a
    rank's share with repeats of the first samples)."""
    rows = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    index, order = torch.sort(rows["index"], stable=True)
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]
    return {k: v[order[first]] for k, v in rows.items()}


def _save_atomically(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, then renamed over it: a failed write
    (a full disk, an interrupt) leaves no truncated file and the previous one as it was."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


class PredictionWriter(BasePredictionWriter):
    """Saves ``Trainer.predict``'s outputs to ``<output_dir>/<filename>`` (``torch.save``).

    When every batch's output is a Tensor or a dict of Tensors with one row per sample (the
    ``predict_step`` of every model here), the file holds a dict: each key's rows over the whole
    dataset in dataset order (a Tensor output is called ``prediction``), and ``index`` [N], each
    row's index in the predict dataset. Under DDP rank 0 gathers every rank's rows and drops the
    repeats DistributedSampler pads with, so the file equals a one-process run's. Other outputs
    are saved as they come, ``{"batches": [per rank: outputs], "batch_indices": [...]}``, with a
    warning. With several predict dataloaders the file holds a list, one entry per dataloader.

    ``python -m lightning_genmodels predict`` adds one when the config names no prediction writer,
    and prints the file's path.

    Args:
        output_dir: the folder; None means the Trainer's ``log_dir`` (``default_root_dir`` when
            it has no logger).
        filename: the file's name.
    """

    def __init__(self, output_dir: str | None = None, filename: str = "predictions.pt") -> None:
        super().__init__("epoch")
        if not filename or os.sep in filename or filename in (".", ".."):
            raise ValueError(f"filename={filename!r}: give a file name, not a path (output_dir is the folder)")
        self.output_dir = output_dir
        self.filename = filename
        self.path: str | None = None  # set by the last write

    def _gather(self, trainer: Trainer, obj: Any) -> list[Any]:
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            parts: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(parts, obj)
            return parts
        return [obj]

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions: Any,
                           batch_indices: Any) -> None:
        folder = self.output_dir or trainer.log_dir or trainer.default_root_dir  # (log_dir: collective)
        path = os.path.join(folder, self.filename)
        per_loader = predictions if trainer.predict_loop.num_dataloaders > 1 else [predictions]
        results = []
        for outputs, indices in zip(per_loader, batch_indices):
            parts = self._gather(trainer, _rows(outputs, indices))  # None where not of that form
            if all(part is not None for part in parts):
                results.append(_in_dataset_order(parts))
            else:
                results.append({"batches": self._gather(trainer, outputs),
                                "batch_indices": self._gather(trainer, indices)})
                if trainer.is_global_zero:
                    warnings.warn(f"PredictionWriter: predict_step's outputs are not Tensors (or dicts of Tensors) "
                                  f"with one row per sample; {path} holds them batch by batch", stacklevel=2)
        if trainer.is_global_zero:
            os.makedirs(folder, exist_ok=True)
            _save_atomically(results[0] if len(results) == 1 else results, path)
        trainer.strategy.barrier("PredictionWriter")
        self.path = path
