"""GAN: a generator and a discriminator trained by manual optimisation, with an EMA generator
for sampling (Goodfellow et al. 2014; DCGAN, Radford et al. 2016).

Training follows Lightning 2's manual optimisation: each batch takes one discriminator step and,
every ``n_critic`` batches (of the run, not of the epoch), one generator step (WGAN, Arjovsky
et al. 2017, Algorithm 1), each between ``toggle_optimizer`` and ``untoggle_optimizer``. Note
that Lightning's ``global_step`` counts optimizer steps, so it grows by up to 2 per batch.
"""
from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Literal, get_args

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..ddp import eval_batch_weights, eval_means, log_row_means
from ..module_utils import (
    as_integer, broadcast_buffers, check_integer, check_latents, check_real, eval_mode, finite_on_every_rank,
    save_hparams_keeping_configs, seed_ranks_apart,
)
from ..ops.philox import check_seed
from ..train_log import log_this_step, sync_train_metrics
from . import losses
from .losses import LOSSES, Loss
from .nets import IMAGE_SIZE, Discriminator, Generator, check_images, dcgan_init

WeightsInit = Literal["pytorch", "dcgan"]
WEIGHTS_INITS: tuple[str, ...] = get_args(WeightsInit)


class GAN(LightningModule):
    """A GAN on [B, C, 28, 28] images in [-1, 1] (``input_format = "symmetric"``).

    Args:
        latent_dim: size of the noise z ~ N(0, I).
        channels: image channels (1 for MNIST).
        features: width F of the default DCGAN networks (see ``nets.py``).
        generator: replaces the default Generator: z [B, latent_dim] -> [B, channels, 28, 28]
            in [-1, 1].
        discriminator: replaces the default Discriminator: [B, channels, 28, 28] -> logits [B].
        loss: ``non_saturating``, ``hinge`` or ``wgan_gp`` (critic loss plus gradient penalty).
        gp_weight: λ of the gradient penalty (Gulrajani et al. 2017 use 10); ``wgan_gp`` only.
        spectral_norm: spectral normalisation of the default discriminator (Miyato et al. 2018).
        n_critic: discriminator steps per generator step (>= 1).
        lr_g, lr_d: Adam learning rates of the generator and the discriminator.
        betas_g, betas_d: Adam betas of each player (DCGAN: (0.5, 0.999)).
        ema_decay: decay of the generator's exponential moving average, used by ``sample``;
            None samples from the raw generator.
        weights_init: ``"pytorch"`` (PyTorch's layer defaults) or ``"dcgan"`` (the DCGAN paper's
            N(0, 0.02), as Lightning-Bolts' DCGAN; :func:`~lightning_genmodels.gan.nets.dcgan_init`)
            for the default networks; networks passed in keep their weights.
    """

    input_format = "symmetric"

    def __init__(
        self,
        latent_dim: int = 64,
        channels: int = 1,
        features: int = 64,
        generator: nn.Module | None = None,
        discriminator: nn.Module | None = None,
        loss: Loss = "non_saturating",
        gp_weight: float = 10.0,
        spectral_norm: bool = False,
        n_critic: int = 1,
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas_g: tuple[float, float] = (0.5, 0.999),
        betas_d: tuple[float, float] = (0.5, 0.999),
        ema_decay: float | None = 0.999,
        weights_init: WeightsInit = "pytorch",
    ) -> None:
        super().__init__()
        _check_options(latent_dim, channels, features, loss, gp_weight, n_critic, lr_g, lr_d, betas_g, betas_d,
                       ema_decay, weights_init)
        save_hparams_keeping_configs(self, inspect.currentframe())
        self.automatic_optimization = False
        latent_dim, channels, features = int(latent_dim), int(channels), int(features)
        self.latent_dim, self.ema_decay = latent_dim, ema_decay
        self.image_shape = (channels, IMAGE_SIZE, IMAGE_SIZE)
        init = dcgan_init if weights_init == "dcgan" else (lambda net: net)
        self.generator = generator if generator is not None else init(Generator(latent_dim, channels, features))
        self.discriminator = (
            discriminator if discriminator is not None else init(Discriminator(channels, features, spectral_norm))
        )
        self._check_networks()
        self._g_loss: Tensor | None = None  # the latest generator loss, logged with d_loss
        self.eval_means = eval_means(("d_loss", "g_loss"))  # {stage}/d_loss and g_loss, see ddp.py
        self.generator_ema: AveragedModel | None = None
        if ema_decay is not None:
            self._build_ema()

    # ----- networks -------------------------------------------------------------------------
    def _check_networks(self) -> None:
        """One tiny forward pass of each network, to fail at construction on a mismatch."""
        with torch.no_grad(), eval_mode(self.generator), eval_mode(self.discriminator):
            images = self.generator(torch.zeros(2, self.latent_dim))
            if tuple(images.shape) != (2, *self.image_shape):
                raise ValueError(
                    f"generator maps z [2, {self.latent_dim}] to shape {tuple(images.shape)}, "
                    f"expected {(2, *self.image_shape)}"
                )
            logits = self.discriminator(images)
            if tuple(logits.shape) != (2,):
                raise ValueError(f"discriminator maps [2, ...] images to shape {tuple(logits.shape)}, expected (2,)")

    # ----- the EMA generator -----------------------------------------------------------------
    def _build_ema(self) -> None:
        """A fresh EMA copy of the current generator. It is a submodule, so it is saved in
        checkpoints and moved with the module; its parameters never get gradients (DDP must not
        wait for them)."""
        self.generator_ema = AveragedModel(
            self.generator, multi_avg_fn=get_ema_multi_avg_fn(self.ema_decay), use_buffers=True
        )
        self.generator_ema.requires_grad_(False)

    def _refresh_ema(self) -> None:
        """Rebuild the EMA copy where it no longer has the generator's parameter and buffer names
        and shapes: a subclass may assign ``self.generator`` after ``super().__init__()``."""
        def layout(net: nn.Module) -> list[tuple[str, torch.Size]]:
            return [(name, t.shape) for name, t in (*net.named_parameters(), *net.named_buffers())]

        if self.generator_ema is not None and layout(self.generator_ema.module) != layout(self.generator):
            self._build_ema()

    def setup(self, stage: str) -> None:
        self._refresh_ema()  # before the Trainer restores a checkpoint (resume) or wraps in DDP

    def on_validation_start(self) -> None:
        broadcast_buffers(self)  # rank 0's running statistics: FIDCallback's ranks sample one model

    def on_train_end(self) -> None:
        broadcast_buffers(self)  # every rank ends with rank 0's model, which its checkpoints hold

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._refresh_ema()  # before the checkpoint's EMA weights are loaded into it

    def on_train_start(self) -> None:
        """Check what ``configure_optimizers`` gave our ``training_step``: the two players'
        optimizers (one, as LightningCLI's ``--optimizer`` puts over all parameters, failed
        inside it with "cannot unpack non-iterable LightningAdam object"); and warn of LR
        schedulers that nothing steps: Lightning steps none under manual optimisation, nor does
        our ``training_step``, so a subclass's kept its learning rates, silently. Quiet where a
        subclass overrides a hook that could step them (``self.lr_schedulers()``). Then, under DDP,
        each rank draws its own z from here on (they drew the same fakes).
        """
        count = len(self.trainer.optimizers)
        if count != 2 and not is_overridden("training_step", self, GAN):
            raise ValueError(
                f"{type(self).__name__} needs two optimizers from configure_optimizers, the generator's then the "
                f"discriminator's; got {count}. (LightningCLI's --optimizer replaces them with one over both "
                "players: set lr_g, lr_d, betas_g and betas_d instead, or override configure_optimizers.)"
            )
        hooks = ("training_step", "on_train_batch_end", "on_train_epoch_end", "on_validation_epoch_end")
        if self.trainer.lr_scheduler_configs and not any(is_overridden(h, self, GAN) for h in hooks):
            rank_zero_warn(
                f"{type(self).__name__}.configure_optimizers returned LR schedulers, but the GAN trains by manual "
                "optimisation, where Lightning steps none and GAN.training_step does not either: step them "
                "yourself (self.lr_schedulers()), e.g. in on_train_epoch_end"
            )
        seed_ranks_apart(self)

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """z ~ N(0, I), [n, latent_dim] on the module's device in its dtype (bf16 after a
        bf16-true fit); drawn on the CPU in float32 when a ``generator`` (CPU) is given, so
        seeded noise is the same on every device."""
        if generator is None:
            return torch.randn(n, self.latent_dim, device=self.device, dtype=self.dtype)
        return torch.randn(n, self.latent_dim, generator=generator).to(self.device, self.dtype)

    # ----- losses (override these to change the game) ---------------------------------------
    def discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        """The discriminator's loss on real images and (detached) generated ones, [B, C, H, W] each."""
        loss = losses.discriminator_loss(self.hparams.loss, self.discriminator(real), self.discriminator(fake))
        if self.hparams.loss == "wgan_gp":
            loss = loss + self.hparams.gp_weight * losses.gradient_penalty(self.discriminator, real, fake)
        return loss

    def generator_loss(self, fake: Tensor) -> Tensor:
        """The generator's loss on generated images [B, C, H, W] (with the graph to G)."""
        return losses.generator_loss(self.hparams.loss, self.discriminator(fake))

    # ----- training ---------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=hp.lr_g, betas=tuple(hp.betas_g))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr_d, betas=tuple(hp.betas_d))
        return [opt_g, opt_d]

    def _real_images(self, batch: Any) -> Tensor:
        real = batch[0] if isinstance(batch, (tuple, list)) else batch
        check_images(real, self.image_shape[0], type(self).__name__)
        if real.shape[0] == 0:  # (its NaN losses blamed the learning rates)
            raise ValueError(f"{type(self).__name__} got an empty batch of images, shape {tuple(real.shape)}")
        return real

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = self._real_images(batch)
        opt_g, opt_d = self.optimizers()

        # 1. discriminator step on real images and fresh, detached fakes
        self.toggle_optimizer(opt_d)
        with torch.no_grad():
            fake = self.generator(self.noise(real.shape[0]))
        d_loss = self.discriminator_loss(real, fake)
        self._stop_if_not_finite("discriminator", d_loss, real)
        opt_d.zero_grad(set_to_none=True)
        self._backward(d_loss, self.discriminator)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        # 2. generator step every n_critic batches of the run, then the EMA update (counted across
        #    epochs: batch_idx restarts each epoch, so an epoch shorter than n_critic, or not a
        #    multiple of it, would skip generator steps)
        if (self.trainer.fit_loop.epoch_loop.total_batch_idx + 1) % self.hparams.n_critic == 0:
            self.toggle_optimizer(opt_g)
            g_loss = self.generator_loss(self.generator(self.noise(real.shape[0])))
            self._stop_if_not_finite("generator", g_loss, real)
            opt_g.zero_grad(set_to_none=True)
            self._backward(g_loss, self.generator)
            opt_g.step()
            self.untoggle_optimizer(opt_g)
            if self.generator_ema is not None:
                self.generator_ema.update_parameters(self.generator)
            self._g_loss = g_loss.detach()

        # 3. the losses, on the batches whose metrics Lightning writes (g_loss: the latest step's)
        if log_this_step(self, batch_idx):
            sync = sync_train_metrics(self)
            self.log("train/d_loss", d_loss.detach(), prog_bar=True, sync_dist=sync)
            if self._g_loss is not None:
                self.log("train/g_loss", self._g_loss, prog_bar=True, sync_dist=sync)

    def _backward(self, loss: Tensor, player: nn.Module) -> None:
        """``manual_backward(loss)``; under DDP, then average ``player``'s gradients over ranks.

        Lightning wraps the whole module (both players) in one DistributedDataParallel, whose
        reducer expects every parameter to get a gradient in every backward pass; here each pass
        updates one player, so with ``find_unused_parameters=False`` DDP would raise (Lightning
        issue #20866). So the backward runs under ``no_sync`` and only the stepping player's
        gradients are all-reduced, in one flat buffer.
        """
        ddp = self.trainer.model
        if not isinstance(ddp, DistributedDataParallel):
            self.manual_backward(loss)
            return
        with ddp.no_sync():
            self.manual_backward(loss)
        grads = [p.grad for p in player.parameters() if p.grad is not None]
        flat = self.trainer.strategy.reduce(_flatten_dense_tensors(grads), reduce_op="mean")
        for grad, mean in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(mean)

    def _stop_if_not_finite(self, player: str, loss: Tensor, real: Tensor) -> None:
        """Raise FloatingPointError (on every rank together) before a NaN/inf loss reaches the
        weights, naming the real batch ``real`` if it holds NaN/inf (the learning rates
        otherwise); checkpoints already written are left as they are."""
        if finite_on_every_rank(self, loss):
            return
        ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or getattr(
            self.trainer.checkpoint_callback, "best_model_path", ""
        )
        kept = f"the last good checkpoint is {ckpt}" if ckpt else "no checkpoint had been written"
        bad = int((~torch.isfinite(real)).sum())
        advice = (f"This rank's batch of real images holds {bad} NaN or infinite values: check the data."
                  if bad else "Another rank's loss is not finite (its error names the cause)."
                  if bool(torch.isfinite(loss))
                  else "Try lower lr_g/lr_d, loss='hinge' or spectral_norm=True.")
        raise FloatingPointError(
            f"GAN {player} loss is {loss.item()} (not finite on at least one rank) at epoch "
            f"{self.current_epoch}, global step {self.global_step}; training stopped before the "
            f"update, {kept}. {advice}"
        )

    # ----- validation and test: both players' losses on held-out real images -----------------
    def _shared_step(self, batch: Any, stage: str, batch_idx: int = 0) -> Tensor:
        """Log ``{stage}/d_loss`` and ``{stage}/g_loss`` on held-out images [B, C, 28, 28] and
        fresh fakes from the raw generator (training's manual steps cannot share this); each
        batch's losses weigh by its images, under DDP without those DistributedSampler repeats."""
        real = self._real_images(batch)
        n = real.shape[0]
        weights = eval_batch_weights(self, batch_idx, n)
        if weights is not None:
            real = real[weights.to(real.device) > 0]
        if real.shape[0] == 0:  # repeats only: the rank still logs (the epoch's sync), with weight 0
            d_loss = g_loss = torch.zeros((), device=self.device)
        else:
            fake = self.generator(self.noise(real.shape[0]))
            g_loss = self.generator_loss(fake)
            # the same losses as in training; the gradient penalty differentiates the critic, which
            # needs autograd back on (Lightning evaluates in inference mode) and non-inference copies
            with torch.inference_mode(False), torch.enable_grad():
                d_loss = self.discriminator_loss(real.clone(), fake.clone()).detach()
        self._check_eval_losses(stage, d_loss, g_loss, real)
        log_row_means(self, self.eval_means, stage, {"d_loss": d_loss.expand(n), "g_loss": g_loss.expand(n)},
                      batch_idx)
        return d_loss

    def _check_eval_losses(self, stage: str, d_loss: Tensor, g_loss: Tensor, real: Tensor) -> None:
        """ValueError (on every rank together) where a held-out loss is NaN/inf (it was logged
        silently), naming the batch's NaN/inf values if it holds any."""
        if finite_on_every_rank(self, torch.stack((d_loss, g_loss))):
            return
        bad = int((~torch.isfinite(real)).sum())
        cause = (f"this rank's batch of real images holds {bad} NaN or infinite values: check the data" if bad
                 else "the networks' outputs are not finite")
        raise ValueError(f"GAN {stage} losses are d_loss={d_loss.item()}, g_loss={g_loss.item()} "
                         f"(not finite on at least one rank): {cause}")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val", batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test", batch_idx)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """``Trainer.predict``: the discriminator's logits [B] of the batch's images (how real
        it finds them); images come from :meth:`sample`."""
        return {"logits": self.discriminator(self._real_images(batch))}

    # ----- sampling ---------------------------------------------------------------------------
    @property
    def sampler(self) -> nn.Module:
        """The network ``sample`` uses: the EMA generator once it has averaged a step (rebuilt
        first if the generator was replaced), else the generator. Before its first update the EMA
        is the copy made at construction, which weights loaded into the generator since (a
        pretrained one) never reached."""
        self._refresh_ema()
        ema = self.generator_ema
        return ema.module if ema is not None and int(ema.n_averaged) > 0 else self.generator

    @torch.no_grad()
    def decode_latents(self, z: Tensor) -> Tensor:
        """Images [n, C, 28, 28] in [0, 1] from latents z [n, latent_dim] (eval mode, EMA); z is
        cast to the module's dtype (float32 latents for a bf16-true model)."""
        check_latents(z, self.latent_dim, who=f"{type(self).__name__}.decode_latents")
        with eval_mode(self.sampler):
            images = self.sampler(z.to(self.device, self.dtype))
        return ((images + 1.0) / 2.0).clamp(0.0, 1.0)

    def sample(self, n: int, seed: int | None = None) -> Tensor:
        """``n`` images [n, C, 28, 28] in [0, 1]; the same ``seed`` gives the same images.

        Args:
            n: number of images, an integer >= 1 of any kind (Python, NumPy, 0-d tensor).
            seed: an integer in [0, 2**64) (every state ``torch.Generator.manual_seed`` has; it
                would wrap negative seeds to seed + 2**64); None uses the global generator.
        """
        if (count := as_integer(n)) is None or count < 1:
            raise ValueError(f"n={n!r} must be an integer >= 1")
        generator = None if seed is None else torch.Generator().manual_seed(check_seed(seed))
        return self.decode_latents(self.noise(count, generator))

    def sample_images(self, n: int, seed: int = 0) -> Tensor:
        """``sample(n, seed)``, for the SampleGrid callback."""
        return self.sample(n, seed=seed)


