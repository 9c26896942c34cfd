"""VAE: output shapes and ranges, the ELBO by hand, the IWAE bound, fit, checkpoints, errors."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from lightning_genmodels import VAE
from lightning_genmodels.data import MNISTDataModule
from lightning_genmodels.vae import LIKELIHOODS, ConvDecoder, ConvEncoder

L = 4  # latent size of the tiny test networks


def tiny_nets(latent_dim: int = L) -> dict[str, nn.Module]:
    return {"encoder": ConvEncoder(latent_dim, channels=(4, 8)), "decoder": ConvDecoder(latent_dim, channels=(8, 4))}


def tiny_vae(likelihood: str = "bernoulli", **kwargs) -> VAE:
    torch.manual_seed(0)
    return VAE(latent_dim=L, likelihood=likelihood, **tiny_nets(), **kwargs)


def data_like(likelihood: str, n: int = 6) -> torch.Tensor:
    """Images in the likelihood's convention: 0/1 for Bernoulli, in (0, 1) otherwise."""
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    return x.round() if likelihood == "bernoulli" else x.clamp(1e-3, 1 - 1e-3)


def trainer(tmp_path: Path, **kwargs) -> Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                    enable_checkpointing=False, default_root_dir=tmp_path)
    return Trainer(**{**defaults, **kwargs})


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_shapes_and_ranges(likelihood: str) -> None:
    model = tiny_vae(likelihood, learn_scale=likelihood == "gaussian")
    x, n, k = data_like(likelihood), 6, 5
    mean, log_var = model.encode(x)
    assert mean.shape == log_var.shape == (n, L)
    assert model.decoder_output(mean).shape == (n, 1, 28, 28)
    for images in (model.decode(mean), model.decode_latents(mean), model.reconstruct(x), model(x),
                   model.sample(7, seed=0), model.sample(7), model.sample_images(7, seed=3)):
        assert images.shape[1:] == (1, 28, 28) and images.dtype == torch.float32
        assert images.min() >= 0 and images.max() <= 1 and images.std() > 0
    assert model.sample(0).shape == (0, 1, 28, 28)
    rec, kl = model.elbo_terms(x)
    assert rec.shape == (n,) and kl.shape == (n, L) and (kl >= 0).all()
    assert model.elbo(x).shape == (n,) and model.log_importance_weights(x, k).shape == (k, n)
    bound = model.iwae_bound(x, k)
    assert bound.shape == (n,) and torch.isfinite(bound).all()
    assert model.bits_per_dim(-bound).shape == (n,)
    torch.testing.assert_close(model.sample(5, seed=2), model.sample(5, seed=2), rtol=0, atol=0)
    assert not torch.equal(model.sample(5, seed=2), model.sample(5, seed=3))


def test_sampling_decodes_in_eval_mode() -> None:
    """A decoder with batch norm (as Lightning-Bolts' ResNet decoders): sample and decode_latents
    in training mode (SampleGrid at an epoch's end) gave other images than in eval mode for the
    same seed, and moved the running statistics; the mode is restored after."""
    decoder = nn.Sequential(nn.Linear(L, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 784),
                            nn.Unflatten(1, (1, 28, 28)))
    torch.manual_seed(0)
    model = VAE(latent_dim=L, encoder=ConvEncoder(L, channels=(4, 8)), decoder=decoder)
    with torch.no_grad():
        decoder[1].running_mean.fill_(0.5)
    stats = decoder[1].running_mean.clone()
    in_train = model.sample(6, seed=0), model.decode_latents(torch.ones(3, L))
    assert model.training and decoder[1].training and torch.equal(decoder[1].running_mean, stats)
    model.eval()
    for got, expected in zip(in_train, (model.sample(6, seed=0), model.decode_latents(torch.ones(3, L)))):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])
