"""rows_dot (csrc/cpu/rows_dot.cpp): x cᵀ for the k-means++ candidates, held to the reference on
every CPU instruction set this machine can run."""
from __future__ import annotations

import pytest
import torch

from lightning_genmodels.ops import rows_dot
from lightning_genmodels.ops.gmm import CPU_ISAS, available_cpu_isas, force_cpu_isa
from lightning_genmodels.ops.rows_dot import _rows_dot_ref


def _isas():
    return [pytest.param(i, marks=pytest.mark.skipif(i not in available_cpu_isas(), reason=f"this CPU cannot run {i}"))
            for i in CPU_ISAS]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("isa", _isas())
def test_matches_reference(isa, dtype):
    """Centre counts across the groups of 6 (1, 6, 7, 13), D with a part-used last vector, an odd
    row count, and a row stride larger than D (a column slice)."""
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(203, 90, generator=g, dtype=torch.float64)
    for d in (1, 37, 64, 83):
        x = wide[:, :d].to(dtype)
        for c_count in (1, 6, 7, 13):
            c = torch.randn(c_count, d, generator=g, dtype=torch.float64).to(dtype)
            with force_cpu_isa(isa):
                got = rows_dot(x, c, impl="ext")
            exact = x.double() @ c.double().T
            assert got.dtype == torch.float64 and got.shape == (203, c_count)
            tol = 1e-5 if dtype == torch.float32 else 1e-12
            scale = (x.double().abs() @ c.double().abs().T).clamp_min(1.0)
            assert ((got - exact).abs() / scale).max() < tol, (isa, dtype, d, c_count)
            assert ((_rows_dot_ref(x, c) - exact).abs() / scale).max() < tol


def test_empty_and_bad_input():
    assert rows_dot(torch.zeros(0, 5), torch.zeros(3, 5), impl="ext").shape == (0, 3)
    assert rows_dot(torch.zeros(4, 5), torch.zeros(0, 5), impl="ext").shape == (4, 0)
    with pytest.raises(ValueError, match="same D"):
        rows_dot(torch.zeros(4, 5), torch.zeros(3, 6))
    with pytest.raises(TypeError, match="float32 or float64"):
        rows_dot(torch.zeros(4, 5), torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="CPU only"):
        rows_dot(torch.zeros(4, 5, device="meta"), torch.zeros(3, 5, device="meta"), impl="ext")
    assert rows_dot(torch.zeros(4, 5, device="meta"), torch.zeros(3, 5, device="meta")).device.type == "meta"
