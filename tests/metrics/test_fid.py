"""FID (torchmetrics + our features) against NumPy/SciPy, the real-vs-real floor, calibration
against noise and blur, the real-feature cache, and the Inception option's errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torchvision.transforms.functional import gaussian_blur

from lightning_genmodels.metrics import (
    MNISTFeatureNet,
    MNISTFeatures,
    SampleQuality,
    build_extractor,
    load_real_images,
    real_features,
)


@pytest.fixture(scope="module")
def quality(test_features: torch.Tensor) -> SampleQuality:
    """SampleQuality against the full MNIST test set."""
    q = SampleQuality(kid_subsets=10, kid_subset_size=500)
    q.set_real(test_features)
    return q


@pytest.fixture(scope="module")
def train_images(mnist_dir: Path) -> torch.Tensor:
    """1,000 training images [N, 1, 28, 28] in [0, 1]."""
    return load_real_images(mnist_dir, "train", num=1000).float().div(255).unsqueeze(1)


def fid(quality: SampleQuality, images: torch.Tensor) -> float:
    """FID of images [N, 1, 28, 28] against the test set (the FID metric alone: fast)."""
    for i in range(0, len(images), 1000):
        quality.fid.update(images[i : i + 1000], real=False)
    value = float(quality.fid.compute())
    quality.fid.reset()
    return value


def numpy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to feature rows a, b (Heusel et al. 2017, eq. 6).
    Features that are 0 in both sets (dead ReLUs) add nothing; dropping them keeps sqrtm regular."""
    live = (a != 0).any(0) | (b != 0).any(0)
    a, b = a[:, live], b[:, live]
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def test_frechet_distance_equals_numpy_scipy(mnist_dir: Path, train_images: torch.Tensor) -> None:
    extractor = MNISTFeatures()
    real = load_real_images(mnist_dir, "test", num=2000).float().div(255).unsqueeze(1)
    fake = (train_images + 0.1 * torch.randn(train_images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    q = SampleQuality()
    q.fid.update(real, real=True)  # torchmetrics' own path for both sets
    q.fid.update(fake, real=False)
    ours = q.fid.compute()
    assert ours.dtype == torch.float64
    expected = numpy_frechet(extractor(real).numpy(), extractor(fake).numpy())
    assert abs(float(ours) - expected) <= 1e-6 * max(1.0, expected), (float(ours), expected)


def test_real_vs_real_floor(mnist_dir: Path, quality: SampleQuality) -> None:
    """5,000 training images against the 10,000 test images: the FID floor (README)."""
    train = load_real_images(mnist_dir, "train", num=5000).float().div(255).unsqueeze(1)
    floor = fid(quality, train)
    noisy = fid(quality, (train + 0.05 * torch.randn(train.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1))
    print(f"real-vs-real FID floor (5k train vs 10k test): {floor:.4f}; with noise 0.05: {noisy:.4f}")
    assert 0 < floor < 0.2 * noisy


@pytest.mark.parametrize("kind", ["noise", "blur"])
def test_fid_grows_monotonically_with_corruption(quality: SampleQuality, train_images: torch.Tensor, kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(train_images.shape, generator=g)
    if kind == "noise":
        levels = [0.0, 0.05, 0.1, 0.2, 0.4]
        corrupt = [(train_images + s * noise).clamp(0, 1) for s in levels]
    else:
        levels = [0.0, 0.5, 1.0, 1.5, 2.0]
        corrupt = [train_images] + [gaussian_blur(train_images, [9, 9], [s, s]) for s in levels[1:]]
    values = [fid(quality, x) for x in corrupt]
    print(f"FID vs {kind} {levels}: {[round(v, 3) for v in values]}")
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_real_features_are_cached_by_data_and_network(mnist_dir: Path, tmp_path: Path) -> None:
    extractor = MNISTFeatures()
    calls = []
    extractor.register_forward_hook(lambda *args: calls.append(1))
    images = load_real_images(mnist_dir, "test", num=300)
    first = real_features(extractor, images, tmp_path)
    n_calls = len(calls)
    again = real_features(extractor, images, tmp_path)
    assert len(calls) == n_calls and torch.equal(first, again)  # read back, not recomputed
    assert len(list(tmp_path.glob("real_*.pt"))) == 1
    real_features(extractor, images[:200], tmp_path)  # other data: another entry
    extractor.sha256 = "f" * 64
    real_features(extractor, images, tmp_path)  # other network: another entry
    assert len(list(tmp_path.glob("real_*.pt"))) == 3


def test_networks_without_a_weights_file_are_cached_by_their_weights(tmp_path: Path) -> None:
    """Two networks not loaded from a file: each real_features call gets its own network's
    features (all such networks shared one cache key, "unhashed", and the second read the first's)."""
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        nets.append(MNISTFeatureNet().eval())
    for net in nets:
        own = MNISTFeatures(net)(images.float().div(255).unsqueeze(1))
        torch.testing.assert_close(real_features(MNISTFeatures(net), images, tmp_path), own, rtol=0, atol=0)
    assert len(list(tmp_path.glob("real_*.pt"))) == 2
    assert MNISTFeatures(nets[0]).sha256 == MNISTFeatures(nets[0]).sha256 != MNISTFeatures(nets[1]).sha256


def test_inception_option_fails_clearly_without_torch_fidelity_or_weights(tmp_path: Path) -> None:
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if _TORCH_FIDELITY_AVAILABLE:
        with pytest.raises(FileNotFoundError, match="LGM_INCEPTION_WEIGHTS"):
            build_extractor(2048, tmp_path / "missing.pth")
    else:
        with pytest.raises(ModuleNotFoundError, match="torch-fidelity"):
            build_extractor(2048, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="feature must be"):
        build_extractor("inception")


def test_compute_without_real_features_is_an_error() -> None:
    q = SampleQuality()
    q.update(torch.rand(8, 1, 28, 28))
    with pytest.raises(RuntimeError, match="no real features"):
        q.compute()


def test_update_in_inference_mode_equals_no_grad(quality: SampleQuality, train_images: torch.Tensor,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Inference tensors (Trainer.validate) have no version counter: update() still works, runs
    the feature network once per batch, and gives the values it gives under no_grad."""
    net, calls = quality.extractor.net, []

    def counted_features(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return type(net).features(net, x)

    monkeypatch.setattr(net, "features", counted_features)
    out = {}
    for mode in (torch.no_grad, torch.inference_mode):
        quality.reset()
        with mode():
            quality.update(train_images[:100] * 1.0)
            quality.update(train_images[100:200] * 1.0)
            out[mode] = quality.compute()
    quality.reset()
    assert calls == [100] * 4
    assert set(out[torch.no_grad]) == set(out[torch.inference_mode])
    for name, value in out[torch.no_grad].items():
        torch.testing.assert_close(out[torch.inference_mode][name], value, rtol=0, atol=0, msg=name)
