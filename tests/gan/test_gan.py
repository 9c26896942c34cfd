"""GAN: output shapes and ranges, the gradient penalty against a hand computation, fit for every
loss, checkpoint round trips, the EMA generator, bad input and the NaN stop."""
from __future__ import annotations

from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels import GAN
from lightning_genmodels.gan import Discriminator, Generator
from lightning_genmodels.gan.losses import gradient_penalty

TINY = {"latent_dim": 8, "features": 4}
QUIET = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False,
         "enable_progress_bar": False, "enable_model_summary": False}


def loader(n: int = 32, batch_size: int = 8, channels: int = 1, side: int = 28) -> DataLoader:
    """Random images in [-1, 1] with dummy labels, like MNISTDataModule's symmetric batches."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, channels, side, side, generator=g) * 2 - 1
    return DataLoader(TensorDataset(x, torch.zeros(n, dtype=torch.long)), batch_size=batch_size)


def fit(model: GAN, batches: int = 4, **trainer_kwargs) -> lightning.Trainer:
    kwargs = {**QUIET, "max_epochs": 1, "limit_train_batches": batches, "limit_val_batches": 0, **trainer_kwargs}
    trainer = lightning.Trainer(**kwargs)
    trainer.fit(model, train_dataloaders=loader())
    return trainer


# ----- shapes and ranges ---------------------------------------------------------------------
def test_networks_shapes_and_ranges() -> None:
    gen, disc = Generator(latent_dim=8, features=4), Discriminator(features=4, spectral_norm=True)
    images = gen(torch.randn(5, 8) * 10)
    assert images.shape == (5, 1, 28, 28) and images.abs().max() <= 1
    assert disc(images).shape == (5,)


def test_sample_shapes_ranges_and_seed() -> None:
    model = GAN(**TINY)
    a, b, c = model.sample(6, seed=1), model.sample(6, seed=1), model.sample(6, seed=2)
    assert a.shape == (6, 1, 28, 28) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.sample(3).shape == (3, 1, 28, 28)  # global RNG
    assert torch.equal(model.sample_images(6, seed=1), a)
    assert model.decode_latents(torch.zeros(2, 8)).shape == (2, 1, 28, 28)


def test_sample_takes_any_integer_kind_for_n_and_seed() -> None:
    model = GAN(**TINY)
    a = model.sample(2, seed=3)
    for n, seed in ((np.int64(2), np.int64(3)), (torch.tensor(2), torch.tensor(3)), (2, np.uint64(3))):
        assert torch.equal(model.sample(n, seed=seed), a)
    assert model.sample(1, seed=2**64 - 1).shape == (1, 1, 28, 28)  # the largest seed manual_seed takes
    z = torch.randn(2, 8, dtype=torch.float64)
    assert torch.equal(model.decode_latents(z), model.decode_latents(z.float()))


@pytest.mark.parametrize("kwargs, match", [
    ({"seed": 1.5}, r"seed must be an integer in \[0, 2\*\*64\), got 1.5"),
    ({"seed": 2**64}, "got 18446744073709551616"),
    ({"seed": -1}, "got -1"),
    ({"seed": True}, "got True"),
    ({"seed": "3"}, "got '3'"),
    ({"n": 2.0}, "n=2.0 must be an integer >= 1"),
    ({"n": True}, "n=True"),
    ({"n": np.int64(0)}, r"n=np.int64\(0\)"),
])
def test_sample_names_a_bad_n_or_seed(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GAN(**TINY).sample(**{"n": 2, **kwargs})


# ----- gradient penalty ----------------------------------------------------------------------
def test_gradient_penalty_of_a_linear_critic() -> None:
    """D(x) = w·x + b has ∇D = w everywhere, so the penalty is (||w|| - 1)^2 exactly."""
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    w = critic[1].weight
    real, fake = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2)
    expected = (w.norm() - 1) ** 2
    torch.testing.assert_close(gradient_penalty(lambda x: critic(x).squeeze(1), real, fake), expected)


def test_gradient_penalty_matches_per_sample_autograd() -> None:
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 1))
    d = lambda x: critic(x).squeeze(1)  # noqa: E731
    real, fake = torch.randn(3, 1, 2, 3), torch.randn(3, 1, 2, 3)
    got = gradient_penalty(d, real, fake, generator=torch.Generator().manual_seed(7))

    eps = torch.rand(3, 1, 1, 1, generator=torch.Generator().manual_seed(7))
    terms = []
    for i in range(3):  # one sample at a time: ∇ of D at x̂_i alone
        x_hat = (eps[i] * real[i] + (1 - eps[i]) * fake[i]).unsqueeze(0).requires_grad_(True)
        (grad,) = torch.autograd.grad(d(x_hat).sum(), x_hat)
        terms.append((grad.norm() - 1) ** 2)
    torch.testing.assert_close(got, torch.stack(terms).mean())
    # create_graph: the penalty is differentiable in the critic's weights
    got.backward()
    assert critic[0 + 1].weight.grad is not None and critic[1].weight.grad.abs().sum() > 0


# ----- fit ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"loss": "non_saturating"},
        {"loss": "hinge", "spectral_norm": True},
        {"loss": "wgan_gp", "n_critic": 2, "betas_g": (0.0, 0.9), "betas_d": (0.0, 0.9)},
        {"loss": "hinge", "ema_decay": None, "lr_g": 1e-3, "lr_d": 4e-4},
    ],
    ids=["non_saturating", "hinge_sn", "wgan_gp_ncritic2", "no_ema"],
)
def test_fit_updates_both_players(kwargs: dict) -> None:
    model = GAN(**TINY, **kwargs)
    g0 = [p.detach().clone() for p in model.generator.parameters()]
    d0 = [p.detach().clone() for p in model.discriminator.parameters()]
    trainer = fit(model, batches=4)
    n_critic = kwargs.get("n_critic", 1)
    assert trainer.global_step == 4 + 4 // n_critic  # optimizer steps: 4 for D, 4 / n_critic for G
    # any, not all: with the hinge loss inside the margin the head's bias gradient is -1 + 1 = 0
    assert any(not torch.equal(a, b) for a, b in zip(d0, model.discriminator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(g0, model.generator.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(trainer.callback_metrics["train/d_loss"])
    assert model.sample(4, seed=0).shape == (4, 1, 28, 28)


def test_ema_follows_swa_utils_formula() -> None:
    """After two generator steps the EMA is decay * first + (1 - decay) * second."""
    decay = 0.9
    model = GAN(**TINY, ema_decay=decay)
    snapshots: list[list[Tensor]] = []

    class Snap(lightning.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            snapshots.append([p.detach().clone() for p in pl_module.generator.parameters()])

    fit(model, batches=2, callbacks=[Snap()])
    assert int(model.generator_ema.n_averaged) == 2
    for p1, p2, ema in zip(*snapshots, model.generator_ema.module.parameters()):
        torch.testing.assert_close(ema, decay * p1 + (1 - decay) * p2)
    assert get_ema_multi_avg_fn  # the averaging function the module uses (swa_utils)
    # sampling uses the EMA generator, not the raw one
    z = torch.randn(3, 8)
    with torch.no_grad():
        model.generator.eval()
        raw = (model.generator(z) + 1) / 2
    assert not torch.allclose(model.decode_latents(z), raw)


def test_validation_and_test_log_both_losses() -> None:
    model = GAN(**TINY, loss="wgan_gp")
    trainer = lightning.Trainer(**QUIET, max_epochs=1, limit_train_batches=2, limit_val_batches=2)
    trainer.fit(model, train_dataloaders=loader(), val_dataloaders=loader())
    assert {"val/d_loss", "val/g_loss"} <= set(trainer.callback_metrics)
    (result,) = trainer.test(model, loader(), verbose=False)
    assert set(result) == {"test/d_loss", "test/g_loss"}


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = GAN(**TINY, loss="hinge", spectral_norm=True, ema_decay=0.5)
    trainer = fit(model, batches=3)
    before = model.sample(8, seed=3)
    path = tmp_path / "gan.ckpt"
    trainer.save_checkpoint(path)
    loaded = GAN.load_from_checkpoint(path)
    assert loaded.hparams.loss == "hinge" and loaded.hparams.spectral_norm
    assert int(loaded.generator_ema.n_averaged) == 3
    torch.testing.assert_close(loaded.sample(8, seed=3), before, rtol=0, atol=0)
    for a, b in zip(model.generator_ema.parameters(), loaded.generator_ema.parameters()):
        assert torch.equal(a, b)
    # a fresh model samples differently: the checkpoint carried the weights
    assert not torch.equal(GAN(**TINY, loss="hinge", spectral_norm=True, ema_decay=0.5).sample(8, seed=3), before)


def test_bf16_true_fit_then_sample_and_decode_float32_latents() -> None:
    """After a bf16-true fit the weights are bf16; sample() and decode_latents() of float32
    latents (as LatentInterpolation passes them) run in bf16."""
    model = GAN(**TINY)
    fit(model, batches=2, precision="bf16-true")
    assert model.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.generator_ema.module.parameters())
    assert model.noise(3).dtype == torch.bfloat16
    images = model.sample(3, seed=0)
    assert images.shape == (3, 1, 28, 28) and images.dtype == torch.bfloat16
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    decoded = model.decode_latents(z)
    assert torch.equal(decoded, images)  # sample(seed) draws the same float32 z, then casts
    assert decoded.min() >= 0 and decoded.max() <= 1


class AssignedGenerator(GAN):
    """Sets its own generator after ``super().__init__()`` (a common Lightning pattern)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__(**TINY)
        self.generator = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 784), nn.Tanh(),
                                       nn.Unflatten(1, (1, 28, 28)))


