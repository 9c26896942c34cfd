"""scikit-learn's fit bookkeeping for :class:`~.module.GaussianMixture`: ``n_init`` restarts
(the best final lower bound wins), resuming from a checkpoint, the convergence warning and
``verbose`` progress lines."""
from __future__ import annotations

import time
from typing import Any

from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from .estimator import ConvergenceWarning


class RestartsMixin:
    """Methods of GaussianMixture that end an EM run and choose among the restarts."""

    def _report_iteration(self, change: float) -> None:
        hp = self.hparams
        if hp.verbose and self.n_iter_ % hp.verbose_interval == 0:  # scikit-learn's lines
            now = time.perf_counter()
            if hp.verbose >= 2:
                _say(f"  Iteration {self.n_iter_}\t time lapse {now - self._tick:.5f}s\t ll change {change:.5f}")
            else:
                _say(f"  Iteration {self.n_iter_}")
            self._tick = now

    def _resume(self) -> None:
        """Trainer.fit(..., ckpt_path=...): an interrupted fit goes on where it was; a fit the
        Trainer stopped (max_epochs) continues EM from its parameters, counting on from its
        iterations; one that converged or reached max_iter has nothing left (a warning)."""
        if self._in_progress:
            return
        if self.converged_ or self.n_iter_ >= self.hparams.max_iter:
            rank_zero_warn("GaussianMixture: the checkpoint holds a fit that already ended (converged or at "
                           "max_iter): nothing to resume, its parameters are kept")
            self.trainer.should_stop = True
            return
        self._restart, self._n_restarts, self._best, self._in_progress = 0, 1, None, True

    def _candidate(self, converged: bool) -> dict[str, Any]:
        return {"params": self._params(), "n_iter_": self.n_iter_, "lower_bound_": self.lower_bound_,
                "lower_bounds_": list(self.lower_bounds_), "converged_": converged}

    def _end_restart(self, converged: bool) -> None:
        """Keep this run if it is the best so far; start the next one or finish."""
        cand = self._candidate(converged)
        if self.hparams.verbose:
            state = "converged" if converged else "did not converge"
            timing = f". time lapse {time.perf_counter() - self._start:.5f}s\t lower bound {self.lower_bound_:.5f}"
            _say(f"Initialization {state}" + (timing if self.hparams.verbose >= 2 else "."))
        if self._best is None or cand["lower_bound_"] > self._best["lower_bound_"]:
            self._best = cand
        self._restart += 1
        if self._restart < self._n_restarts:
            self._initialize(self._train_batches())
        else:
            self._finish(None)
            self.trainer.should_stop = True

    def _finish(self, candidate: dict[str, Any] | None) -> None:
        best = self._best
        if candidate is not None and (best is None or candidate["lower_bound_"] > best["lower_bound_"]):
            best = candidate
        for name, value in best["params"].items():
            self._buffers[name].copy_(value)
        for key in ("n_iter_", "lower_bound_", "lower_bounds_", "converged_"):
            setattr(self, key, best[key])
        n_restarts = self._n_restarts
        self._best, self._in_progress, self.fitted = None, False, True
        max_iter = self.hparams.max_iter
        if not self.converged_ and max_iter > 0:
            within = (f"within max_iter={max_iter} iterations" if self.n_iter_ >= max_iter else
                      f"in {self.n_iter_} iterations: the Trainer stopped it first (max_epochs, max_steps or "
                      f"max_time) before max_iter={max_iter}")
            rank_zero_warn(
                f"GaussianMixture: the best of {n_restarts} initialisation(s) did not converge {within}. "
                "Try different init parameters, or increase max_iter, tol, or check for degenerate data.",
                category=ConvergenceWarning,
            )


@rank_zero_only
def _say(message: str) -> None:
    """A ``verbose`` progress line, printed by rank 0 only."""
    print(message, flush=True)
