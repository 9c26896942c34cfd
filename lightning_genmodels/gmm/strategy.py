"""What EM needs from Lightning's optimisation machinery, through its public API.

- :class:`EMStep`: the optimizer of a mixture. EM has no gradients; its "step" is the M-step,
  passed in as the closure. Calling it through ``LightningModule.optimizers().step`` once per
  epoch makes ``trainer.global_step`` count EM iterations, so ``max_steps`` and
  ``ModelCheckpoint`` (which skips saving while the step count stands still) just work.
- :class:`EMDDPStrategy` (``strategy="ddp_em"``): DDP without the DistributedDataParallel
  wrapper, which refuses a module with no trainable parameters and would have nothing to
  reduce; the E-step sums are reduced across ranks by the ``EMStatistics`` metric instead.
"""
from __future__ import annotations

from typing import Callable

import torch
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry


class EMStep(torch.optim.Optimizer):
    """An optimizer whose ``step(closure)`` runs the closure (the M-step) and nothing else.

    torch optimizers need a parameter: it holds one empty placeholder tensor, never updated.
    """

    def __init__(self) -> None:
        super().__init__([torch.empty(0)], {})

    def step(self, closure: Callable[[], None] | None = None) -> None:  # type: ignore[override]
        if closure is not None:
            closure()


class EMDDPStrategy(DDPStrategy):
    """DDP processes and collectives, with the LightningModule left unwrapped (see module doc)."""

    def configure_ddp(self) -> None:
        pass  # no DistributedDataParallel: EMStatistics syncs the sufficient statistics

    @classmethod
    def register_strategies(cls, strategy_registry) -> None:
        for name, start_method in (("ddp_em", "popen"), ("ddp_em_spawn", "spawn")):
            if name not in strategy_registry:
                strategy_registry.register(
                    name, cls, description=f"DDP for EM (no gradient sync), start_method '{start_method}'",
                    start_method=start_method,
                )


EMDDPStrategy.register_strategies(StrategyRegistry)