def test_generator_assigned_after_init_gets_its_own_ema(tmp_path: Path) -> None:
    model = AssignedGenerator()
    assert isinstance(model.sampler, nn.Sequential)  # sample() before any fit uses the new network
    trainer = fit(model, batches=2)
    ema = model.generator_ema
    assert int(ema.n_averaged) == 2
    assert [n for n, _ in ema.module.named_parameters()] == [n for n, _ in model.generator.named_parameters()]
    assert not torch.equal(ema.module[0].weight, model.generator[0].weight)  # an average, not a copy
    path = tmp_path / "assigned.ckpt"
    trainer.save_checkpoint(path)
    loaded = AssignedGenerator.load_from_checkpoint(path)
    torch.testing.assert_close(loaded.sample(4, seed=0), model.sample(4, seed=0), rtol=0, atol=0)
    resumed = AssignedGenerator()  # resuming keeps the checkpoint's EMA and goes on averaging
    lightning.Trainer(**QUIET, max_epochs=2, limit_train_batches=2, limit_val_batches=0).fit(
        resumed, train_dataloaders=loader(), ckpt_path=path)
    assert int(resumed.generator_ema.n_averaged) == 4


# ----- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "lsgan"}, "loss='lsgan' is not one of"),
        ({"n_critic": 0}, "n_critic=0 must be"),
        ({"lr_g": -1e-4}, "lr_g=-0.0001 must be"),
        ({"lr_d": float("nan")}, "lr_d=nan must be"),
        ({"betas_d": (0.5, 1.0)}, r"betas_d=\(0.5, 1.0\)"),
        ({"ema_decay": 1.5}, "ema_decay=1.5"),
        ({"latent_dim": 0}, "latent_dim=0"),
        ({"gp_weight": -1.0}, "gp_weight=-1.0"),
        ({"weights_init": "xavier"}, "weights_init='xavier' is not one of pytorch, dcgan"),
    ],
)
def test_bad_options_name_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GAN(**{**TINY, **kwargs})


