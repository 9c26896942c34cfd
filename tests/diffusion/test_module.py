"""Diffusion LightningModule: options and errors, sampling, DDP sharding, EMA, fit and CLI."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

from lightning_genmodels import Diffusion, MNISTDataModule
from lightning_genmodels.cli import main
from lightning_genmodels.diffusion import samplers as S
from lightning_genmodels.diffusion.unet import UNet

TINY = dict(base_channels=8, channel_mults=(1, 2), groups=4, attention_heads=2, num_train_timesteps=100)


def tiny(**kwargs) -> Diffusion:
    torch.manual_seed(0)
    model = Diffusion(**(TINY | kwargs))
    # a UNet that is not the identity, so that samples depend on it
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_unet_shapes_and_bad_images():
    net = UNet(in_channels=1, image_size=28, base_channels=8, channel_mults=(1, 2, 2), groups=4, attention_heads=2)
    x = torch.randn(3, 1, 28, 28)
    assert net(x, torch.tensor([0, 5, 999])).shape == x.shape
    assert net(x, torch.tensor(7)).shape == x.shape  # one timestep for all
    # a Python number, as diffusers' UNet2DModel takes (AttributeError: 'int' object has no attribute 'reshape')
    torch.testing.assert_close(net(x, 7), net(x, torch.tensor(7)), rtol=0, atol=0)
    torch.testing.assert_close(net(x, 7.0), net(x, torch.tensor(7)), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"built for images \[N, 1, 28, 28\].*got shape \(3, 3, 28, 28\)"):
        net(torch.randn(3, 3, 28, 28), torch.zeros(3))
    with pytest.raises(ValueError, match=r"got shape \(2, 1, 32, 32\)"):
        net(torch.randn(2, 1, 32, 32), torch.zeros(2))
    with pytest.raises(ValueError, match="image_size=30 must be divisible"):
        UNet(image_size=30, channel_mults=(1, 2, 2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta_schedule": "quadratic"}, "beta_schedule must be one of .* got 'quadratic'"),
        ({"prediction_type": "score"}, "prediction_type must be one of .* got 'score'"),
        ({"sampler": "pndm"}, "sampler must be one of .* got 'pndm'"),
        ({"sample_steps": 101}, r"steps must be an integer in \[1, num_train_timesteps=100\], got 101"),
        ({"sample_steps": 0}, "got 0"),
        ({"eta": 1.5}, r"eta must be in \[0, 1\], got 1.5"),
        ({"timestep_spacing": "cubic"}, "timestep_spacing must be one of .* got 'cubic'"),
        ({"variance_type": "learned"}, "variance_type must be one of .* got 'learned'"),
        ({"min_snr_gamma": -1.0}, "min_snr_gamma must be > 0 or None, got -1.0"),
        ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\), got 1.0"),
        ({"compile_unet": "yes"}, "compile_unet must be True, False or None, got 'yes'"),
        ({"num_train_timesteps": 0}, "num_train_timesteps must be a positive integer, got 0"),
        ({"in_channels": 0}, "need in_channels >= 1 and image_size >= 1, got 0 and 28"),
        ({"warmup_steps": -3}, r"warmup_steps=-3 must be an integer >= 0"),
        ({"warmup_steps": 2.5}, r"warmup_steps=2.5 must be an integer >= 0"),
        ({"num_train_timesteps": 100.0}, "num_train_timesteps must be a positive integer, got 100.0"),
        ({"in_channels": 1.0}, "in_channels must be an integer, got 1.0"),  # (floats failed inside torch)
        ({"base_channels": 8.0}, "base_channels must be an integer, got 8.0"),
        ({"num_res_blocks": 1.0}, "num_res_blocks must be an integer, got 1.0"),
        ({"channel_mults": (1, 2.5)}, "each of channel_mults must be an integer, got 2.5"),  # (was truncated to 2)
        ({"groups": 0}, "need groups >= 1 and attention_heads >= 1, got 0 and 2"),
        ({"attention_heads": 0}, "need groups >= 1 and attention_heads >= 1, got 4 and 0"),
        ({"attention_heads": -2}, "need groups >= 1 and attention_heads >= 1, got 4 and -2"),
        ({"groups": -4}, "need groups >= 1 and attention_heads >= 1, got -4 and 2"),
        # ᾱ_T ~ e^-744: 1/√ᾱ overflowed the float32 step table and sampling gave NaN images
        ({"num_train_timesteps": 1000, "beta_end": 0.9}, "beta_end=0.9 over 1000 timesteps drives alphas_cumprod"),
    ],
)
def test_bad_options_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Diffusion(**(TINY | kwargs))


def test_q_sample_refuses_timesteps_outside_the_schedule():
    """t = -1 indexed ᾱ from the end (ᾱ_{T-1}), silently."""
    model = tiny()
    x = torch.zeros(2, 1, 28, 28)
    for t in ([-1, 3], [0, 100]):
        with pytest.raises(ValueError, match=r"timesteps must be in \[0, 100\), got values in"):
            model.q_sample(x, torch.tensor(t), x)
    torch.testing.assert_close(model.q_sample(x + 1, torch.tensor([0, 99]), x),
                               model.alphas_cumprod[[0, 99]].sqrt().view(-1, 1, 1, 1).expand(2, 1, 28, 28))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 101}, r"num_train_timesteps=100\], got 101"),
        ({"steps": 0}, r"got 0"),
        ({"eta": -0.1}, r"eta must be in \[0, 1\], got -0.1"),
        ({"eta": float("nan")}, "eta must be in"),
        ({"sampler": "euler"}, "got 'euler'"),
        ({"n": 0}, "n must be a positive integer, got 0"),
        ({"n": 2.0}, "n must be a positive integer, got 2.0"),
        ({"seed": -1}, "seed must be an integer in"),
        ({"seed": 1.5}, r"seed must be an integer in \[0, 2\*\*64\), got 1.5"),
        ({"sampler": ""}, "sampler must be one of .* got ''"),
        ({"timestep_spacing": ""}, "timestep_spacing must be one of .* got ''"),  # "" took the default
        ({"variance_type": ""}, "variance_type must be one of .* got ''"),
        ({"threads": 0}, "threads must be a positive integer or None, got 0"),
        ({"threads": 1.5}, "threads must be a positive integer or None, got 1.5"),
        ({"compile_unet": 1}, "compile_unet must be True, False or None, got 1"),
    ],
)
def test_bad_sample_arguments_name_the_value(kwargs, match):
    model = tiny()
    with pytest.raises(ValueError, match=match):
        model.sample(**({"n": 2, "steps": 2} | kwargs))


def test_sampling_runs_the_unet_in_eval_mode_and_restores_the_mode():
    # load_from_checkpoint returns a module in train mode: dropout must not make a seed's images vary
    model = tiny(dropout=0.3).train()
    first = model.sample(2, steps=3, seed=0)
    assert model.unet.training and all(m.training for m in model.unet.modules())
    torch.testing.assert_close(model.sample(2, steps=3, seed=0), first, rtol=0, atol=0)
    torch.testing.assert_close(model.eval().sample(2, steps=3, seed=0), first, rtol=0, atol=0)


def test_bad_training_images_raise():
    model = tiny()
    with pytest.raises(ValueError, match=r"got shape \(2, 1, 14, 14\)"):
        model.training_step((torch.zeros(2, 1, 14, 14), torch.zeros(2)), 0)


@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_sample_range_determinism_and_ext_equals_ref(sampler, eta):
    model = tiny()
    a = model.sample(3, steps=3, sampler=sampler, eta=eta, seed=3)
    assert a.shape == (3, 1, 28, 28) and a.min() >= 0 and a.max() <= 1 and a.std() > 0.05
    torch.testing.assert_close(model.sample(3, steps=3, sampler=sampler, eta=eta, seed=3), a, rtol=0, atol=0)
    assert not torch.equal(model.sample(3, steps=3, sampler=sampler, eta=eta, seed=4), a)
    model.hparams.impl = "ref"
    torch.testing.assert_close(model.sample(3, steps=3, sampler=sampler, eta=eta, seed=3), a, rtol=1e-4, atol=1e-4)


def test_sampled_images_are_an_ordinary_tensor():
    """sample ran under @torch.inference_mode and returned an inference tensor: images.mul_(255)
    or images.requires_grad_() outside inference mode raised RuntimeError."""
    images = tiny().sample(2, steps=2, seed=0)
    assert not images.is_inference()
    expected = images.clone()
    images.mul_(255)
    torch.testing.assert_close(images, expected * 255)


def test_sampling_under_autocast_draws_float32_images():
    """Under torch.autocast the UNet answers in bf16 and the step op refused it (TypeError:
    model_output must be float32); the images now come out float32, near the float32 ones."""
    model = tiny()
    plain = model.sample(2, steps=3, sampler="ddpm", seed=1)
    for impl in ("auto", "ref"):  # the UNet op and the Python UNet
        model.hparams.impl = impl
        with torch.autocast("cpu", dtype=torch.bfloat16):
            images = model.sample(2, steps=3, sampler="ddpm", seed=1)
        assert images.dtype == torch.float32
        torch.testing.assert_close(images, plain, rtol=0, atol=0.05)


def test_schedule_stays_float32_when_the_weights_go_bf16():
    """precision="bf16-true" (module.to(torch.bfloat16)) also converted the schedule's buffers:
    ᾱ_t rounded to 1 for t < 10 of the linear schedule (those timesteps trained without noise)
    while sampling used the exact schedule."""
    model = tiny(num_train_timesteps=1000)
    exact = model.alphas_cumprod.clone()
    model = model.to(torch.bfloat16)
    assert model.unet.conv_in.weight.dtype == torch.bfloat16
    assert model.alphas_cumprod.dtype == torch.float32 and model.betas.dtype == torch.float32
    torch.testing.assert_close(model.alphas_cumprod, exact, rtol=0, atol=0)
    x0 = torch.zeros(2, 1, 28, 28, dtype=torch.bfloat16)
    assert (model.q_sample(x0, torch.tensor([0, 5]), torch.ones_like(x0)) > 0).all()  # noise at t = 0 and 5
    assert model.double().alphas_cumprod.dtype == torch.float64  # wider dtypes are kept


def test_sample_images_uses_the_defaults():
    model = tiny(sample_steps=3)
    torch.testing.assert_close(model.sample_images(2, seed=1), model.sample(2, seed=1, steps=3, sampler="ddim"))


@pytest.mark.parametrize("n, world", [(10, 3), (2, 4), (7, 1), (8, 2)])
def test_shards_cover_the_batch_in_order(n, world):
    shares = [S.shard(n, r, world) for r in range(world)]
    assert sum(c for _, c in shares) == n and shares[0][0] == 0
    assert all(f + c == nf for (f, c), (nf, _) in zip(shares, shares[1:]))
    assert max(c for _, c in shares) - min(c for _, c in shares) <= 1


def test_rank_shares_equal_the_single_process_batch():
    """What each of 3 ranks draws (its shard, its noise offset) is the matching slice of the
    batch one process draws: the loop DDP ranks run, without the gather."""
    model = tiny()
    timesteps, table = model.coefficient_table(5, "ddpm", 0.0)
    with torch.inference_mode():  # as Diffusion.sample runs the loop (the op has no backward)
        whole = S.sample_loop(model.unet, (7, 1, 28, 28), 0, timesteps, table, 11, 1.0, "ext")
        parts = []
        for rank in range(3):
            first, count = S.shard(7, rank, 3)
            parts.append(S.sample_loop(model.unet, (count, 1, 28, 28), first, timesteps, table, 11, 1.0, "ext"))
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction", S.PREDICTION_TYPES)
def test_min_snr_weights(prediction):
    model = tiny(prediction_type=prediction, min_snr_gamma=5.0)
    t = torch.tensor([0, 50, 99])
    _, weight = model._target_and_weight(torch.zeros(3, 1, 28, 28), torch.zeros(3, 1, 28, 28), t)
    abar = model.alphas_cumprod[t]
    snr = abar / (1 - abar)
    expected = {"epsilon": snr.clamp(max=5) / snr, "sample": snr.clamp(max=5),
                "v_prediction": snr.clamp(max=5) / (snr + 1)}[prediction]
    torch.testing.assert_close(weight, expected)
    assert weight[0] < (1.0 if prediction != "sample" else math.inf)


@pytest.mark.parametrize("prediction", S.PREDICTION_TYPES)
def test_min_snr_loss_is_finite_where_alphas_cumprod_underflows(prediction):
    """With beta_end=0.2 the float32 ᾱ_t of the last 16 of 1000 timesteps is 0: the ε weight
    min(snr, γ) / snr was 0 / 0, a NaN training loss; its limit is 1."""
    model = tiny(num_train_timesteps=1000, beta_end=0.2, prediction_type=prediction, min_snr_gamma=5.0)
    assert model.alphas_cumprod[-1] == 0
    x0 = torch.rand(2, 1, 28, 28) * 2 - 1
    t = torch.tensor([500, 999])
    _, weight = model._target_and_weight(x0, torch.randn_like(x0), t)
    assert torch.isfinite(weight).all() and float(weight[1]) == (1.0 if prediction == "epsilon" else 0.0)
    with torch.no_grad():
        assert torch.isfinite(model._image_losses(x0, t, torch.randn_like(x0))).all()


def test_fit_keeps_an_ema_used_for_checkpoints_and_sampling(mnist_dir, tmp_path):
    model = Diffusion(**TINY, ema_decay=0.5, lr=1e-2, sample_steps=2)
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=16, val_split=32)
    every = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    trainer = Trainer(max_steps=3, limit_val_batches=1, val_check_interval=3, logger=False, callbacks=[every],
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, data)
    assert data.input_format == "symmetric"
    ema = next(c for c in trainer.callbacks if isinstance(c, EMAWeightAveraging))
    # after fit the model holds the average
    averaged = dict(ema._average_model.module.named_parameters())
    for name, p in model.named_parameters():  # the average stays where it trained (a GPU if one is visible)
        torch.testing.assert_close(p.cpu(), averaged[name].cpu())
    # a checkpoint taken during fit: state_dict is the average, the raw weights are kept beside it
    mid = torch.load(tmp_path / "step=2.ckpt", weights_only=False)
    key = "unet.conv_in.weight"
    assert not torch.equal(mid["current_model_state"][key], mid["state_dict"][key])
    ckpt = tmp_path / "end.ckpt"
    trainer.save_checkpoint(ckpt)
    model = model.cpu()  # compared on the CPU wherever it trained
    torch.testing.assert_close(torch.load(ckpt, weights_only=False, map_location="cpu")["state_dict"][key],
                               model.unet.conv_in.weight)
    loaded = Diffusion.load_from_checkpoint(ckpt, map_location="cpu")
    torch.testing.assert_close(loaded.sample(2, seed=0), model.sample(2, seed=0))
    last = tmp_path / "step=3.ckpt"  # saved at the last step, before the average was copied
    # resuming from the last step's checkpoint (no step left) ends with the average in the model
    # too: the fit loop skips on_train_end, and the model kept the checkpoint's raw weights
    again = Diffusion(**TINY, ema_decay=0.5, lr=1e-2, sample_steps=2)
    Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
            enable_checkpointing=False, default_root_dir=tmp_path).fit(again, data, ckpt_path=last)
    last_state = torch.load(last, weights_only=False, map_location="cpu")
    assert not torch.equal(last_state["current_model_state"][key], last_state["state_dict"][key])
    for name, p in again.named_parameters():
        torch.testing.assert_close(p.cpu(), last_state["state_dict"][name])


def test_samples_drawn_at_a_training_epochs_end_come_from_the_ema():
    """SampleGrid(every_n_epochs=...) samples at on_train_epoch_end, outside validation's swap:
    its grids came from the raw weights, not the EMA that validation and the final model use."""
    from lightning.pytorch import Callback
    from torch.utils.data import DataLoader

    class Capture(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            ema = next(c for c in trainer.callbacks if isinstance(c, EMAWeightAveraging))
            self.raw = [p.detach().clone() for p in pl_module.parameters()]
            self.images = pl_module.sample_images(2, seed=0)
            self.after = [p.detach().clone() for p in pl_module.parameters()]
            self.average = {k: v.detach().clone() for k, v in ema._average_model.module.state_dict().items()}

    model = Diffusion(**TINY, ema_decay=0.5, lr=1e-2, sample_steps=2)
    capture = Capture()
    data = DataLoader(torch.rand(8, 1, 28, 28) * 2 - 1, batch_size=4)
    Trainer(max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[capture]).fit(model, data, data)
    for before, after in zip(capture.raw, capture.after):  # the raw weights are back
        torch.testing.assert_close(after, before, rtol=0, atol=0)
    twin = Diffusion(**TINY, ema_decay=0.5, sample_steps=2)
    twin.load_state_dict(capture.average)
    torch.testing.assert_close(capture.images, twin.sample(2, seed=0))


class _Denoiser(torch.nn.Module):
    """A user's own network: no UNet methods (check_input, frozen, runs_op)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x)


