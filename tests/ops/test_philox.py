"""philox_normal: the kernels against the reference, the stream's algebra, N(0, 1) draws."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from lightning_genmodels.ops import load_library, philox_normal
from lightning_genmodels.ops.philox import _philox4x32_10, seed_offset_tensor
from tests.utils import DEVICES

SEEDS = [0, 1, 2**32 - 1, 2**32 + 5, 2**63 + 12345, 2**64 - 1]


def sample_inputs(device: str):
    """(seed, offset, size) cases covering partial Philox blocks at both ends and empty shapes."""
    for seed in SEEDS:
        yield seed, 0, [3, 5]
    for offset in [1, 2, 3, 4, 7, 2**33 + 1]:
        yield 42, offset, [9]
    yield 7, 0, []
    yield 7, 5, [0, 4]
    yield 11, 13, [2, 3, 4, 5]
    yield 3, 0, [100_003]


@pytest.mark.parametrize(
    "counter, key, expected",
    [  # Random123 known-answer vectors for philox4x32_10.
        ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        (
            [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
            [0xA4093822, 0x299F31D0],
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
        ),
    ],
)
def test_reference_philox_matches_known_answers(counter, key, expected):
    lanes = [torch.tensor([c], dtype=torch.int64) for c in counter]
    out = _philox4x32_10(lanes, key[0] | (key[1] << 32))
    assert [int(x) for x in out] == expected


@pytest.mark.parametrize("device", DEVICES)
def test_ext_matches_reference(device):
    for seed, offset, size in sample_inputs(device):
        ext = philox_normal(seed, offset, size, device=device, impl="ext")
        ref = philox_normal(seed, offset, size, device=device, impl="ref")
        assert ext.shape == torch.Size(size) and ext.device.type == device
        torch.testing.assert_close(ext, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=DEVICES[1].marks)])
def test_cpu_and_cuda_give_the_same_stream(device):
    """Bit-identical: same float64 arithmetic in common/philox.h, whatever nvcc's fast math does."""
    for seed, offset, n in [(123, 17, 4097), (2**64 - 1, 2**40 + 3, 100_003), (0, 0, 1 << 20)]:
        cpu = philox_normal(seed, offset, [n], device="cpu", impl="ext")
        gpu = philox_normal(seed, offset, [n], device=device, impl="ext")
        assert torch.equal(gpu.cpu(), cpu)


# --- known answers of the C++ generator, computed independently with Python ints and math ---


def _philox_int(counter: list[int], key: list[int]) -> list[int]:
    """Philox4x32-10 on Python ints (Salmon et al., SC'11), independent of the torch reference."""
    c, (k0, k1) = list(counter), key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c[3] ^ k1, p0 & 0xFFFFFFFF]
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c


def _normals_exact(seed: int, offset: int, n: int) -> np.ndarray:
    """Values offset .. offset + n - 1 of the stream: exact Box-Muller in float64 (math), rounded
    once to float32."""
    out = []
    for i in range(offset, offset + n):
        block, lane = divmod(i, 4)
        x, y, z, w = _philox_int([block & 0xFFFFFFFF, block >> 32, 0, 0], [seed & 0xFFFFFFFF, seed >> 32])
        r_bits, a_bits = (x, y) if lane < 2 else (z, w)
        radius = math.sqrt(-2.0 * math.log(((r_bits >> 8) + 1) / 2**24))
        angle = 2.0 * math.pi * (a_bits >> 8) / 2**24
        out.append(radius * (math.cos(angle) if lane % 2 == 0 else math.sin(angle)))
    return np.asarray(out, dtype=np.float64).astype(np.float32)


@pytest.mark.parametrize("seed, offset", [(0, 0), (1, 3), (2**32 + 5, 2**33 + 1), (2**64 - 1, 12345), (42, 2**61 + 7)])
def test_kernel_matches_known_answers(seed, offset):
    """The C++ generator against values computed without it or torch: equal to the correctly
    rounded float32 of the float64 Box-Muller, value for value."""
    ext = philox_normal(seed, offset, [257], device="cpu", impl="ext").numpy()
    expected = _normals_exact(seed, offset, 257)
    np.testing.assert_array_equal(ext, expected)


def test_kernel_batches_match_known_answers_at_every_lane():
    """The CPU kernel draws 32 Philox blocks at a time, vectorised: runs that start at each lane of a
    block and end inside a batch, a batch edge or a later batch all give the exact values."""
    for offset in (2**33 + 1, 2**33 + 2, 2**33 + 3):
        for n in (1, 127, 128, 129, 3001):
            ext = philox_normal(11, offset, [n], device="cpu", impl="ext").numpy()
            np.testing.assert_array_equal(ext, _normals_exact(11, offset, n), err_msg=f"offset {offset}, n {n}")