@pytest.mark.parametrize(("channels", "side"), [(3, 28), (1, 32)])
def test_images_the_nets_were_not_built_for(channels: int, side: int) -> None:
    trainer = lightning.Trainer(**QUIET, max_epochs=1, limit_train_batches=1)
    with pytest.raises(ValueError, match=rf"built for images \[B, 1, 28, 28\] but got shape \(8, {channels}, {side}, {side}\)"):
        trainer.fit(GAN(**TINY), train_dataloaders=loader(channels=channels, side=side))


def test_mismatched_user_networks() -> None:
    with pytest.raises(ValueError, match=r"generator maps z \[2, 8\] to shape \(2, 1, 14, 14\)"):
        GAN(**TINY, generator=nn.Sequential(nn.Linear(8, 196), nn.Unflatten(1, (1, 14, 14))))
    with pytest.raises(ValueError, match=r"Generator was built for z \[B, 16\] but got shape \(2, 8\)"):
        GAN(**TINY, generator=Generator(latent_dim=16, features=4))
    with pytest.raises(ValueError, match=r"n=0"):
        GAN(**TINY).sample(0)


# ----- NaN stop -------------------------------------------------------------------------------
class NaNAfter(GAN):
    """A GAN whose discriminator loss turns NaN from batch ``bad_batch`` on."""

    def __init__(self, bad_batch: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bad_batch, self.batches = bad_batch, 0

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        loss = super().discriminator_loss(real, fake)
        self.batches += 1
        return loss * float("nan") if self.batches > self.bad_batch else loss


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    model = NaNAfter(bad_batch=3, **TINY)
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="gan", every_n_train_steps=2, save_top_k=-1, save_last=True)
    trainer = lightning.Trainer(**{**QUIET, "enable_checkpointing": True}, max_epochs=1, callbacks=[ckpt])
    with pytest.raises(FloatingPointError, match=r"discriminator loss is nan .* global step 6.*last good checkpoint is .*last\.ckpt"):
        trainer.fit(model, train_dataloaders=loader())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no NaN update was applied
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert state["global_step"] == 6  # three good batches, two optimizer steps each
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    loaded = GAN.load_from_checkpoint(tmp_path / "last.ckpt", **TINY)
    assert torch.isfinite(loaded.sample(2, seed=0)).all()


