"""SampleQuality and the real-feature cache refuse bad input with errors that name it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lightning_genmodels.metrics import FeatureWeightsError, MNISTFeatures, SampleQuality, real_features


def quality_with_samples() -> SampleQuality:
    q = SampleQuality(kid_subset_size=4)
    q.set_real(torch.randn(20, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    q.update(torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    return q


@pytest.mark.parametrize("value, match", [(float("nan"), "NaN or inf"), (float("inf"), "NaN or inf"),
                                          (1e200, "too large.*1e\\+200")])
def test_set_real_rejects_non_finite_or_overflowing_features(value: float, match: str) -> None:
    features = torch.randn(10, 128, dtype=torch.float64)
    features[3, 5] = value
    with pytest.raises(ValueError, match=match):
        SampleQuality().set_real(features)


def test_fid_refuses_non_finite_statistics_instead_of_crashing() -> None:
    # in a subprocess: before the check, LAPACK's DGEBAL killed the process (exit 139)
    script = (
        "import torch\n"
        "from tests.metrics.test_input_checks import quality_with_samples\n"
        "for which, value in (('real', float('nan')), ('fake', float('inf')), ('real', 1e300)):\n"
        "    q = quality_with_samples()\n"
        "    getattr(q.fid, which + '_features_cov_sum')[0, 0] = value\n"
        "    try:\n"
        "        q.compute()\n"
        "    except ValueError as err:\n"
        "        print('ValueError:', err)\n"
    )
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert len(lines) == 3, run.stdout
    assert "real features contain NaN or inf" in lines[0] and "generated features contain NaN" in lines[1]
    assert "too large" in lines[2] and "overflow" in lines[2]


@pytest.mark.parametrize("num_generated", [0, -5, 2.5, True, "8"])
def test_num_generated_must_be_a_positive_integer(num_generated: object) -> None:
    with pytest.raises(ValueError, match=f"num_generated={num_generated!r} must be None or an integer >= 1"):
        quality_with_samples().compute(num_generated=num_generated)


def test_num_generated_takes_any_integer_kind() -> None:
    q = quality_with_samples()
    for n in (8, np.int64(8), torch.tensor(8)):
        assert torch.isfinite(q.compute(num_generated=n)["kid"])


def test_compute_after_set_real_or_a_new_num_generated_is_fresh() -> None:
    """New real features, or another num_generated (KID's subset size), between two compute()
    calls without an update: the second result is that of a fresh SampleQuality, not a cached one."""
    real = torch.randn(30, 128, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 1.0
    q = quality_with_samples()
    q.compute()
    q.set_real(real)
    fresh = SampleQuality(kid_subset_size=4)
    fresh.set_real(real)
    fresh.update(torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    got, expected = q.compute(), fresh.compute()
    for key in ("fid", "kid", "precision", "recall"):
        torch.testing.assert_close(got[key], expected[key], msg=key)
    q.compute(num_generated=2)  # KID subsets of 2
    assert q.kid.subset_size == 2 and not torch.equal(q.compute(num_generated=2)["kid"], expected["kid"])


def test_a_dtype_cast_leaves_the_statistics_and_networks_alone() -> None:
    """module.to(torch.bfloat16), as a bf16-true fit does to a LightningModule holding the metric:
    the float64 FID sums became bf16 and the feature network's float32 input failed; device
    moves still apply."""
    expected = quality_with_samples().compute()
    q = quality_with_samples().to(torch.bfloat16).to("cpu")
    assert q.fid.real_features_sum.dtype == q.fid.fake_features_cov_sum.dtype == torch.float64
    assert all(p.dtype == torch.float32 for p in q.extractor.parameters())
    assert q.classes.counts.dtype == torch.long
    q.update(torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(3)))  # failed here
    q.reset()
    q.update(torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    got = q.compute()
    for key in ("fid", "kid", "precision", "recall"):
        torch.testing.assert_close(got[key], expected[key], msg=key)


@pytest.mark.parametrize("content", [b"garbage", b"", "dict"])
def test_unreadable_weights_name_the_file(tmp_path: Path, content: bytes | str) -> None:
    path = tmp_path / "weights.pt"
    if content == "dict":
        torch.save({"conv.weight": torch.zeros(1)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(FeatureWeightsError, match=f"weights {path} are not") as info:
        SampleQuality(weights_path=path)
    assert "weights_only=False" not in str(info.value)


@pytest.fixture(scope="module")
def extractor() -> MNISTFeatures:
    return MNISTFeatures()


def corrupt(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"not a torch file")
    elif how == "dict":
        torch.save({"a": 1}, path)
    elif how == "columns":
        torch.save(torch.randn(6, 64, dtype=torch.float64), path)
    elif how == "rows":
        torch.save(torch.randn(5, 128, dtype=torch.float64), path)
    elif how == "float32":
        torch.save(torch.randn(6, 128), path)
    elif how == "nan":
        torch.save(torch.full((6, 128), float("nan"), dtype=torch.float64), path)


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "dict", "columns", "rows", "float32", "nan"])
def test_a_corrupt_cache_entry_is_recomputed_with_a_warning_naming_it(
    extractor: MNISTFeatures, tmp_path: Path, how: str
) -> None:
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fresh = real_features(extractor, images, tmp_path)
    (path,) = tmp_path.glob("real_*.pt")
    corrupt(path, how)
    with pytest.warns(UserWarning, match=f"cache {path} is unusable.*recomputing and overwriting"):
        again = real_features(extractor, images, tmp_path)
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)
    torch.testing.assert_close(torch.load(path, weights_only=True), fresh, rtol=0, atol=0)  # overwritten


class NaNFeatures(nn.Module):
    num_features, sha256 = 128, "0" * 64

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return torch.full((len(imgs), 128), float("nan"), dtype=torch.float64) * self.scale


def test_non_finite_fresh_features_are_refused_and_not_cached(tmp_path: Path) -> None:
    images = torch.zeros(4, 28, 28, dtype=torch.uint8)
    with pytest.raises(ValueError, match="NaNFeatures returned NaN or inf features"):
        real_features(NaNFeatures(), images, tmp_path)
    assert not list(tmp_path.glob("real_*.pt"))