_BATCH_PROGRAM = r"""
#include <cstdio>
#include <cstdlib>
#include "cpu/philox_batch.h"
int main(int argc, char** argv) {
  const unsigned long long seed = strtoull(argv[1], nullptr, 10), position = strtoull(argv[2], nullptr, 10);
  const long count = strtol(argv[3], nullptr, 10);
  lgm::for_philox_normals(seed, position, count, [](long, float v) { printf("%a\n", v); });
}
"""


def _cpu_flag(flag: str) -> bool:
    try:
        return flag in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


@pytest.mark.skipif(shutil.which("c++") is None or os.uname().machine != "x86_64", reason="needs an x86-64 c++")
@pytest.mark.parametrize("march, flag", [("x86-64-v2", "sse4_2"), ("x86-64-v3", "avx2"), ("x86-64-v4", "avx512f")])
def test_batched_draw_is_exact_at_every_isa_this_cpu_runs(march, flag, tmp_path):
    """csrc/cpu/philox_batch.h is vectorised by the compiler for whatever -march the build gets
    (-march=native here; another machine picks another width): built with the package's flags for
    each x86-64 level this CPU can run, it gives the exact values at odd offsets and lengths."""
    if not _cpu_flag(flag):
        pytest.skip(f"this CPU has no {flag}")
    from lightning_genmodels.ops.build import CPU_FLAGS, source_dir

    src, exe = tmp_path / "draw.cpp", tmp_path / "draw"
    src.write_text(_BATCH_PROGRAM)
    flags = [f for f in CPU_FLAGS if not f.startswith("-march")] + [f"-march={march}"]
    build = subprocess.run(["c++", "-std=c++17", *flags, "-I", str(source_dir()), str(src), "-o", str(exe)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    for seed, offset, n in [(11, 2**33 + 1, 3001), (2**64 - 1, 3, 130), (0, 0, 1)]:
        run = subprocess.run([str(exe), str(seed), str(offset), str(n)], capture_output=True, text=True, timeout=60)
        values = np.array([float.fromhex(v) for v in run.stdout.split()], dtype=np.float32)
        np.testing.assert_array_equal(values, _normals_exact(seed, offset, n), err_msg=f"{march}: {seed}, {offset}")


def test_kernel_edge_uniforms():
    """Every value finite and within the largest radius, sqrt(-2 ln 2^-24)."""
    load_library()
    seed, n = 7, 1 << 16
    ext = philox_normal(seed, 0, [n], device="cpu", impl="ext")
    assert torch.isfinite(ext).all()
    assert ext.abs().max().item() <= math.sqrt(-2.0 * math.log(2.0**-24)) + 1e-6


@pytest.mark.parametrize("impl", ["ref", "ext"])
def test_offsets_address_one_stream(impl):
    whole = philox_normal(5, 0, [1001], impl=impl)
    parts = [philox_normal(5, start, [n], impl=impl) for start, n in [(0, 3), (3, 500), (503, 498)]]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)
    assert not torch.equal(philox_normal(6, 0, [1001], impl=impl), whole)


@pytest.mark.parametrize("impl", ["ref", "ext"])
def test_draws_are_standard_normal(impl):
    x = philox_normal(2024, 0, [200_000], impl=impl).double()
    result = stats.kstest(x.numpy(), "norm")
    assert result.pvalue > 1e-3, result
    assert abs(x.mean().item()) < 0.01 and abs(x.var().item() - 1.0) < 0.02
    # Neighbours (same Philox block and across blocks) are uncorrelated.
    for lag in (1, 2, 4):
        corr = torch.corrcoef(torch.stack([x[:-lag], x[lag:]]))[0, 1].item()
        assert abs(corr) < 0.01, (lag, corr)
    # Different seeds are uncorrelated streams.
    y = philox_normal(2025, 0, [200_000], impl=impl).double()
    assert abs(torch.corrcoef(torch.stack([x, y]))[0, 1].item()) < 0.01


def test_dtype_and_device_options():
    out = philox_normal(1, 0, [4, 4], dtype=torch.float64)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), philox_normal(1, 0, [4, 4]))


def test_opcheck():
    load_library()
    for seed, offset, size in sample_inputs("cpu"):
        torch.library.opcheck(
            torch.ops.lightning_genmodels.philox_normal.default, (seed_offset_tensor(seed, offset, "cpu"), size)
        )


