"""Command line: ``python -m lightning_genmodels {fit,validate,test,predict} --config ...``.

LightningCLI in subclass mode: ``--model`` takes any LightningModule (ours by short name, e.g.
``GaussianMixture``, or a user's subclass by import path ``my_pkg.MyGMM``), ``--data`` any
LightningDataModule (default ``MNISTDataModule``). This is the only place where objects are
assembled from configuration.
"""
from __future__ import annotations

from typing import Any

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


def main(args: list[str] | None = None, **kwargs: Any) -> GenModelsCLI:
    """Run the CLI; ``args`` replaces ``sys.argv[1:]`` (for tests and notebooks)."""
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