class _OwnDenoiser(Diffusion):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.unet = _Denoiser()
        self.scale = torch.nn.Parameter(torch.ones(1))  # outside the network, trained too

    def forward(self, x, t):
        return self.scale * self.unet(x, t)


def test_subclass_with_its_own_denoiser_trains_all_its_parameters(mnist_dir):
    """Training called UNet.check_input (AttributeError), and the optimiser took only
    self.unet's parameters: a subclass's own stayed put with no warning."""
    model = _OwnDenoiser(**TINY, ema_decay=0.0, lr=0.1, sample_steps=2)
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=8, val_split=16)
    Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False).fit(model, data)
    assert float(model.scale) != 1.0
    assert model.sample(2, seed=0).shape == (2, 1, 28, 28)


def test_validation_draws_belong_to_the_image_not_the_batch():
    """Validation's fixed timesteps and noise were seeded by the batch size: the last batch, another
    batch size or another world size drew other ones. Now the loss of a batch is the mean of its
    halves' losses, and an image's draws do not depend on its neighbours."""
    from lightning_genmodels.diffusion.module import validation_draws

    model = tiny()
    x0 = torch.randint(0, 256, (8, 1, 28, 28), generator=torch.Generator().manual_seed(3)).float() / 127.5 - 1
    t, noise = validation_draws(x0, TINY["num_train_timesteps"])
    t2, noise2 = validation_draws(x0[5:], TINY["num_train_timesteps"])
    assert torch.equal(t[5:], t2) and torch.equal(noise[5:], noise2)
    assert len(set(t.tolist())) > 4 and abs(float(noise.std()) - 1) < 0.05
    with torch.no_grad():
        whole = model._shared_step((x0,), "val")
        halves = (model._shared_step((x0[:4],), "val") + model._shared_step((x0[4:],), "val")) / 2
    torch.testing.assert_close(whole, halves)