def test_n_critic_counts_batches_across_epochs() -> None:
    """n_critic = 3 over 3 epochs of 2 batches: generator steps after batches 3 and 6 of the run
    (batch_idx restarts each epoch; counted by it, the generator never stepped)."""
    model = GAN(**TINY, n_critic=3)
    trainer = fit(model, batches=2, max_epochs=3)
    opt_g, opt_d = (opt.optimizer for opt in model.optimizers())
    steps = [int(opt.state[next(iter(opt.state))]["step"]) if opt.state else 0 for opt in (opt_g, opt_d)]
    assert steps == [2, 6] and trainer.global_step == 8
    assert int(model.generator_ema.n_averaged) == 2


def test_sampling_before_any_ema_update_uses_the_generator() -> None:
    """Weights loaded into the generator of a fresh GAN (a pretrained one): sample() used the EMA
    copy made at construction, i.e. the random initial weights; after a step it is the EMA."""
    torch.manual_seed(0)
    pretrained = Generator(8, 1, 4)
    with torch.no_grad():
        for p in pretrained.parameters():
            p.add_(0.5)
    model = GAN(**TINY)
    model.generator.load_state_dict(pretrained.state_dict())
    z = torch.randn(3, 8)
    with torch.no_grad():
        expected = ((pretrained.eval()(z) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(model.decode_latents(z), expected, rtol=0, atol=0)
    fit(model, batches=1)
    assert model.sampler is model.generator_ema.module


def test_a_nan_in_the_real_batch_is_named_not_the_learning_rates() -> None:
    """A NaN pixel in the data made the loss NaN, and the error advised lower learning rates."""
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x[5, 0, 3, 3] = float("nan")
    model = GAN(**TINY)
    trainer = lightning.Trainer(**QUIET, max_epochs=1, limit_val_batches=0)
    with pytest.raises(FloatingPointError, match=r"discriminator loss is nan .* batch of real images holds 1 NaN "
                                                 r"or infinite values: check the data\.$"):
        trainer.fit(model, train_dataloaders=DataLoader(TensorDataset(x, torch.zeros(16)), batch_size=8))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_dcgan_init_draws_the_papers_weights_for_the_default_networks(spectral_norm: bool) -> None:
    """weights_init="dcgan": convolution and linear weights N(0, 0.02) (before spectral
    normalisation), batch-norm scales N(1, 0.02), biases 0, where PyTorch's defaults (uniform, of
    1 / fan_in's scale) are not; networks passed in keep their weights; the model still trains."""
    torch.manual_seed(0)
    model = GAN(latent_dim=64, features=32, spectral_norm=spectral_norm, weights_init="dcgan")
    default = GAN(latent_dim=64, features=32, spectral_norm=spectral_norm)
    for net, base in ((model.generator, default.generator), (model.discriminator, default.discriminator)):
        for name, p in net.named_parameters():
            kind = name.rsplit(".", 1)[-1]
            if kind == "bias":
                assert not p.any(), name
            elif p.ndim == 1:  # batch-norm scale
                assert abs(p.mean().item() - 1.0) < 0.01 and 0.01 < p.std().item() < 0.03, name
            elif p.numel() >= 1000:  # weights (original, under spectral norm)
                assert abs(p.mean().item()) < 0.005 and abs(p.std().item() - 0.02) < 0.003, (name, p.std())
                assert abs(dict(base.named_parameters())[name].std().item() - 0.02) > 0.005, name
    given = Generator(latent_dim=8, features=4)
    before = [p.clone() for p in given.parameters()]
    kept = GAN(**TINY, generator=given, weights_init="dcgan")
    assert all(torch.equal(a, b) for a, b in zip(before, kept.generator.parameters()))
    fit(GAN(**TINY, weights_init="dcgan"), batches=2)