def test_a_seed_draws_the_same_latents_on_every_device_and_dtype(device: str) -> None:
    """As the GAN's noise: a generator on the module's device, in its dtype, drew other latents
    for the same seed on a GPU or for a float64 model, so a checkpoint sampled elsewhere gave
    other images."""
    model = tiny_vae()
    z = torch.randn(5, L, generator=torch.Generator().manual_seed(7))
    expected = model.decode_latents(z)
    torch.testing.assert_close(model.sample(5, seed=7), expected, rtol=0, atol=0)
    other = tiny_vae().to(device, torch.float64)
    torch.testing.assert_close(other.sample(5, seed=7).cpu().float(), expected, rtol=1e-5, atol=1e-6)


def linear_vae(likelihood: str) -> VAE:
    """L = 1 latent, 2x2 images, linear networks with chosen weights."""
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    decoder = nn.Sequential(nn.Linear(1, 4), nn.Unflatten(1, (1, 2, 2)))
    with torch.no_grad():
        encoder[1].weight.copy_(torch.tensor([[0.5, -0.25, 0.1, 0.3], [0.2, 0.1, -0.4, 0.05]]))
        encoder[1].bias.copy_(torch.tensor([0.1, -0.7]))
        decoder[0].weight.copy_(torch.tensor([[1.0], [-0.5], [0.25], [2.0]]))
        decoder[0].bias.copy_(torch.tensor([0.2, -0.1, 0.3, -1.0]))
    return VAE(latent_dim=1, likelihood=likelihood, encoder=encoder, decoder=decoder, image_size=2, gaussian_scale=0.3)


