"""The float32 E-step's fused pass for diag and spherical with D <= 64 (csrc/cpu/gmm_simd_fused.h):
distances and responsibilities of a tile in one pass where every component fits one group of the
rows kernel and there are no sample weights. It must give the bits of the two steps apart (LGM_GMM_FUSE=0), and
hand a tile with a row that has no finite joint back to them. Checked on every CPU instruction set;
`_gmm_cpu_fused_tiles` counts the tiles it did, so a test fails if it never ran."""
from __future__ import annotations

import pytest
import torch

from lightning_genmodels.ops import load_library
from lightning_genmodels.ops.gmm import _gmm_em_stats_ref, force_cpu_isa, gmm_em_stats
from tests.ops.gmm_cases import assert_stats_close
from tests.ops.test_gmm_prune import _isas, clustered

FUSE_ENV = "LGM_GMM_FUSE"
FIELDS = ("nk", "sx", "sxx", "loglik")


def fused_tiles() -> int:
    load_library()
    return torch.ops.lightning_genmodels._gmm_cpu_fused_tiles()


def max_k(isa: str, cov: str) -> int:
    """Components in one group of the rows kernel (kRowsKB): 16 with 64-byte vectors, else 12
    (spherical) or 10 (diag)."""
    return 16 if isa == "avx512" else (10 if cov == "diag" else 12)


def stats_with(monkeypatch, fuse: str, *args, weight=None):
    monkeypatch.setenv(FUSE_ENV, fuse)
    before = fused_tiles()
    stats = gmm_em_stats(args[0], *args[1:], sample_weight=weight, impl="ext")
    return stats, fused_tiles() - before


def assert_same_bits(a, b) -> None:
    for f in FIELDS:
        torch.testing.assert_close(getattr(a, f), getattr(b, f), rtol=0, atol=0, equal_nan=True, msg=f)


@pytest.mark.parametrize("cov", ["diag", "spherical"])
@pytest.mark.parametrize("isa", _isas())
def test_fused_pass_gives_the_bits_of_the_steps_apart(isa, cov, monkeypatch):
    """D = 50 (a tail of 2 features on 32- and 64-byte vectors), 33, 20, 5, 64, 14, 7 and 11 (last
    chunks of 1 to 8 features on 32-byte vectors); K = 1, 10 and the most that fit one group; 700
    rows (a last, partial block of rows); components apart (sparse moments) and overlapping (dense)."""
    for d in (50, 33, 20, 5, 64, 14, 7, 11):
        for k in (1, 10, max_k(isa, cov)):
            for spread in (0.3, 6.0):
                x, _, log_weights, means, prec_chol = clustered(700, k, d, cov, seed=d + k, spread=spread)
                args = (x, log_weights, means, prec_chol, cov)
                with force_cpu_isa(isa):
                    fused, n_fused = stats_with(monkeypatch, "1", *args)
                    apart, n_apart = stats_with(monkeypatch, "0", *args)
                assert n_fused > 0 and n_apart == 0, (d, k, n_fused, n_apart)
                assert_same_bits(fused, apart)
                ref = _gmm_em_stats_ref(x, None, log_weights, means, prec_chol, cov)
                assert_stats_close(fused, ref, torch.float32)


@pytest.mark.parametrize("cov", ["diag", "spherical"])
@pytest.mark.parametrize("isa", _isas())
def test_fused_pass_runs_only_where_it_applies(isa, cov, monkeypatch):
    """More components than one group, sample weights, float64 and D > 64 take the steps apart."""
    with force_cpu_isa(isa):
        x, weight, log_weights, means, prec_chol = clustered(500, max_k(isa, cov) + 1, 50, cov, seed=1)
        assert stats_with(monkeypatch, "1", x, log_weights, means, prec_chol, cov)[1] == 0
        x, weight, log_weights, means, prec_chol = clustered(500, 10, 50, cov, seed=2)
        assert stats_with(monkeypatch, "1", x, log_weights, means, prec_chol, cov, weight=weight + 0.5)[1] == 0
        doubles = [t.double() for t in (x, log_weights, means, prec_chol)]
        assert stats_with(monkeypatch, "1", *doubles, cov)[1] == 0
        x, _, log_weights, means, prec_chol = clustered(500, 10, 65, cov, seed=3)
        assert stats_with(monkeypatch, "1", x, log_weights, means, prec_chol, cov)[1] == 0


@pytest.mark.parametrize("cov", ["diag", "spherical"])
@pytest.mark.parametrize("isa", _isas())
def test_a_tile_with_a_nan_row_goes_back_to_the_steps_apart(isa, cov, monkeypatch):
    """A NaN in the first tile: that tile is done apart (the log-likelihood NaN, as the reference's),
    the others fused, and the whole the same bits as with the fused pass off."""
    x, _, log_weights, means, prec_chol = clustered(1500, 10, 50, cov, seed=4)
    x[3, 7] = float("nan")
    args = (x, log_weights, means, prec_chol, cov)
    with force_cpu_isa(isa):
        fused, n_fused = stats_with(monkeypatch, "1", *args)
        apart, _ = stats_with(monkeypatch, "0", *args)
        clean, n_clean = stats_with(monkeypatch, "1", x.nan_to_num(), *args[1:])
    assert 0 < n_fused == n_clean - 1
    assert torch.isnan(fused.loglik)
    assert_same_bits(fused, apart)