def test_cli_fit_with_the_config(mnist_dir, tmp_path, capsys):
    png = tmp_path / "grid.png"
    main([
        "fit", "--config", "configs/diffusion_mnist.yaml", f"--data.data_dir={mnist_dir}",
        "--trainer.fast_dev_run=2", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
        "--model.base_channels=8", "--model.channel_mults=[1, 2]", "--model.groups=4",
        "--model.sample_steps=2", "--data.batch_size=8",
        "--trainer.callbacks+=lightning_genmodels.callbacks.SampleGrid",
        f"--trainer.callbacks.path={png}", "--trainer.callbacks.num_samples=4",
    ])
    assert png.exists()
    assert "train/loss" in capsys.readouterr().out


def test_cpu_threads_draw_the_same_images_and_restore_the_thread_count():
    """Sampling split over threads (each part addressed by its first sample, as DDP ranks are)
    gives the images of one thread, and leaves torch's intra-op thread count as it was."""
    model = tiny()
    before = torch.get_num_threads()
    one = model.sample(7, steps=4, sampler="ddpm", seed=5, threads=1)
    for threads in (2, 3, 9):  # 9 > 7 images: some parts are empty
        torch.testing.assert_close(model.sample(7, steps=4, sampler="ddpm", seed=5, threads=threads), one,
                                   rtol=1e-4, atol=1e-4)
        assert torch.get_num_threads() == before
    assert S.cpu_threads(7, None) == 1  # fewer than 4 images per second thread: one thread
    assert S.cpu_threads(8, None) == min(before, 2)
    assert S.cpu_threads(64, None) == min(before, 64 // S.MIN_IMAGES_PER_THREAD)


def test_threads_sample_under_the_callers_autocast():
    """autocast is per thread: under torch.autocast("cpu") the sampling threads other than the
    caller's ran the UNet in float32, so images 2 and 3 of 4 on two threads differed (by ~5e-3)
    from those of one thread."""
    model = tiny()
    for impl in ("auto", "ref"):
        model.hparams.impl = impl
        with torch.autocast("cpu", dtype=torch.bfloat16):
            one = model.sample(4, steps=3, sampler="ddpm", seed=1, threads=1)
            two = model.sample(4, steps=3, sampler="ddpm", seed=1, threads=2)
        torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-4)