def hand_log_px(x: float, logit: float, likelihood: str) -> float:
    lam = 1 / (1 + math.exp(-logit))
    if likelihood == "bernoulli":
        return x * math.log(lam) + (1 - x) * math.log(1 - lam)
    if likelihood == "continuous_bernoulli":  # Loaiza-Ganem & Cunningham 2019, eq. 7
        log_c = math.log(2 * math.atanh(1 - 2 * lam) / (1 - 2 * lam))
        return x * math.log(lam) + (1 - x) * math.log(1 - lam) + log_c
    s = 0.3
    return -0.5 * math.log(2 * math.pi * s * s) - (x - lam) ** 2 / (2 * s * s)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_elbo_equals_hand_computation(likelihood: str) -> None:
    model = linear_vae(likelihood)
    pixels = [[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]] if likelihood == "bernoulli" else \
        [[0.9, 0.2, 0.6, 0.35], [0.05, 0.5, 0.75, 0.1]]
    x = torch.tensor(pixels).view(2, 1, 2, 2)
    torch.manual_seed(0)
    elbo = model.elbo(x)
    torch.manual_seed(0)
    eps = torch.randn(2, 1)  # the draw elbo_terms makes (randn_like of the [B, L] mean)
    expected = []
    for b, xs in enumerate(pixels):
        mean = sum(w * v for w, v in zip([0.5, -0.25, 0.1, 0.3], xs)) + 0.1
        log_var = sum(w * v for w, v in zip([0.2, 0.1, -0.4, 0.05], xs)) - 0.7
        z = mean + math.exp(log_var / 2) * eps[b, 0].item()
        logits = [a * z + c for a, c in zip([1.0, -0.5, 0.25, 2.0], [0.2, -0.1, 0.3, -1.0])]
        rec = sum(hand_log_px(v, logit, likelihood) for v, logit in zip(xs, logits))
        kl = 0.5 * (mean**2 + math.exp(log_var) - 1 - log_var)
        expected.append(rec - kl)
    torch.testing.assert_close(elbo, torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_iwae_bound_above_elbo_and_tightens_with_k() -> None:
    """E[L_1] = ELBO <= E[L_10] <= E[L_100] (Burda et al. 2016, theorem 1), averaged over 20
    fixed seeds; each gap must exceed 4 standard errors of the paired differences."""
    model = tiny_vae("bernoulli").eval()
    with torch.no_grad():  # a narrow q and a decoder that depends on z: a loose ELBO
        model.encoder.net[-1].bias[L:] = -3.0
        model.decoder.net[-1].weight.mul_(10)
    x = data_like("bernoulli", n=8)
    ks, repeats = (1, 10, 100), 20
    bounds, elbos = torch.empty(repeats, len(ks)), torch.empty(repeats)
    with torch.no_grad():
        for r in range(repeats):
            torch.manual_seed(r)
            elbos[r] = model.elbo(x).mean()
            for j, k in enumerate(ks):
                bounds[r, j] = model.iwae_bound(x, k).mean()

    def gap_z(diff: torch.Tensor) -> float:
        return (diff.mean() / (diff.std() / math.sqrt(len(diff)))).item()

    # L_1 is a one-sample ELBO with a sampled KL: the same expectation as the closed-form one.
    assert abs(gap_z(bounds[:, 0] - elbos)) < 4
    z_10, z_100 = gap_z(bounds[:, 1] - bounds[:, 0]), gap_z(bounds[:, 2] - bounds[:, 1])
    assert z_10 > 4 and z_100 > 4, (z_10, z_100, bounds.mean(0))
    assert (bounds[:, 2] > elbos.mean()).all()


def test_iwae_chunks_match_one_pass() -> None:
    """Chunked over k (iwae_batch) the bound is the same function of the same weights."""
    model = tiny_vae("bernoulli")
    x = data_like("bernoulli", n=3)
    weights = torch.randn(12, 3)
    start = [0]

    def fake_log_weights(x_, mean, log_var, k: int) -> torch.Tensor:  # the next k rows of weights
        start[0] += k
        return weights[start[0] - k:start[0]]

    model._log_weights = fake_log_weights
    whole = model.iwae_bound(x, 12)
    model.hparams.iwae_batch = 15  # 5 samples per chunk for 3 images: chunks of 5, 5, 2
    start[0] = 0
    chunked = model.iwae_bound(x, 12)
    assert start[0] == 12
    expected = torch.logsumexp(weights, 0) - math.log(12)
    torch.testing.assert_close(whole, expected)
    torch.testing.assert_close(chunked, expected)


def test_iwae_bound_for_a_seed_does_not_depend_on_iwae_batch() -> None:
    """iwae_batch only bounds memory: the same seed gives the same L_k however k is chunked
    (one [chunk, B, L] draw per chunk gave other samples, hence other numbers)."""
    model = tiny_vae("bernoulli").eval()
    x = data_like("bernoulli", n=3)
    bounds = []
    for iwae_batch in (4096, 30, 7):  # k = 50 in 1 chunk, chunks of 10, chunks of 2
        model.hparams.iwae_batch = iwae_batch
        torch.manual_seed(1)
        bounds.append(model.iwae_bound(x, 50))
    for bound in bounds[1:]:
        torch.testing.assert_close(bound, bounds[0])
    torch.manual_seed(1)
    torch.testing.assert_close(torch.logsumexp(model.log_importance_weights(x, 50), 0) - math.log(50), bounds[0])
    with pytest.raises(ValueError, match="k=0 must be an integer >= 1"):
        model.log_importance_weights(x, 0)


def test_nll_bits_per_dim_averages_the_iwae_bound_over_a_loader() -> None:
    """The evaluation hook: mean bits/dim of -L_k over every image of every batch."""
    model = tiny_vae("bernoulli").eval()
    x = data_like("bernoulli", n=5)
    loader = [(x[:3], torch.zeros(3)), (x[3:], torch.zeros(2))]
    torch.manual_seed(0)
    got = model.nll_bits_per_dim(loader, k=4)
    torch.manual_seed(0)
    parts = [model.bits_per_dim(-model.iwae_bound(b, 4)) for b, _ in loader]
    assert got == pytest.approx(torch.cat(parts).double().mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="empty loader"):
        model.nll_bits_per_dim([])


def test_nll_bits_per_dim_runs_in_eval_mode() -> None:
    """Called on a module left in training mode (as after Trainer.fit), an encoder with batch
    norm normalised by the batch's statistics and moved its running ones."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2 * L))
    model = VAE(latent_dim=L, encoder=encoder, decoder=ConvDecoder(L, channels=(8, 4)))
    with torch.no_grad():
        encoder[2].running_mean.fill_(0.5)
    stats = encoder[2].running_mean.clone()
    loader = [data_like("bernoulli", n=4)]
    torch.manual_seed(0)
    in_train = model.nll_bits_per_dim(loader, k=3)
    assert model.training and encoder[2].training and torch.equal(encoder[2].running_mean, stats)
    torch.manual_seed(0)
    assert in_train == model.eval().nll_bits_per_dim(loader, k=3)


def test_kl_warmup_ramps_beta() -> None:
    model = tiny_vae(beta=2.0, kl_warmup_steps=100)
    assert [model.beta_at(s) for s in (0, 50, 100, 1000)] == [0.0, 1.0, 2.0, 2.0]
    assert tiny_vae(beta=0.5).beta_at(0) == 0.5


@pytest.mark.parametrize("likelihood, learn_scale, fmt", [
    ("bernoulli", False, "binarized"),
    ("continuous_bernoulli", False, "unit"),
    ("gaussian", False, "dequantized"),
    ("gaussian", True, "dequantized"),
])
def test_fit_every_likelihood(mnist_dir: Path, tmp_path: Path, likelihood: str, learn_scale: bool, fmt: str) -> None:
    model = tiny_vae(likelihood, learn_scale=learn_scale, val_iwae_k=3, iwae_k=3)
    before = [p.detach().clone() for p in model.parameters()]
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=16)
    fit = trainer(tmp_path, fast_dev_run=2)
    fit.fit(model, data)
    assert data.input_format == fmt
    batch = next(iter(data.train_dataloader()))[0]
    if fmt == "binarized":
        assert set(batch.unique().tolist()) == {0.0, 1.0}
    metrics = fit.callback_metrics
    for key in ("train/loss", "train/elbo", "val/elbo", "val/nll_iwae", "val/bpd", "val/kl"):
        assert torch.isfinite(metrics[key]), key
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    test_metrics = fit.test(model, data, verbose=False)[0]
    assert {"test/elbo", "test/nll_iwae", "test/bpd"} <= set(test_metrics)
    if likelihood == "bernoulli":  # bpd = nats / (784 log 2)
        assert test_metrics["test/bpd"] == pytest.approx(test_metrics["test/nll_iwae"] / (784 * math.log(2)), rel=1e-5)


def test_bf16_true_fit_then_decode_float32_latents(mnist_dir: Path, tmp_path: Path) -> None:
    """After a bf16-true fit, decode_latents takes float32 latents (as LatentInterpolation passes)."""
    model = tiny_vae(val_iwae_k=2)
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=8)
    trainer(tmp_path, fast_dev_run=2, precision="bf16-true").fit(model, data)
    assert model.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in model.decoder.parameters())
    z = torch.randn(3, L)
    images = model.decode_latents(z)
    assert images.shape == (3, 1, 28, 28) and images.dtype == torch.bfloat16
    assert images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(images, model.decode(z.bfloat16()), rtol=0, atol=0)
    assert model.sample(2, seed=0).shape == (2, 1, 28, 28)


def test_checkpoint_round_trip(mnist_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VAE(latent_dim=8, likelihood="continuous_bernoulli", val_iwae_k=2)
    fit = trainer(tmp_path, max_steps=2, limit_train_batches=2, limit_val_batches=1)
    fit.fit(model, MNISTDataModule(data_dir=str(mnist_dir), batch_size=16))
    fit.save_checkpoint(tmp_path / "vae.ckpt")
    loaded = VAE.load_from_checkpoint(tmp_path / "vae.ckpt")
    assert loaded.hparams.likelihood == "continuous_bernoulli" and loaded.input_format == "unit"
    torch.testing.assert_close(loaded.sample(16, seed=5), model.sample(16, seed=5), rtol=0, atol=0)

    # Networks passed as objects are not hyperparameters: pass them again to load.
    torch.manual_seed(1)
    custom = tiny_vae()
    torch.save({"state_dict": custom.state_dict(), "hyper_parameters": dict(custom.hparams),
                "pytorch-lightning_version": "2.6.6"}, tmp_path / "custom.ckpt")
    assert "encoder" not in custom.hparams
    reloaded = VAE.load_from_checkpoint(tmp_path / "custom.ckpt", **tiny_nets())
    torch.testing.assert_close(reloaded.sample(4, seed=0), custom.sample(4, seed=0), rtol=0, atol=0)


@pytest.mark.parametrize("shape, named", [((2, 1, 32, 32), "(2, 1, 32, 32)"), ((2, 3, 28, 28), "(2, 3, 28, 28)"),
                                          ((2, 28, 28), "(2, 28, 28)")])
def test_wrong_image_shape_is_named(shape: tuple[int, ...], named: str) -> None:
    model = tiny_vae()
    with pytest.raises(ValueError, match=r"\[B, 1, 28, 28\].*" + named.replace("(", r"\(").replace(")", r"\)")):
        model.elbo(torch.zeros(shape))
    with pytest.raises(ValueError, match="shape"):
        ConvEncoder(channels=(4, 8))(torch.zeros(shape))


@pytest.mark.parametrize("kwargs, named", [
    ({"likelihood": "poisson"}, "likelihood='poisson'"),
    ({"beta": -0.5}, "beta=-0.5"),
    ({"beta": float("nan")}, "beta=nan"),
    ({"latent_dim": 0}, "latent_dim=0"),
    ({"iwae_k": 0}, "iwae_k=0"),
    ({"kl_warmup_steps": -1}, "kl_warmup_steps=-1"),
    ({"gaussian_scale": 0.0}, "gaussian_scale=0.0"),
    ({"learn_scale": True}, "learn_scale=True"),
])
def test_bad_options_are_named(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        VAE(**kwargs)


def test_other_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="image_size=30"):
        ConvEncoder(image_size=30)
    model = VAE(latent_dim=L, encoder=nn.Sequential(nn.Flatten(), nn.Linear(784, 3)),
                decoder=ConvDecoder(L, channels=(8, 4)))
    with pytest.raises(ValueError, match=r"returned shape \(2, 3\); expected \[B, 2 \* latent_dim\] = \[2, 8\]"):
        model.encode(torch.zeros(2, 1, 28, 28))
    model = VAE(latent_dim=L, encoder=ConvEncoder(L, channels=(4, 8)), decoder=nn.Sequential(nn.Linear(L, 784)))
    with pytest.raises(ValueError, match=r"returned shape \(2, 784\)"):
        model.decode(torch.zeros(2, L))
    model = tiny_vae()
    with pytest.raises(ValueError, match=r"latents must be \[B, 4\], got shape \(2, 5\)"):
        model.decode(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="dtype torch.uint8"):
        model.encode(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        model.training_step((torch.full((2, 1, 28, 28), float("nan")), torch.zeros(2)), 0)
    with pytest.raises(ValueError, match="k=0"):
        model.iwae_bound(torch.zeros(2, 1, 28, 28), 0)
    with pytest.raises(ValueError, match="n=-1"):
        model.sample(-1)


def test_sample_takes_any_integer_kind_for_n_and_seed() -> None:
    model = tiny_vae()
    a = model.sample(2, seed=3)
    for n, seed in ((np.int64(2), np.int64(3)), (torch.tensor(2), torch.tensor(3)), (2, np.uint64(3))):
        assert torch.equal(model.sample(n, seed=seed), a)
    assert model.sample(1, seed=2**64 - 1).shape == (1, 1, 28, 28)  # the largest seed manual_seed takes
    x = data_like("bernoulli", 3)
    assert model.iwae_bound(x, np.int64(2)).shape == (3,)


@pytest.mark.parametrize("kwargs, match", [
    ({"seed": 1.5}, r"seed must be an integer in \[0, 2\*\*64\), got 1.5"),
    ({"seed": 2**64}, "got 18446744073709551616"),
    ({"seed": -1}, "got -1"),
    ({"seed": True}, "got True"),
    ({"n": 2.0}, "n=2.0 must be an integer >= 0"),
    ({"n": True}, "n=True"),
])
def test_sample_names_a_bad_n_or_seed(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_vae().sample(**{"n": 2, **kwargs})


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_float64_images_are_cast_to_the_module_dtype(likelihood: str) -> None:
    model, x = tiny_vae(likelihood), data_like(likelihood, 3)
    for a, b in zip(model.encode(x.double()), model.encode(x)):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    torch.manual_seed(0)
    elbo64 = model.elbo(x.double())
    torch.manual_seed(0)
    torch.testing.assert_close(elbo64, model.elbo(x), rtol=0, atol=0)
    assert model.iwae_bound(x.double(), 2).dtype == torch.float32


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
@pytest.mark.parametrize("scale, shift, seen", [(255.0, 0.0, r"\[0, 255\]"), (1.0, -1.0, r"\[-1, 0\]")])
def test_images_outside_the_unit_interval_are_named(likelihood: str, scale: float, shift: float, seen: str) -> None:
    model = tiny_vae(likelihood)
    x = torch.zeros(2, 1, 28, 28)
    x[0, 0, 0, 0] = 1.0
    x = x * scale + shift
    named = rf"likelihood='{likelihood}' needs images in \[0, 1\], got values in {seen}"
    for call in (model.encode, model.elbo, lambda y: model.iwae_bound(y, 2), model.reconstruct):
        with pytest.raises(ValueError, match=named):
            call(x)


def test_the_gaussian_takes_any_real_images_and_compile_skips_the_range_check(monkeypatch) -> None:
    x = torch.zeros(2, 1, 28, 28)
    x[0, 0, 0, 0] = 255.0
    assert torch.isfinite(tiny_vae("gaussian").elbo(x)).all()  # a density on all reals
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # no data-dependent branch
    assert tiny_vae("bernoulli").elbo(x).shape == (2,)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_the_gaussian_refuses_non_finite_images(value: float) -> None:
    """encode, elbo, iwae_bound and nll_bits_per_dim returned NaN silently."""
    model = tiny_vae("gaussian")
    x = data_like("gaussian", 2)
    x[1, 0, 3, 4] = value
    for call in (model.encode, model.elbo, lambda y: model.iwae_bound(y, 2), lambda y: model.nll_bits_per_dim([y], 2)):
        with pytest.raises(ValueError, match="likelihood='gaussian' needs finite images, got 1 NaN or infinite"):
            call(x)


@pytest.mark.parametrize("step", ["training_step", "validation_step", "test_step"])
def test_an_empty_batch_is_named(step):
    """An empty batch gave a NaN loss, logged silently."""
    model = tiny_vae()
    with pytest.raises(ValueError, match=r"batch is empty, shape \(0, 1, 28, 28\)"):
        getattr(model, step)(torch.zeros(0, 1, 28, 28), 0)


def test_decode_names_nan_and_integer_latents() -> None:
    """NaN latents gave NaN images, silently (the GAN's decode_latents too: tests/gan)."""
    model = tiny_vae()
    with pytest.raises(ValueError, match="VAE.decode: the latents hold 1 NaN or infinite values"):
        model.decode(torch.tensor([[0.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="floating-point latents, got dtype torch.int64"):
        model.decode_latents(torch.zeros(1, L, dtype=torch.long))


@pytest.mark.parametrize("learn_scale", [False, True])
def test_load_from_checkpoint_keeps_a_given_fixed_scale(tmp_path: Path, learn_scale: bool) -> None:
    """A fixed σ is a hyperparameter: the checkpoint's buffer had overwritten the one given to
    load_from_checkpoint, silently. A learnt σ is a weight and loads from the checkpoint."""
    model = tiny_vae("gaussian", gaussian_scale=0.3, learn_scale=learn_scale)
    with torch.no_grad():
        model.log_scale.fill_(math.log(0.25) if learn_scale else math.log(0.3))
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": "2.6.6"}, tmp_path / "vae.ckpt")
    loaded = VAE.load_from_checkpoint(tmp_path / "vae.ckpt", gaussian_scale=0.5, **tiny_nets())
    assert loaded.log_scale.exp().item() == pytest.approx(0.25 if learn_scale else 0.5)
    same = VAE.load_from_checkpoint(tmp_path / "vae.ckpt", **tiny_nets())
    assert same.log_scale.exp().item() == pytest.approx(0.25 if learn_scale else 0.3)