def test_works_under_torch_compile():
    load_library()

    def noisy(x: torch.Tensor, seed_offset: torch.Tensor) -> torch.Tensor:
        return x + torch.ops.lightning_genmodels.philox_normal(seed_offset, list(x.shape))

    compiled = torch.compile(noisy, backend="aot_eager", fullgraph=True)
    x, so = torch.zeros(3, 8), seed_offset_tensor(9, 4, "cpu")
    torch.testing.assert_close(compiled(x, so), philox_normal(9, 4, [3, 8]))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 2**64}, ValueError, "seed"),
        ({"offset": -3}, ValueError, "offset"),
        ({"seed": 1.7}, ValueError, "seed must be an integer"),  # was truncated to 1
        ({"seed": True}, ValueError, "seed must be an integer"),
        ({"offset": 2.5}, ValueError, "offset must be an integer"),  # was truncated to 2
        ({"offset": 2**62 - 2}, ValueError, r"2\*\*62 - numel"),  # values 2**62 - 2 .. 2**62: past the end
        ({"size": [2, -1]}, ValueError, "size"),
        ({"size": [4.5]}, ValueError, "size must be a sequence of non-negative integers"),
        ({"size": "ab"}, ValueError, "size must be a sequence of non-negative integers"),
        ({"dtype": torch.int32}, TypeError, "dtype"),
        ({"impl": "fast"}, ValueError, "impl"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    args = {"seed": 1, "offset": 0, "size": [3]} | kwargs
    impl = args.pop("impl", "ext")
    with pytest.raises(error, match=match):
        philox_normal(args.pop("seed"), args.pop("offset"), args.pop("size"), impl=impl, **args)


@pytest.mark.parametrize("impl", ["ref", "ext"])
def test_integer_arguments_may_be_numpy_or_0d_tensors(impl):
    """Any integer type is taken whole (a 0-d tensor seed raised OverflowError); one int is a size."""
    want = philox_normal(3, 5, [4], impl=impl)
    torch.testing.assert_close(philox_normal(torch.tensor(3), np.int64(5), 4, impl=impl), want, rtol=0, atol=0)
    big = 2**64 - 1
    torch.testing.assert_close(philox_normal(np.uint64(big), 0, (2,), impl=impl), philox_normal(big, 0, [2], impl=impl))
    assert philox_normal(1, 2**62 - 3, [3], impl=impl).shape == (3,)  # the stream's last values


def test_kernel_checks_its_state_tensor():
    load_library()
    with pytest.raises(RuntimeError, match="seed_offset must be an int64 tensor of 2 elements"):
        torch.ops.lightning_genmodels.philox_normal(torch.zeros(2, dtype=torch.int32), [3])
    with pytest.raises(RuntimeError, match="seed_offset must be an int64 tensor of 2 elements"):
        torch.ops.lightning_genmodels.philox_normal(torch.zeros(3, dtype=torch.int64), [3])
    for offset in (-4, 2**62 - 2):  # a negative offset used to read stream position 2**64 - 4
        with pytest.raises(RuntimeError, match=r"offset must be in \[0, 2\*\*62 - numel\]"):
            torch.ops.lightning_genmodels.philox_normal(torch.tensor([1, offset]), [3])


@pytest.mark.parametrize("numel", [1, 10, 784])
def test_rows_are_the_stream_at_their_keys(numel):
    """philox_normal_rows(seed, keys, numel)[i] == philox_normal(seed, keys[i] * 4 ceil(numel / 4), [numel])."""
    from lightning_genmodels.ops.philox import philox_normal_rows

    keys = torch.tensor([0, 3, 2**40 - 1, 987654321])
    rows = philox_normal_rows(11, keys, numel)
    stride = 4 * -(-numel // 4)
    for i, key in enumerate(keys.tolist()):
        torch.testing.assert_close(rows[i], philox_normal(11, key * stride, [numel], impl="ext"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="keys must lie in"):
        philox_normal_rows(11, torch.tensor([-1]), numel)
    with pytest.raises(ValueError, match="keys must be int64"):
        philox_normal_rows(11, keys.int(), numel)


def test_as_integer_takes_every_integer_kind_and_no_other():
    from lightning_genmodels.module_utils import as_integer

    big = 2**63 + 5  # a uint64 tensor's __index__ went through int64: RuntimeError
    assert as_integer(torch.tensor(big, dtype=torch.uint64)) == big
    assert as_integer(np.uint64(big)) == big and as_integer(torch.tensor(-3)) == -3
    for bad in (True, torch.tensor(True), torch.tensor([3]), 2.0, torch.tensor(2.0), "3", None):
        assert as_integer(bad) is None, bad
    assert philox_normal(torch.tensor(big, dtype=torch.uint64), 0, 2).shape == (2,)


@pytest.mark.parametrize("seed", [0, 7, 2**63 + 11, 2**64 - 1])
def test_traced_reference_equals_the_reference(seed):
    """philox_normal_traced (seed and offset in a tensor, for torch.compile) draws the numbers of
    _philox_normal_ref, at every lane of a block."""
    from lightning_genmodels.ops.philox import _philox_normal_ref, philox_normal_traced, seed_offset_tensor

    for offset in (0, 1, 2, 3, 5, 2**40 + 3):
        for size in ([1], [7], [2, 3, 3], [0]):
            got = philox_normal_traced(seed_offset_tensor(seed, offset, "cpu"), size)
            assert got.equal(_philox_normal_ref(seed, offset, size, torch.device("cpu"))), (offset, size)