def test_an_error_in_one_thread_is_raised_and_stops_the_others():
    model = tiny()
    timesteps, table = model.coefficient_table(50, "ddim", 0.0)
    before = torch.get_num_threads()
    calls = []

    def failing(x, t):
        calls.append(x.shape[0])
        if x.shape[0] == 2:
            raise RuntimeError("part of 2 images failed")
        return model.unet(x, t)

    with pytest.raises(RuntimeError, match="part of 2 images failed"):
        S.sample_loop(failing, (5, 1, 28, 28), 0, timesteps, table, 1, 0.0, "ext", threads=2)
    assert torch.get_num_threads() == before
    assert calls.count(3) < 50  # the part of 3 stopped early


def test_compiled_unet_draws_the_same_images():
    """``compile_unet=True`` runs the UNet through torch.compile (one new graph: no fallback to
    eager) and gives the uncompiled images to float rounding, and a second call reuses it; the
    default on the CPU compiles nothing."""
    from torch._dynamo.utils import counters

    model = tiny()
    before = counters["stats"]["unique_graphs"]
    plain = model.sample(2, steps=3, sampler="ddpm", seed=2)
    assert counters["stats"]["unique_graphs"] == before
    compiled = model.sample(2, steps=3, sampler="ddpm", seed=2, compile_unet=True)
    after = counters["stats"]["unique_graphs"]
    assert after > before
    torch.testing.assert_close(compiled, plain, rtol=0, atol=1e-5)
    again = model.sample(2, steps=3, sampler="ddpm", seed=2, compile_unet=True)  # UNet.frozen toggled again
    assert counters["stats"]["unique_graphs"] == after  # no recompilation
    torch.testing.assert_close(again, compiled, rtol=0, atol=0)


