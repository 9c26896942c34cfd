"""Command line: ``python -m lightning_genmodels {fit,validate,test,predict} --config ...``.

LightningCLI in subclass mode: ``--model`` takes any LightningModule (ours by short name, e.g.
``GaussianMixture``, or a user's subclass by import path ``my_pkg.MyGMM``), ``--data`` any
LightningDataModule (default ``MNISTDataModule``). This is the only place where objects are
assembled from configuration.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Iterator

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

import lightning_genmodels  # noqa: F401  (registers our classes for short names)


class GenModelsCLI(LightningCLI):
    """LightningCLI that prints the final metrics after each subcommand."""

    def _print_metrics(self) -> None:
        if not self.trainer.is_global_zero:
            return
        metrics = {k: v for k, v in self.trainer.callback_metrics.items() if isinstance(v, torch.Tensor)}
        if not metrics:
            return
        width = max(len(k) for k in metrics)
        print(f"\n{'metric':<{width}}  value")
        for key in sorted(metrics):
            print(f"{key:<{width}}  {metrics[key].item():.6g}")

    def after_fit(self) -> None:
        self._print_metrics()

    def after_validate(self) -> None:
        self._print_metrics()

    def after_test(self) -> None:
        self._print_metrics()


# Notices that a quickstart user cannot act on, silenced by name (nothing else is): Lightning
# 2.6's use of a torch pytree API that torch 2.14 deprecates; jsonargparse's deprecations of
# calls inside LightningCLI; the worker-count hint (on a 2-core machine workers only cost).
QUIET_NOTES = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The '\w+_dataloader' does not have many workers",
)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Lightning's info logs (accelerator banner, seed, tips) off, and :data:`QUIET_NOTES`."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for note in QUIET_NOTES:
                warnings.filterwarnings("ignore", message=note)
            with contextlib.suppress(ImportError):
                from jsonargparse._deprecated import JsonargparseDeprecationWarning

                warnings.filterwarnings("ignore", category=JsonargparseDeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def main(args: list[str] | None = None, **kwargs: Any) -> GenModelsCLI:
    """Run the CLI; ``args`` replaces ``sys.argv[1:]`` (for tests and notebooks). Prints the
    final metrics and what the callbacks write, and no Lightning chatter (:func:`quiet`)."""
    with quiet():
        return GenModelsCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            **kwargs,
        )


if __name__ == "__main__":
    main()