def _check_options(
    latent_dim: int, channels: int, features: int, loss: str, gp_weight: float, n_critic: int,
    lr_g: float, lr_d: float, betas_g: tuple[float, float], betas_d: tuple[float, float], ema_decay: float | None,
    weights_init: str,
) -> None:
    """Raise ValueError naming the first bad option."""
    for name, value in (("latent_dim", latent_dim), ("channels", channels), ("features", features),
                        ("n_critic", n_critic)):
        check_integer(name, value, 1)  # (np.int64(8) was refused as not an integer)
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is not one of {', '.join(LOSSES)}")
    for name, value in (("gp_weight", gp_weight), ("lr_g", lr_g), ("lr_d", lr_d)):
        check_real(name, value)
    for name, betas in (("betas_g", betas_g), ("betas_d", betas_d)):
        if not isinstance(betas, (tuple, list)) or not all(isinstance(b, numbers.Real) for b in betas):
            raise ValueError(f"{name}={betas!r} must be two numbers in [0, 1)")
    if ema_decay is not None:
        check_real("ema_decay", ema_decay)
    if not (math.isfinite(gp_weight) and gp_weight >= 0):
        raise ValueError(f"gp_weight={gp_weight!r} must be finite and >= 0")
    for name, value in (("lr_g", lr_g), ("lr_d", lr_d)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}={value!r} must be finite and > 0")
    for name, betas in (("betas_g", betas_g), ("betas_d", betas_d)):
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"{name}={tuple(betas)!r} must be two numbers in [0, 1)")
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay={ema_decay!r} must be in [0, 1) or None")
    if weights_init not in WEIGHTS_INITS:
        raise ValueError(f"weights_init={weights_init!r} is not one of {', '.join(WEIGHTS_INITS)}")