def test_a_failed_default_compilation_falls_back_to_the_eager_unet(monkeypatch):
    """Where ``compile_unet=None`` compiles (CUDA) and the compiler fails (Triton without a C
    compiler, say), sampling warns once and runs the eager UNet; an explicit True raises."""
    from torch._dynamo.exc import BackendCompilerFailed

    def failing_backend(gm, example_inputs):
        raise RuntimeError("no C compiler for Triton's launcher")

    model = tiny()
    plain = model.sample(2, steps=2, sampler="ddpm", seed=1)
    monkeypatch.setattr(Diffusion, "_auto_compile", lambda self: not getattr(self, "_compile_failed", False))
    monkeypatch.setattr(Diffusion, "_compiled_unet", lambda self: torch.compile(self.unet, backend=failing_backend))
    with pytest.warns(RuntimeWarning, match="compiling the UNet failed.*no C compiler"):
        images = model.sample(2, steps=2, sampler="ddpm", seed=1)
    torch.testing.assert_close(images, plain, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the next call does not try again
        model.sample(2, steps=2, sampler="ddpm", seed=1)
    with pytest.raises(BackendCompilerFailed, match="no C compiler"):
        model.sample(2, steps=2, sampler="ddpm", seed=1, compile_unet=True)


def test_ema_warmup_follows_diffusers_ema_model():
    """ema_warmup=True: the average after each update equals diffusers' EMAModel's (its decay
    min(decay, (1 + n) / (10 + n))); the default keeps Lightning's constant decay."""
    diffusers_training = pytest.importorskip("diffusers.training_utils")
    from torch.optim.swa_utils import AveragedModel

    model = Diffusion(**TINY, ema_warmup=True)
    (ema,) = model.configure_callbacks()
    net = torch.nn.Linear(3, 2)
    ours = AveragedModel(net, use_buffers=False, **ema._kwargs)
    theirs = diffusers_training.EMAModel(net.parameters(), decay=0.999)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
        ours.update_parameters(net)
        theirs.step(net.parameters())
    for a, b in zip(ours.module.parameters(), theirs.shadow_params):
        torch.testing.assert_close(a, b)
    (constant,) = Diffusion(**TINY).configure_callbacks()
    assert "avg_fn" in constant._kwargs and constant._kwargs["avg_fn"] is not ema._kwargs["avg_fn"]
    with pytest.raises(ValueError, match="ema_warmup must be True or False, got 1"):
        Diffusion(**TINY, ema_warmup=1)
