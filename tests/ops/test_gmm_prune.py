"""The float32 E-step's pruned distances (csrc/cpu/gmm_prune.cpp): a (row, component) pair whose
partial distance already puts its joint log-probability more than 88 below the row's best is
dropped, since its float32 responsibility is exactly 0. Checked on every CPU instruction set."""
from __future__ import annotations

import pytest
import torch

from lightning_genmodels.ops import load_library
from lightning_genmodels.ops.gmm import (
    CPU_ISAS,
    _gmm_em_stats_ref,
    _gmm_log_prob_ref,
    available_cpu_isas,
    force_cpu_isa,
    gmm_em_stats,
)

PRUNE_ENV = "LGM_GMM_PRUNE"


def clustered(n: int, k: int, d: int, cov: str, seed: int, spread: float = 1.0):
    """float32 rows around k means (mixture parameters, x, sample weights with zeros), the
    clusters apart by ~spread * sqrt(2 d), some rows halfway between two means (near ties)."""
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(k, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, k, (n,), generator=g)
    x = means[labels] + torch.randn(n, d, generator=g, dtype=torch.float64)
    x[: n // 8] = 0.5 * (means[labels[: n // 8]] + means[(labels[: n // 8] + 1) % k])
    log_weights = torch.log_softmax(torch.randn(k, generator=g, dtype=torch.float64), 0)
    shape = (k, d) if cov == "diag" else (k,)
    prec_chol = 0.8 + 0.4 * torch.rand(shape, generator=g, dtype=torch.float64)
    weight = torch.rand(n, generator=g, dtype=torch.float64)
    weight[::7] = 0.0
    return [t.float() for t in (x, weight, log_weights, means, prec_chol)]


def pruned_log_prob(x, log_weights, means, prec_chol, cov):
    load_library()
    return torch.ops.lightning_genmodels._gmm_pruned_log_prob(x, log_weights, means, prec_chol, cov)


def assert_pruned_stats_exact(isa, monkeypatch, x, weight, log_weights, means, prec_chol, cov):
    """The E-step as it prunes equals the same kernel with LGM_GMM_PRUNE=0 and the reference."""
    args = (log_weights, means, prec_chol, cov, weight)
    with force_cpu_isa(isa):
        pruned = gmm_em_stats(x, *args, impl="ext")
        monkeypatch.setenv(PRUNE_ENV, "0")
        dense = gmm_em_stats(x, *args, impl="ext")
    monkeypatch.delenv(PRUNE_ENV)
    ref = _gmm_em_stats_ref(x.double(), weight.double(), *(t.double() for t in args[:3]), cov)
    for name, a, b, r in zip(pruned._fields, pruned, dense, ref):
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale, msg=lambda m: f"{name} vs unpruned: {m}")
        torch.testing.assert_close(a, r, rtol=2e-4, atol=2e-3 * scale, msg=lambda m: f"{name} vs reference: {m}")


def pruned_and_checked(isa, x, log_weights, means, prec_chol, cov):
    """The inspection op's joints on isa, held to the reference: -inf (dropped) only where the
    reference joint lies more than 87 below the row's best, the kept ones equal. Returns the
    dropped mask."""
    with force_cpu_isa(isa):
        got = pruned_log_prob(x, log_weights, means, prec_chol, cov)
    ref = _gmm_log_prob_ref(x.double(), log_weights.double(), means.double(), prec_chol.double(), cov)
    dropped = torch.isneginf(got)
    gap = ref.max(1, keepdim=True).values - ref
    assert (gap[dropped] > 87).all(), gap[dropped].min()
    torch.testing.assert_close(got[~dropped].double(), ref[~dropped], rtol=1e-5, atol=1e-2)
    return dropped


def _isas():
    return [pytest.param(i, marks=pytest.mark.skipif(i not in available_cpu_isas(), reason=f"this CPU cannot run {i}"))
            for i in CPU_ISAS]


