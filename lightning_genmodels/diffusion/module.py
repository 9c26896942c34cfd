"""Diffusion: a DDPM/DDIM LightningModule on images in [-1, 1] (Ho et al. 2020; Song et al. 2021).

Training minimises the (optionally min-SNR weighted) MSE between the UNet's output and the
target of its prediction type at a uniformly drawn timestep. An exponential moving average of
the weights (Lightning's ``EMAWeightAveraging``, added by ``configure_callbacks``) is used for
validation and for the images callbacks draw while fitting (``sample_images``), is what a
checkpoint's ``state_dict`` holds, and is copied into the model when fitting ends, so sampling
uses it. Sampling runs the fused step op (:mod:`.samplers`,
:func:`lightning_genmodels.ops.diffusion_step`) under inference mode; on CUDA the UNet runs
compiled by ``torch.compile`` (``compile_unet``) and each step after a warm-up is one CUDA-graph
replay.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor

from ..ddp import eval_means, log_row_means
from ..module_utils import (
    check_integer, check_real, eval_mode, finite_on_every_rank, save_hparams_keeping_configs, seed_ranks_apart,
)
from ..ops.build import IMPLS, Impl
from ..ops.philox import check_seed, philox_normal_rows
from ..train_log import sync_train_metrics
from . import samplers as S
from .schedules import BETA_SCHEDULES, BetaSchedule, alphas_cumprod, make_betas
from .unet import UNet


class Diffusion(LightningModule):
    """Denoising diffusion model with a UNet, DDPM and DDIM samplers, EMA and min-SNR weighting.

    Buffers: ``betas`` [T] and ``alphas_cumprod`` [T], float32 (computed in float64).

    Args:
        in_channels, image_size, base_channels, channel_mults, num_res_blocks, attention_heads,
            dropout, groups: the :class:`~.unet.UNet`.
        num_train_timesteps: T.
        beta_schedule: ``"linear"``, ``"cosine"`` or ``"sigmoid"`` (:mod:`.schedules`).
        beta_start, beta_end: range of the linear and sigmoid schedules.
        prediction_type: the UNet predicts ``"epsilon"``, ``"sample"`` (x_0) or ``"v_prediction"``.
        min_snr_gamma: min-SNR-γ loss weighting (Hang et al. 2023); None trains unweighted.
        lr, weight_decay, warmup_steps: AdamW and a linear warm-up of the learning rate.
        ema_decay: EMA decay per optimizer step; 0 turns the EMA off.
        ema_warmup: ramp the decay as diffusers' ``EMAModel`` does, min(ema_decay, (1 + n) / (10 + n))
            at the n-th update, so short runs do not lean on the first weights; False keeps it
            constant (Lightning's ``EMAWeightAveraging``).
        sampler, sample_steps, eta, variance_type, timestep_spacing, clip_sample,
            clip_sample_range, set_alpha_to_one: defaults of :meth:`sample` (diffusers' meanings).
        impl: the ops' implementation (``"auto"``, ``"ref"``, ``"ext"``): the fused step, and on the
            CPU the UNet's sampling forward (:meth:`.unet.UNet.frozen`).
        compile_unet: default of :meth:`sample`'s ``compile_unet``: whether sampling runs the UNet
            compiled by ``torch.compile``; None compiles it on CUDA (where Triton is installed).
    """

    input_format = "symmetric"

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_heads: int = 4,
        dropout: float = 0.0,
        groups: int = 8,
        num_train_timesteps: int = 1000,
        beta_schedule: BetaSchedule = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction_type: S.PredictionType = "epsilon",
        min_snr_gamma: float | None = None,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        ema_decay: float = 0.999,
        ema_warmup: bool = False,
        sampler: S.SamplerName = "ddim",
        sample_steps: int = 50,
        eta: float = 0.0,
        variance_type: S.VarianceType = "fixed_small",
        timestep_spacing: S.TimestepSpacing = "leading",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        impl: Impl = "auto",
        compile_unet: bool | None = None,
    ) -> None:
        super().__init__()
        S.check_count("num_train_timesteps", num_train_timesteps)  # (100.0 failed in torch.linspace)
        S.check_option("beta_schedule", beta_schedule, BETA_SCHEDULES)
        S.check_option("prediction_type", prediction_type, S.PREDICTION_TYPES)
        S.check_option("sampler", sampler, S.SAMPLERS)
        S.check_option("variance_type", variance_type, S.VARIANCE_TYPES)
        S.check_option("timestep_spacing", timestep_spacing, S.TIMESTEP_SPACINGS)
        S.check_option("impl", impl, IMPLS)
        for name, value in (("beta_start", beta_start), ("beta_end", beta_end), ("ema_decay", ema_decay),
                            ("clip_sample_range", clip_sample_range)):
            check_real(name, value)
        if min_snr_gamma is not None:
            check_real("min_snr_gamma", min_snr_gamma)
        S.check_steps(sample_steps, num_train_timesteps)
        S.check_eta(eta)
        if min_snr_gamma is not None and not min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be > 0 or None, got {min_snr_gamma!r}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
        if not (math.isfinite(check_real("lr", lr)) and lr > 0):  # (AdamW refused it only when fit began)
            raise ValueError(f"lr={lr!r} must be a finite number > 0")
        if not (math.isfinite(check_real("weight_decay", weight_decay)) and weight_decay >= 0):
            raise ValueError(f"weight_decay={weight_decay!r} must be a finite number >= 0")
        check_integer("warmup_steps", warmup_steps, 0)  # (a negative count warmed up nothing, silently)
        for name, value in (("ema_warmup", ema_warmup), ("clip_sample", clip_sample),
                            ("set_alpha_to_one", set_alpha_to_one)):
            if not isinstance(value, bool):  # (the string "no" was True)
                raise ValueError(f"{name} must be True or False, got {value!r}")
        if not clip_sample_range > 0:
            raise ValueError(f"clip_sample_range must be > 0, got {clip_sample_range!r}")
        _check_compile_unet(compile_unet)
        save_hparams_keeping_configs(self, inspect.currentframe())  # (a subclass's nn.Module arguments left out)
        self.unet = UNet(in_channels, image_size, base_channels, channel_mults, num_res_blocks,
                         attention_heads, dropout, groups)
        betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        abar = alphas_cumprod(betas)
        if not torch.isfinite(abar.min().rsqrt().float()):  # x̂₀ = x / √ᾱ_t - ...: NaN images
            raise ValueError(
                f"beta_schedule={beta_schedule!r} with beta_end={beta_end} over {num_train_timesteps} timesteps "
                f"drives alphas_cumprod down to {float(abar.min()):.3g}, where 1/sqrt(alphas_cumprod) overflows "
                "float32 and sampling gives NaN: lower beta_end or num_train_timesteps")
        self.register_buffer("betas", betas.float(), persistent=False)  # [T]
        self.register_buffer("alphas_cumprod", abar.float(), persistent=False)  # [T]
        self.eval_means = eval_means(("loss",))  # val/loss and test/loss

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Diffusion:
        """``nn.Module._apply`` (``.to``, ``.half()``, Lightning's ``bf16-true``), except that the
        schedule stays at least float32: in bf16 ᾱ_t rounds to 1 for the first 10 timesteps of
        the linear schedule (trained without noise) and 1 - ᾱ_t is off by up to 100% below t = 100,
        while sampling uses the exact schedule."""
        schedule = {name: self._buffers[name] for name in ("betas", "alphas_cumprod") if name in self._buffers}
        super()._apply(fn, recurse)
        for name, old in schedule.items():
            new = self._buffers[name]
            if new is not None and old is not None and new.is_floating_point() \
                    and torch.finfo(new.dtype).eps > torch.finfo(torch.float32).eps:
                self._buffers[name] = old.float().to(new.device)
        return self

    # ------------------------------------------------------------------ training

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """The UNet's prediction [N, C, S, S] for noisy images x [N, C, S, S] at timesteps t [N]."""
        return self.unet(x, t)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (Ho et al. 2020, eq. 4). Shapes [N, C, S, S], t [N] in
        [0, num_train_timesteps) (a negative t indexed from the end, silently: now an error, on
        CUDA a device-side assertion, without a host synchronisation)."""
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:  # (float t: an IndexError)
            raise ValueError(f"q_sample: timesteps must be integers, got dtype {t.dtype}")
        if t.shape != (x0.shape[0],) or noise.shape != x0.shape:  # (ATen's broadcast errors)
            raise ValueError(f"q_sample: need t [N] and noise of x0's shape {tuple(x0.shape)}, got t "
                             f"{tuple(t.shape)} and noise {tuple(noise.shape)}")
        inside = ((t >= 0) & (t < self.hparams.num_train_timesteps)).all()
        if t.device.type == "cpu" and not bool(inside):
            raise ValueError(f"q_sample: timesteps must be in [0, {self.hparams.num_train_timesteps}), "
                             f"got values in [{int(t.min())}, {int(t.max())}]")
        if t.device.type != "cpu":
            torch._assert_async(inside, "q_sample: timesteps outside [0, num_train_timesteps)")
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def _target_and_weight(self, x0: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Regression target of the prediction type and the per-sample loss weight [N]."""
        abar = self.alphas_cumprod[t]
        a, s = abar.sqrt().view(-1, 1, 1, 1), (1 - abar).sqrt().view(-1, 1, 1, 1)
        kind = self.hparams.prediction_type
        target = noise if kind == "epsilon" else x0 if kind == "sample" else a * noise - s * x0
        gamma = self.hparams.min_snr_gamma
        if gamma is None:
            return target, torch.ones_like(abar)
        # min-SNR-γ (Hang et al. 2023, eq. 9 and §3.4 for ε and v targets)
        snr = abar / (1 - abar)
        clipped = snr.clamp(max=gamma)
        # ε: min(snr, γ) / snr written as min(γ / snr, 1), its limit 1 where ᾱ_t underflows to 0
        # in float32 (0 / 0 made the loss NaN; diffusers sets these weights to 1 too)
        weight = (gamma / snr).clamp(max=1.0) if kind == "epsilon" else clipped if kind == "sample" \
            else clipped / (snr + 1)
        return target, weight

    def _shared_step(self, batch: Any, stage: str, batch_idx: int = 0) -> Tensor:
        x0 = batch[0] if isinstance(batch, (tuple, list)) else batch
        if hasattr(self.unet, "check_input"):  # (a subclass's own denoiser may not have it)
            self.unet.check_input(x0)
        if not x0.is_floating_point():  # (an integer batch failed deep in randn_like)
            raise ValueError(f"Diffusion expects floating-point images in [-1, 1], got dtype {x0.dtype}")
        n = x0.shape[0]
        if n == 0:  # (the mean of no losses was a NaN loss)
            raise ValueError(f"Diffusion {stage} batch is empty, shape {tuple(x0.shape)}")
        if stage == "train":
            t = torch.randint(0, self.hparams.num_train_timesteps, (n,), device=x0.device)
            noise = torch.randn_like(x0)
        else:  # fixed draws per image, so that validation losses of different epochs compare
            t, noise = validation_draws(x0, self.hparams.num_train_timesteps)
        losses = self._image_losses(x0, t, noise)
        loss = losses.mean()
        self._stop_if_not_finite(stage, loss, x0)
        if stage == "train":
            self.log("train/loss", loss, prog_bar=True, batch_size=n, sync_dist=sync_train_metrics(self))
        else:  # the mean over the whole set, under DDP each image once (see lightning_genmodels/ddp.py)
            log_row_means(self, self.eval_means, stage, {"loss": losses}, batch_idx)
        return loss

    def on_train_start(self) -> None:
        seed_ranks_apart(self)  # under DDP each rank draws its own noise

    def _stop_if_not_finite(self, stage: str, loss: Tensor, x0: Tensor) -> None:
        """Raise FloatingPointError (on every rank together) before a NaN/inf loss reaches the
        weights (they had turned NaN silently), naming the batch's NaN/inf values if it holds any,
        else the learning rate. One scalar host sync per step, as the GAN's check."""
        if finite_on_every_rank(self, loss):
            return
        here = bool(torch.isfinite(loss))
        bad = int((~torch.isfinite(x0)).sum())
        advice = (f"this rank's batch holds {bad} NaN or infinite values: check the data" if bad
                  else "another rank's loss is not finite (its error names the cause)" if here
                  else "try a lower lr")
        raise FloatingPointError(f"Diffusion {stage}/loss is {loss.item()} (not finite on at least one rank) at "
                                 f"epoch {self.current_epoch}, global step {self.global_step}; stopped before the "
                                 f"update: {advice}")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val", batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test", batch_idx)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """``Trainer.predict``: each image's weighted denoising loss [B] at its validation draws
        (:func:`validation_draws`), a per-image score; images come from :meth:`sample`."""
        x0 = batch[0] if isinstance(batch, (tuple, list)) else batch
        return {"loss": self._image_losses(x0, *validation_draws(x0, self.hparams.num_train_timesteps))}

    def _image_losses(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The weighted MSE [N] of each image's prediction at timesteps t with noise."""
        target, weight = self._target_and_weight(x0, noise, t)
        mse = F.mse_loss(self(self.q_sample(x0, t, noise), t), target, reduction="none").flatten(1).mean(1)
        return weight * mse

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)  # a subclass's too
        warmup = max(int(hp.warmup_steps), 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_callbacks(self) -> list[Callback]:
        """The EMA of the weights (no buffers: ours are constants)."""
        if self.hparams.ema_decay == 0:
            return []
        warmup = self.hparams.get("ema_warmup", False)  # (absent from older checkpoints' hparams)
        return [_EMA(decay=self.hparams.ema_decay, use_buffers=False, warmup=warmup)]

    # ------------------------------------------------------------------ sampling

    def coefficient_table(
        self, steps: int, sampler: str, eta: float, timestep_spacing: str | None = None,
        variance_type: str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(visited timesteps [steps] int64, coefficient table [T, 6] float32) on the device."""
        hp = self.hparams
        steps = S.check_steps(steps, hp.num_train_timesteps)
        spacing = hp.timestep_spacing if timestep_spacing is None else timestep_spacing  # ("" is refused, not the default)
        timesteps = S.inference_timesteps(hp.num_train_timesteps, steps, spacing)
        betas = make_betas(hp.beta_schedule, hp.num_train_timesteps, hp.beta_start, hp.beta_end)
        table = S.step_coefficients(
            alphas_cumprod(betas), timesteps, sampler, hp.prediction_type,
            hp.variance_type if variance_type is None else variance_type, eta, hp.set_alpha_to_one,
        )
        return timesteps.to(self.device), table.float().to(self.device)

    def sample(
        self,
        n: int,
        steps: int | None = None,
        sampler: S.SamplerName | None = None,
        eta: float | None = None,
        seed: int = 0,
        *,
        timestep_spacing: S.TimestepSpacing | None = None,
        variance_type: S.VarianceType | None = None,
        cuda_graph: bool = True,
        threads: int | None = None,
        compile_unet: bool | None = None,
        distributed: bool | None = None,
    ) -> Tensor:
        """Draw ``n`` images [n, C, S, S] in [0, 1] by DDPM or DDIM from pure noise.

        Deterministic for a seed: image i depends only on (seed, i), so under DDP each rank draws
        its own contiguous share (:func:`.samplers.shard`) and the shares are gathered: n images
        over R ranks equal the n images of one process (to float rounding). The loop runs under
        ``torch.inference_mode``; the images come back as an ordinary tensor (not an inference
        tensor, which refuses in-place edits outside inference mode).

        Args:
            n: number of images.
            steps: sampler steps in [1, num_train_timesteps] (default ``sample_steps``).
            sampler: ``"ddpm"`` or ``"ddim"`` (default the module's).
            eta: DDIM's η in [0, 1] (default the module's).
            seed: noise seed in [0, 2**64).
            timestep_spacing, variance_type: override the module's defaults.
            cuda_graph: on CUDA, replay each step as a captured CUDA graph after a warm-up.
            threads: on the CPU, split the images over this many threads of one intra-op thread
                each (default: torch's thread count, each thread taking at least one image where
                the UNet runs as one op, else at least 4; the same images to float rounding; see
                :func:`.samplers.run_in_threads`).
            compile_unet: run the UNet compiled by ``torch.compile`` (inductor, ``dynamic=False``:
                one compilation per batch size, reused by later calls): inductor fuses its
                GroupNorm, SiLU, residual adds and upsampling copies, which dominate at large
                batches on a GPU. Default the module's ``compile_unet``; None: on CUDA (if Triton
                is installed), not on the CPU (tens of seconds of compiling on 2 cores); if
                compiling fails there, one RuntimeWarning and the eager UNet from then on (an
                explicit True raises). The compiled UNet runs on one intra-op thread team
                (``threads`` is ignored).
            distributed: split the images over the ranks of the default process group and gather
                them (a collective: every rank must call it with the same arguments). None
                (default): while the module's Trainer runs with more than one process (its
                hooks and callbacks, e.g. SampleGrid), not otherwise (a script's
                ``if trainer.is_global_zero: model.sample(...)`` after fit draws alone).
        """
        hp = self.hparams
        n, seed = S.check_count("n", n), check_seed(seed)
        sampler = S.check_option("sampler", hp.sampler if sampler is None else sampler, S.SAMPLERS)
        eta = S.check_eta(hp.eta if eta is None else eta)
        steps = S.check_steps(hp.sample_steps if steps is None else steps, hp.num_train_timesteps)
        timesteps, table = self.coefficient_table(steps, sampler, eta, timestep_spacing, variance_type)
        world, rank = self._sampling_world(distributed)
        first, count = S.shard(int(n), rank, world)
        shape = (count, hp.in_channels, hp.image_size, hp.image_size)
        clip = float(hp.clip_sample_range) if hp.clip_sample else 0.0

        def loop(model: torch.nn.Module, threads: int) -> Tensor:
            return S.sample_loop(model, shape, first, timesteps, table, seed, clip, hp.impl,
                                 cuda_graph and self.device.type == "cuda", threads if self.device.type == "cpu" else 1)

        if count == 0:  # n < world: this rank only joins the gather
            images = torch.empty(shape, device=self.device)
            return _gather_shares(images, n, world)
        frozen = self.unet.frozen(hp.impl) if isinstance(self.unet, UNet) else contextlib.nullcontext()
        with eval_mode(self._denoiser()), frozen, torch.inference_mode():
            op = isinstance(self.unet, UNet) and self.unet.runs_op(self.device)
            threads = S.cpu_threads(count, threads, 1 if op else S.MIN_IMAGES_PER_THREAD)
            x = self._sample_with(loop, threads, compile_unet)
        images = ((x + 1) / 2).clamp(0, 1)  # outside inference mode: an ordinary tensor, not an inference tensor
        return _gather_shares(images, n, world) if world > 1 else images

    def _sampling_world(self, distributed: bool | None) -> tuple[int, int]:
        """(world size, rank) that ``sample`` splits over: (1, 0) unless ``distributed`` says so
        or, for None, the module's Trainer is running with more than one process."""
        if distributed is None:
            trainer = self._trainer
            distributed = (trainer is not None and trainer.state.status == TrainerStatus.RUNNING
                           and trainer.world_size > 1)
        if not distributed:
            return 1, 0
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("Diffusion.sample(distributed=True) needs an initialised default process group")
        return dist.get_world_size(), dist.get_rank()

    def _sample_with(self, loop: Callable[[torch.nn.Module, int], Tensor], threads: int,
                     compile_unet: bool | None) -> Tensor:
        """``loop`` over the UNet, compiled or not as ``compile_unet`` and the machine decide."""
        choice = self._compile_choice(compile_unet)
        if choice is False or (choice is None and not self._auto_compile()):
            return loop(self._denoiser(), threads)
        from torch._dynamo.exc import BackendCompilerFailed

        try:
            with warnings.catch_warnings():  # inductor's advice to enable TF32 matmuls, once per compilation
                warnings.filterwarnings("ignore", "TensorFloat32 tensor cores", UserWarning)
                return loop(self._compiled_unet(), 1)
        except BackendCompilerFailed as exc:  # Triton or inductor failed on this machine
            if choice is not None:
                raise
            self._compile_failed = True
            reason = getattr(exc, "inner_exception", None) or exc
            warnings.warn(f"Diffusion.sample: compiling the UNet failed, sampling with the eager UNet from now on "
                          f"(compile_unet=False silences this): {type(reason).__name__}: {reason}",
                          RuntimeWarning, stacklevel=4)
        return loop(self._denoiser(), threads)

    def _denoiser(self) -> torch.nn.Module:
        """What sampling calls as ``model(x, t)``: the UNet, or this module where a subclass
        overrides ``forward`` (training calls ``self(x, t)``; sampling called ``self.unet``, so a
        subclass's forward, e.g. a scale outside the network, was left out of its samples)."""
        return self if is_overridden("forward", self, Diffusion) else self.unet

    def _compile_choice(self, compile_unet: bool | None) -> bool | None:
        return _check_compile_unet(self.hparams.get("compile_unet") if compile_unet is None else compile_unet)

    def _auto_compile(self) -> bool:
        """compile_unet=None: on CUDA, where torch.compile can run (Triton installed, a Python that
        Dynamo supports), unless it already failed for this module."""
        from torch._dynamo import is_dynamo_supported
        from torch.utils._triton import has_triton

        failed = getattr(self, "_compile_failed", False)
        return self.device.type == "cuda" and not failed and has_triton() and is_dynamo_supported()

    def _compiled_unet(self) -> torch.nn.Module:
        return torch.compile(self._denoiser(), dynamic=False)  # compiled code is cached on its forward

    def sample_images(self, n: int, seed: int = 0, distributed: bool | None = None) -> Tensor:
        """``n`` images [n, C, S, S] in [0, 1] with the module's default sampler settings
        (``distributed`` as :meth:`sample`'s), what callbacks draw: while fitting, from the
        averaged weights of the Trainer's weight averaging (our EMA), as validation and the model
        after fit use them (a SampleGrid written at a training epoch's end drew from the raw
        weights)."""
        with self._averaged_weights():
            return self.sample(n, seed=seed, distributed=distributed)

    @contextlib.contextmanager
    def _averaged_weights(self) -> Any:
        """Swap the weight average in for the block while the Trainer trains (validation and the
        end of fit already hold it; swapping twice restores the raw weights)."""
        trainer = self._trainer
        average = None
        if trainer is not None and trainer.training:
            average = next((c for c in trainer.callbacks
                            if isinstance(c, WeightAveraging) and c._average_model is not None), None)
        if average is None:
            yield
            return
        average._swap_models(self)
        try:
            yield
        finally:
            average._swap_models(self)


VALIDATION_SEED = 1234


def validation_draws(x0: Tensor, num_train_timesteps: int) -> tuple[Tensor, Tensor]:
    """The fixed timestep [N] and noise (x0's shape) of each image of a validation batch, keyed
    by its pixels quantised to 8 bits: an image gets the same draws in any batch, batch size or
    number of processes (they depended on the batch size, so on the last batch and the world
    size). Keys hash the pixels with fixed random int64 weights; the noise is Philox row
    ``key mod 2**40`` of :func:`~..ops.philox.philox_normal_rows`."""
    flat = x0.detach().flatten(1)
    pixels = ((flat.float() + 1) * 127.5).round().clamp(0, 255).long()
    key = (pixels * _pixel_weights(flat.shape[1], x0.device)).sum(1)  # < 255 D 2^31: no overflow below D ~ 1.6e7
    noise = philox_normal_rows(VALIDATION_SEED, key % 2**40, flat.shape[1]).view_as(x0).to(x0.dtype)
    return key % num_train_timesteps, noise


@functools.lru_cache(maxsize=8)
def _pixel_weights(d: int, device: torch.device) -> Tensor:
    """validation_draws' fixed random hash weights [d] int64, made once per (d, device)."""
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    return torch.randint(1, 2**31, (d,), generator=generator).to(device)


def ramped_ema_avg_fn(decay: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``AveragedModel``'s ``avg_fn`` of diffusers' ``EMAModel`` (``use_ema_warmup=False``): the
    decay at the update after n averaged is min(decay, (1 + n) / (10 + n)), a tensor on the
    device (no host synchronisation)."""

    def update(average: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        d = ((1.0 + num_averaged) / (10.0 + num_averaged)).clamp(max=decay).to(average.dtype)
        return d * average + (1.0 - d) * current

    return update


class _EMA(EMAWeightAveraging):
    """Lightning's EMA, which also leaves the average in the model when a fit resumed from a
    checkpoint has no step left (the fit loop then skips on_train_end, where the average is
    copied, and the model kept the checkpoint's raw weights); ``warmup`` ramps the decay
    (:func:`ramped_ema_avg_fn`)."""

    def __init__(self, decay: float, use_buffers: bool, warmup: bool = False) -> None:
        super().__init__(decay=decay, use_buffers=use_buffers)
        if warmup:
            self._kwargs["avg_fn"] = ramped_ema_avg_fn(decay)

    def on_train_start(self, trainer: Any, pl_module: LightningModule) -> None:
        self._copied = False
        super().on_train_start(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._copied = True

    def on_fit_end(self, trainer: Any, pl_module: LightningModule) -> None:
        if not getattr(self, "_copied", False) and self._average_model is not None:
            self._copy_average_to_current(pl_module)
        super().on_fit_end(trainer, pl_module)


def _check_compile_unet(value: bool | None) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"compile_unet must be True, False or None, got {value!r}")
    return value


def _gather_shares(images: Tensor, n: int, world: int) -> Tensor:
    """Concatenate every rank's share (padded to equal size for all_gather) in rank order."""
    counts = [S.shard(n, r, world)[1] for r in range(world)]
    padded = images.new_zeros((max(counts), *images.shape[1:]))
    padded[: images.shape[0]] = images
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])
