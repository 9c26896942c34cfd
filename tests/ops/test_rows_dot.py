"""rows_dot and seeding_distances (csrc/cpu/rows_dot.cpp): x cᵀ and the greedy k-means++ step for
the candidates, held to the reference on every CPU instruction set this machine can run."""
from __future__ import annotations

import pytest
import torch

from lightning_genmodels.ops import rows_dot, seeding_distances, sq_norms
from lightning_genmodels.ops.gmm import CPU_ISAS, available_cpu_isas, force_cpu_isa
from lightning_genmodels.ops.rows_dot import _rows_dot_ref, _seeding_distances_ref, _sq_norms_ref


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


def _seeding_case(dtype, n=1037, d=83, c_count=7, seed=0):
    """Rows, candidates among them (distance 0 to themselves), ||x||², and a closest with inf,
    0 and values either side of the candidates' distances."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) + 3.0).to(dtype)
    c = x[torch.randperm(n, generator=g)[:c_count]].clone()
    x_sq = x.square().sum(1, dtype=torch.float64)
    closest = torch.rand(n, generator=g, dtype=torch.float64) * 4 * d
    closest[::5] = torch.inf
    closest[1::97] = 0.0
    return x, c, x_sq, closest


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("isa", _isas())
def test_seeding_distances_match_reference(isa, dtype):
    """dist and the potentials against the reference, both from float64 dot products; several row
    blocks of 256 and a last part-full one; C across the groups of 4 (AVX2, float32) and 6."""
    for c_count in (1, 4, 5, 6, 7, 9):
        x, c, x_sq, closest = _seeding_case(dtype, c_count=c_count)
        with force_cpu_isa(isa):
            dist, potential = seeding_distances(x, c, x_sq, closest, impl="ext")
        ref_dist, ref_potential = _seeding_distances_ref(x, c, c.double().square().sum(1), x_sq, closest)
        assert dist.dtype == potential.dtype == torch.float64
        assert dist.shape == (x.shape[0], c_count) and potential.shape == (c_count,)
        # the distances differ only through the order of x·c's float64 sums
        scale = 2.0 * (x.double().abs() @ c.double().abs().T) + x_sq[:, None] + c.double().square().sum(1)
        tol = 1e-13
        assert ((dist - ref_dist).abs() / scale).max() < tol, (isa, dtype, c_count)
        assert (dist >= 0).all()
        # the potentials as the reference's formula on the kernel's own distances, in another order
        own = torch.minimum(closest[:, None], dist).sum(0)
        torch.testing.assert_close(potential, own, rtol=1e-12, atol=0)
        torch.testing.assert_close(potential, ref_potential, rtol=tol * 10, atol=0)


def test_seeding_distances_same_bits_for_any_thread_count():
    x, c, x_sq, closest = _seeding_case(torch.float32, n=3000)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = seeding_distances(x, c, x_sq, closest, impl="ext")
        torch.set_num_threads(max(2, threads))
        more = seeding_distances(x, c, x_sq, closest, impl="ext")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], more[0]) and torch.equal(one[1], more[1])


def test_seeding_distances_opcheck_and_bad_input():
    x, c, x_sq, closest = _seeding_case(torch.float32, n=300, d=20, c_count=3)
    torch.library.opcheck(torch.ops.lightning_genmodels.seeding_distances.default,
                          (x, c, c.double().square().sum(1), x_sq, closest))
    for impl in ("ext", "ref"):
        dist, potential = seeding_distances(x[:0], c, x_sq[:0], closest[:0], impl=impl)
        assert dist.shape == (0, 3) and potential.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="closest must be float64 \\[300\\]"):
        seeding_distances(x, c, x_sq, closest[:-1], impl="ext")
    with pytest.raises(ValueError, match="x_sq must be float64"):
        seeding_distances(x, c, x_sq.float(), closest, impl="ext")
    with pytest.raises(ValueError, match="same D"):
        seeding_distances(x, c[:, :5], x_sq, closest, impl="ext")
    with pytest.raises(ValueError, match="c_sq \\[C\\], x_sq \\[N\\] and closest \\[N\\] must match"):
        torch.ops.lightning_genmodels.seeding_distances(x, c, x_sq[:2], x_sq, closest)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("isa", _isas())
def test_sq_norms_match_reference(isa, dtype):
    """Float64 squares: to 1e-15 of the reference; a part-used last vector and a row stride > D."""
    g = torch.Generator().manual_seed(1)
    wide = torch.randn(531, 90, generator=g, dtype=torch.float64).to(dtype)
    for d in (1, 7, 64, 83):
        x = wide[:, :d]
        with force_cpu_isa(isa):
            got = sq_norms(x, impl="ext")
        torch.testing.assert_close(got, _sq_norms_ref(x), rtol=1e-15, atol=0)
    torch.library.opcheck(torch.ops.lightning_genmodels.sq_norms.default, (wide[:50],))
    assert sq_norms(wide[:0], impl="ext").shape == (0,)
    with pytest.raises(ValueError, match="x must be 2-D"):
        sq_norms(wide[0], impl="ext")


@pytest.mark.parametrize("impl", ["auto", "ext"])
@pytest.mark.parametrize("name", ["x_sq", "closest"])
def test_seeding_distances_gradients_come_from_the_reference_or_an_error(impl, name):
    """x_sq or closest requiring grad: 'auto' differentiates through the reference, 'ext' raises
    (the kernel has no backward; its gradient was silently None)."""
    x, c, x_sq, closest = _seeding_case(torch.float64, n=50, d=4, c_count=3)
    args = {"x_sq": x_sq, "closest": closest.clamp_max(1.0)}
    leaf = args[name].clone().requires_grad_()
    call = lambda: seeding_distances(x, c, **{**args, name: leaf}, impl=impl)  # noqa: E731
    if impl == "ext":
        with pytest.raises(ValueError, match="no backward"):
            call()
        return
    dist, potential = call()
    (dist.sum() + potential.sum()).backward()
    ref_leaf = args[name].clone().requires_grad_()
    ref_dist, ref_potential = _seeding_distances_ref(x, c, c.square().sum(1), **{**args, name: ref_leaf})
    (ref_dist.sum() + ref_potential.sum()).backward()
    assert leaf.grad is not None and torch.equal(leaf.grad, ref_leaf.grad)