@pytest.mark.parametrize("cov", ["diag", "spherical"])
@pytest.mark.parametrize("isa", _isas())
def test_dropped_pairs_have_zero_responsibility_and_kept_ones_are_exact(isa, cov):
    """D = 784 runs three stages (256 features each); K = 40. Pairs are dropped (the test fails if
    none is), only where the reference joint lies more than 87 below the row's best, and the kept
    pairs equal the reference."""
    x, _, log_weights, means, prec_chol = clustered(600, 40, 784, cov, seed=1, spread=0.35)
    dropped = pruned_and_checked(isa, x, log_weights, means, prec_chol, cov)
    assert 0.2 < dropped.float().mean() < 1.0, dropped.float().mean()
    assert (~dropped).sum(1).min() >= 1


@pytest.mark.parametrize("cov", ["diag", "spherical"])
@pytest.mark.parametrize("isa", _isas())
def test_pruned_statistics_equal_unpruned_and_reference(isa, cov, monkeypatch):
    """The E-step with pruning (the default for float32 diag/spherical, D >= 384, K >= 32) against
    the same kernel with LGM_GMM_PRUNE=0 and the reference, sample weights with zeros included."""
    x, weight, log_weights, means, prec_chol = clustered(700, 33, 500, cov, seed=2, spread=0.35)
    assert_pruned_stats_exact(isa, monkeypatch, x, weight, log_weights, means, prec_chol, cov)


def test_no_pruning_where_it_does_not_apply(monkeypatch):
    """float64, K < 32, D < 384, or LGM_GMM_PRUNE=0: every joint is finite, as in gmm_log_prob."""
    x, _, log_weights, means, prec_chol = clustered(300, 32, 400, "diag", seed=3, spread=0.8)
    assert torch.isneginf(pruned_log_prob(x, log_weights, means, prec_chol, "diag")).any()
    cases = [
        [t.double() for t in (x, log_weights, means, prec_chol)],
        [x, log_weights[:31], means[:31], prec_chol[:31]],
        [x[:, :383], log_weights, means[:, :383], prec_chol[:, :383]],
    ]
    for xs, lw, mu, pc in cases:
        assert torch.isfinite(pruned_log_prob(xs, lw, mu, pc, "diag")).all()
    monkeypatch.setenv(PRUNE_ENV, "0")
    assert torch.isfinite(pruned_log_prob(x, log_weights, means, prec_chol, "diag")).all()


def test_rows_with_nan_or_far_outliers_match_unpruned(monkeypatch):
    """A row with a NaN feature stays NaN in every statistic, as without pruning; a row far from
    every component keeps its best component (nothing is dropped against a -inf best)."""
    x, weight, log_weights, means, prec_chol = clustered(256, 32, 784, "diag", seed=4, spread=0.35)
    x[5, 700] = float("nan")
    x[9] = 1e3
    pruned = gmm_em_stats(x, log_weights, means, prec_chol, "diag", weight, impl="ext")
    monkeypatch.setenv(PRUNE_ENV, "0")
    dense = gmm_em_stats(x, log_weights, means, prec_chol, "diag", weight, impl="ext")
    for a, b in zip(pruned, dense):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-3, equal_nan=True)


@pytest.mark.parametrize("cov", ["diag", "spherical"])
@pytest.mark.parametrize("isa", _isas())
def test_first_stage_reads_no_feature_past_d(isa, cov, monkeypatch):
    """D = 390: the last vector along d is part-used, and here it is the most discriminating one
    (the means differ most in the last features), so the first stage takes it. Its lanes past D
    (the next row's first features, made large) must count as 0, as without pruning."""
    x, weight, log_weights, means, prec_chol = clustered(500, 36, 390, cov, seed=6, spread=0.35)
    means[:, -6:] *= 40.0
    x[:, -6:] = means[torch.randint(0, 36, (500,), generator=torch.Generator().manual_seed(7)), -6:]
    x[:, :2] += 50.0
    assert pruned_and_checked(isa, x, log_weights, means, prec_chol, cov).any()
    assert_pruned_stats_exact(isa, monkeypatch, x, weight, log_weights, means, prec_chol, cov)
