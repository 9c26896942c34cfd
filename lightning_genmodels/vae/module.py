"""Variational autoencoder (Kingma & Welling 2014; Rezende et al. 2014) as a LightningModule.

Training maximises the β-weighted evidence lower bound (Higgins et al. 2017), with β ramped
linearly from 0 over ``kl_warmup_steps`` (Sønderby et al. 2016):

    ELBO(x) = E_q(z|x)[log p(x | z)] - KL(q(z | x) || N(0, I))        (Kingma & Welling eq. 3)

with a diagonal Gaussian q, one reparameterised sample for the first term and the KL in
closed form (Kingma & Welling, appendix B). Validation and test also report the importance
weighted bound with k samples (Burda, Grosse & Salakhutdinov 2016, eq. 8)

    L_k(x) = E[log (1/k) sum_i p(x, z_i) / q(z_i | x)],   z_i ~ q(z | x),

a tighter bound, ``-L_k`` being the usual estimate of the negative log-likelihood (NLL).
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Iterable

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.trainer.states import TrainerStatus
from torch import Tensor, nn

from ..ddp import eval_means, log_row_means
from ..module_utils import (
    as_integer, check_integer, check_latents, check_real, eval_mode, finite_on_every_rank,
    save_hparams_keeping_configs, seed_ranks_apart,
)
from ..ops.philox import check_seed
from ..train_log import log_this_step, sync_train_metrics
from .likelihoods import (
    INPUT_FORMATS,
    Likelihood,
    check_likelihood,
    discrete_offset,
    log_likelihood,
    mean_image,
)
from .nets import ConvDecoder, ConvEncoder, check_image_shape

__all__ = ["VAE"]

_LOG_2PI = math.log(2 * math.pi)
# likelihoods defined only for data in [0, 1] (the Gaussian is a density on all reals)
_UNIT_RANGE = ("bernoulli", "continuous_bernoulli")
_EVAL_ROWS = ("elbo", "rec", "kl", "nll_iwae", "bpd")  # logged per validation and test row


class VAE(LightningModule):
    """Variational autoencoder for images, with replaceable networks and likelihoods.

    The encoder maps images [B, C, S, S] to [B, 2L] (the mean and log-variance of q(z | x));
    the decoder maps latents [B, L] to [B, C, S, S] (the likelihood's per-pixel parameters).
    See :mod:`~lightning_genmodels.vae.nets` for the contract and the default networks, and
    :mod:`~lightning_genmodels.vae.likelihoods` for the likelihoods and the data each expects
    (``input_format``, adopted by :class:`~lightning_genmodels.data.MNISTDataModule`).

    Logged per stage (nats per image; bits per dimension = nats / (D log 2), D = C S S):
    ``train/loss`` (the minimised -β-ELBO), ``{stage}/elbo``, ``{stage}/rec`` (E_q log p(x|z)),
    ``{stage}/kl``; for validation and test also ``{stage}/nll_iwae`` (= -L_k) and
    ``{stage}/bpd`` (from ``nll_iwae``; for the Gaussian on dequantised data it includes
    D log 256, so it bounds the bits per dimension of the 8-bit images). Training metrics are
    logged on the batches Lightning writes (``log_every_n_steps``) and each epoch's last; see
    :mod:`~lightning_genmodels.train_log`.

    Args:
        latent_dim: size L of z; the prior is N(0, I).
        likelihood: ``bernoulli``, ``continuous_bernoulli`` or ``gaussian``.
        encoder: replaces the default :class:`ConvEncoder`; on the command line
            ``--model.encoder.class_path my_pkg.MyEncoder``. A module built from networks passed
            here in Python is loaded with ``VAE.load_from_checkpoint(path, encoder=..., decoder=...)``.
        decoder: replaces the default :class:`ConvDecoder` (same conventions).
        in_channels: image channels C the networks are built for.
        image_size: image side S the networks are built for.
        beta: weight of the KL term in the training loss (β-VAE); >= 0.
        kl_warmup_steps: optimiser steps over which β ramps linearly from 0; 0 disables.
        gaussian_scale: σ of the Gaussian likelihood (its initial value if learned).
        learn_scale: learn one shared log σ of the Gaussian likelihood.
        lr: Adam learning rate.
        iwae_k: importance samples k of the test NLL estimate.
        val_iwae_k: importance samples of the validation NLL estimate (cheaper).
        iwae_batch: largest number of images decoded at once by the IWAE estimate (memory
            only: a seed gives the same bound for any value).
    """

    input_format = INPUT_FORMATS["bernoulli"]  # of the default likelihood; set per instance

    def __init__(
        self,
        latent_dim: int = 32,
        likelihood: Likelihood = "bernoulli",
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        in_channels: int = 1,
        image_size: int = 28,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        gaussian_scale: float = 0.1,
        learn_scale: bool = False,
        lr: float = 1e-3,
        iwae_k: int = 100,
        val_iwae_k: int = 10,
        iwae_batch: int = 4096,
    ) -> None:
        super().__init__()
        check_likelihood(likelihood)
        for name, value, low in (("latent_dim", latent_dim, 1), ("in_channels", in_channels, 1),
                                 ("image_size", image_size, 1), ("kl_warmup_steps", kl_warmup_steps, 0),
                                 ("iwae_k", iwae_k, 1), ("val_iwae_k", val_iwae_k, 1), ("iwae_batch", iwae_batch, 1)):
            check_integer(name, value, low)  # (np.int64(8) was refused as not an integer)
        for name, value in (("beta", beta), ("gaussian_scale", gaussian_scale), ("lr", lr)):
            check_real(name, value)
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta={beta!r} must be a finite number >= 0")
        if not (math.isfinite(gaussian_scale) and gaussian_scale > 0):
            raise ValueError(f"gaussian_scale={gaussian_scale!r} must be a finite number > 0")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr={lr!r} must be a finite number > 0")
        if learn_scale and likelihood != "gaussian":
            raise ValueError(f"learn_scale=True needs likelihood='gaussian', got likelihood={likelihood!r}")
        save_hparams_keeping_configs(self, inspect.currentframe())
        self.latent_dim = latent_dim = int(latent_dim)
        in_channels, image_size = int(in_channels), int(image_size)
        self.likelihood = likelihood
        self.input_format = INPUT_FORMATS[likelihood]
        self.image_shape = (in_channels, image_size, image_size)
        self.encoder = encoder if encoder is not None else ConvEncoder(latent_dim, in_channels, image_size)
        self.decoder = decoder if decoder is not None else ConvDecoder(latent_dim, in_channels, image_size)
        # {stage}/elbo, ... over the whole set: under DDP each row once (see ddp.py)
        self.eval_means = eval_means(_EVAL_ROWS)
        log_scale = torch.tensor(math.log(gaussian_scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A fixed σ is a hyperparameter: ``load_from_checkpoint(path, gaussian_scale=0.5)`` keeps
        0.5 (the checkpoint's buffer had overwritten it, silently); a learnt one loads."""
        state = checkpoint.get("state_dict", {})
        if not self.hparams.get("learn_scale", False) and "log_scale" in state:
            state["log_scale"] = self.log_scale.detach().clone()

    # ----- the model -----------------------------------------------------------------------

    def _images(self, x: Tensor) -> Tensor:
        """``x`` checked (shape, floating dtype, [0, 1] for Bernoulli likelihoods, finite for the
        Gaussian) and cast to the module's dtype (float64 images for a float32 model)."""
        check_image_shape(x, *self.image_shape[:2], who=type(self).__name__)
        if not x.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects floating-point images, got dtype {x.dtype}")
        if not (x.numel() and self._check_range()):
            return x.to(self.dtype)
        if self.likelihood in _UNIT_RANGE:
            lo, hi = (v.item() for v in torch.aminmax(x.detach()))
            if not (lo >= 0.0 and hi <= 1.0):  # also False for NaN
                raise ValueError(f"likelihood={self.likelihood!r} needs images in [0, 1], "
                                 f"got values in [{lo:.4g}, {hi:.4g}]")
        elif not torch.isfinite(x).all():  # a NaN bound otherwise, silently
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"likelihood={self.likelihood!r} needs finite images, got {bad} NaN or infinite values")
        return x.to(self.dtype)

    def _check_range(self) -> bool:
        """Whether to read the images' range (a host sync on a GPU): not under torch.compile, and
        in a running Trainer only until its first optimizer step (its batches come alike)."""
        if torch.compiler.is_compiling():
            return False
        trainer = self._trainer
        return trainer is None or trainer.state.status != TrainerStatus.RUNNING or trainer.global_step == 0

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z | x).

        Args:
            x: images [B, C, S, S] in the likelihood's convention (in [0, 1] for the Bernoulli
                likelihoods, else ValueError), any floating dtype (cast to the module's).

        Returns:
            mean [B, L], log_var [B, L].
        """
        x = self._images(x)
        h = self.encoder(x)
        if h.shape != (x.shape[0], 2 * self.latent_dim):
            raise ValueError(
                f"encoder {type(self.encoder).__name__} returned shape {tuple(h.shape)}; "
                f"expected [B, 2 * latent_dim] = [{x.shape[0]}, {2 * self.latent_dim}]"
            )
        mean, log_var = h.chunk(2, dim=1)
        return mean, log_var

    def decoder_output(self, z: Tensor) -> Tensor:
        """The decoder's per-pixel likelihood parameters [B, C, S, S] for latents z [B, L]."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latents must be [B, {self.latent_dim}], got shape {tuple(z.shape)}")
        out = self.decoder(z)
        if out.shape != (z.shape[0], *self.image_shape):
            raise ValueError(
                f"decoder {type(self.decoder).__name__} returned shape {tuple(out.shape)}; "
                f"expected [B, C, S, S] = [{z.shape[0]}, {', '.join(map(str, self.image_shape))}]"
            )
        return out

    def decode(self, z: Tensor) -> Tensor:
        """Mean images E[x | z] in [0, 1], [B, C, S, S], for latents z [B, L], cast to the
        module's device and dtype (float32 latents for a bf16-true model)."""
        check_latents(z, self.latent_dim, who=f"{type(self).__name__}.decode")
        return mean_image(self.decoder_output(z.to(self.device, self.dtype)), self.likelihood)

    def decode_latents(self, z: Tensor) -> Tensor:
        """:meth:`decode` with the decoder in eval mode (the latent-interpolation protocol, as the
        GAN's): a decoder with batch norm or dropout gives the same images during training, and
        sampling leaves its running statistics alone."""
        with eval_mode(self.decoder):
            return self.decode(z)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean images decoded from the posterior mean: [B, C, S, S] in [0, 1]."""
        return self.decode(self.encode(x)[0])

    def forward(self, x: Tensor) -> Tensor:
        return self.reconstruct(x)

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None) -> Tensor:
        """Mean images of n latents drawn from the prior: [n, C, S, S] in [0, 1], decoded in eval
        mode (:meth:`decode_latents`).

        Args:
            n: number of images, an integer of any kind (Python, NumPy, 0-d tensor).
            seed: an integer in [0, 2**64) (every state ``torch.Generator.manual_seed`` has; it
                would wrap negative seeds to seed + 2**64): the latents are drawn on the CPU in
                float32, as the GAN's noise, so a seed gives the same latents on every device and
                in every dtype; None uses the global generator on the module's device.
        """
        if (count := as_integer(n)) is None or count < 0:
            raise ValueError(f"n={n!r} must be an integer >= 0")
        if seed is None:
            z = torch.randn(count, self.latent_dim, device=self.device, dtype=self.dtype)
        else:  # (a generator on the module's device drew other latents on a GPU, or in float64)
            z = torch.randn(count, self.latent_dim, generator=torch.Generator().manual_seed(check_seed(seed)))
        return self.decode_latents(z)  # cast to the module's device and dtype

    def sample_images(self, n: int, seed: int = 0) -> Tensor:
        """:meth:`sample` with a seed, for :class:`~lightning_genmodels.callbacks.SampleGrid`."""
        return self.sample(n, seed=seed)

    # ----- the bounds ----------------------------------------------------------------------

    def log_likelihood(self, x: Tensor, out: Tensor) -> Tensor:
        """log p(x | z) [B] from the decoder output ``out`` [B, C, S, S]."""
        return log_likelihood(x, out, self.likelihood, self.log_scale)

    def elbo_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One-sample reconstruction term and closed-form KL; ELBO = rec - kl.sum(1).

        Returns:
            rec [B]: log p(x | z) at z = mean + exp(log_var / 2) * eps, eps ~ N(0, I)
            (reparameterisation, Kingma & Welling eq. 10); kl [B, L]: KL(q || N(0, I)) per
            latent dimension, 0.5 (mean^2 + var - 1 - log var) (Kingma & Welling appendix B).
        """
        mean, log_var = self.encode(x)
        x = x.to(self.dtype)  # as encode casts it
        z = mean + (0.5 * log_var).exp() * torch.randn_like(mean)
        rec = self.log_likelihood(x, self.decoder_output(z))
        kl = 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var)
        return rec, kl

    def elbo(self, x: Tensor) -> Tensor:
        """ELBO [B] in nats (one reparameterised sample, closed-form KL)."""
        rec, kl = self.elbo_terms(x)
        return rec - kl.sum(1)

    def log_importance_weights(self, x: Tensor, k: int) -> Tensor:
        """log p(x, z_i) - log q(z_i | x) for k posterior samples z_i per image: [k, B]."""
        if (k_int := as_integer(k)) is None or k_int < 1:
            raise ValueError(f"k={k!r} must be an integer >= 1")
        mean, log_var = self.encode(x)
        return self._log_weights(x.to(self.dtype), mean, log_var, k_int)

    def _log_weights(self, x: Tensor, mean: Tensor, log_var: Tensor, k: int) -> Tensor:
        # one draw of [B, L] per sample, so that the same seed gives the same bound whatever
        # chunks iwae_batch cuts k into (one [k, B, L] draw per chunk gave other numbers)
        eps = torch.stack([torch.randn_like(mean) for _ in range(k)])
        z = mean + (0.5 * log_var).exp() * eps  # [k, B, L]
        log_q = -0.5 * (_LOG_2PI + log_var + eps.square()).sum(-1)
        log_prior = -0.5 * (_LOG_2PI + z.square()).sum(-1)
        out = self.decoder_output(z.flatten(0, 1))
        log_px = self.log_likelihood(x.expand(k, *x.shape).flatten(0, 1), out).view(k, -1)
        return log_px + log_prior - log_q

    def iwae_bound(self, x: Tensor, k: int) -> Tensor:
        """The importance-weighted bound L_k [B] in nats (Burda et al. 2016, eq. 8), decoding at
        most ``iwae_batch`` images at once."""
        if (k_int := as_integer(k)) is None or k_int < 1:
            raise ValueError(f"k={k!r} must be an integer >= 1")
        k = k_int
        mean, log_var = self.encode(x)
        x = x.to(self.dtype)
        chunk = max(1, self.hparams.iwae_batch // max(1, x.shape[0]))
        parts = [torch.logsumexp(self._log_weights(x, mean, log_var, min(chunk, k - i)), dim=0)
                 for i in range(0, k, chunk)]
        return torch.logsumexp(torch.stack(parts), dim=0) - math.log(k)

    def bits_per_dim(self, nll: Tensor) -> Tensor:
        """Nats per image to bits per dimension (with D log 256 for the Gaussian, see above)."""
        d = math.prod(self.image_shape)
        return (nll + discrete_offset(self.likelihood, d)) / (d * math.log(2.0))

    @torch.no_grad()
    def nll_bits_per_dim(self, loader: Iterable, k: int | None = None) -> float:
        """Mean NLL in bits per dimension over ``loader`` (batches ``(x, y)`` or ``x`` in this
        model's ``input_format``) from the IWAE bound with ``k`` samples (default ``iwae_k``),
        in eval mode; the hook ``lightning_genmodels.evaluate`` calls."""
        k = self.hparams.iwae_k if k is None else k
        total, count = 0.0, 0
        with eval_mode(self):  # networks with batch norm or dropout: as in validation and test
            for batch in loader:
                x = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(self.device)
                total += self.bits_per_dim(-self.iwae_bound(x, k)).double().sum().item()
                count += x.shape[0]
        if count == 0:
            raise ValueError("nll_bits_per_dim got an empty loader")
        return total / count

    # ----- training ------------------------------------------------------------------------

    def beta_at(self, step: int) -> float:
        """β after ``step`` optimiser steps: beta * min(1, step / kl_warmup_steps)."""
        warmup = self.hparams.kl_warmup_steps
        ramp = min(1.0, step / warmup) if warmup else 1.0
        return self.hparams.beta * ramp

    @property
    def current_beta(self) -> float:
        """β at the current optimiser step of the attached trainer (0 steps without one)."""
        return self.beta_at(self.global_step)

    def training_loss(self, rec: Tensor, kl: Tensor, beta: float) -> Tensor:
        """The minimised loss, a scalar: mean over the batch of -(rec - beta * KL).

        Override to change the objective (see ``examples/my_vae.py``).

        Args:
            rec: log p(x | z) [B].
            kl: KL per latent dimension [B, L].
            beta: the current KL weight.
        """
        return (beta * kl.sum(1) - rec).mean()

    def _shared_step(self, batch: tuple[Tensor, Tensor] | Tensor, stage: str, batch_idx: int = 0) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if x.shape[0] == 0:  # (the mean of no rows was a NaN loss, logged silently)
            raise ValueError(f"{type(self).__name__} {stage} batch is empty, shape {tuple(x.shape)}")
        if not finite_on_every_rank(self, x):
            where = "" if not torch.isfinite(x).all() else " on another rank"
            raise ValueError(f"{stage} batch contains NaN or inf{where}")
        rec, kl = self.elbo_terms(x)
        elbo = rec - kl.sum(1)
        n = x.shape[0]
        if stage == "train":
            beta = self.current_beta
            loss = self.training_loss(rec, kl, beta)
            if not log_this_step(self, batch_idx):
                return loss
            sync = sync_train_metrics(self)
            self.log_dict({"train/loss": loss, "train/elbo": elbo.mean(), "train/rec": rec.mean(),
                           "train/kl": kl.sum(1).mean(), "train/beta": beta}, batch_size=n, sync_dist=sync)
            if self.likelihood == "gaussian" and self.hparams.learn_scale:
                self.log("train/scale", self.log_scale.exp(), batch_size=n, sync_dist=sync)
            return loss
        nll = -self.iwae_bound(x, self.hparams.iwae_k if stage == "test" else self.hparams.val_iwae_k)
        rows = {"elbo": elbo, "rec": rec, "kl": kl.sum(1), "nll_iwae": nll, "bpd": self.bits_per_dim(nll)}
        log_row_means(self, self.eval_means, stage, rows, batch_idx, prog_bar=stage == "val")
        return -elbo.mean()

    def on_train_start(self) -> None:
        seed_ranks_apart(self)  # under DDP each rank draws its own noise

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train", batch_idx)

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val", batch_idx)

    def test_step(self, batch, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test", batch_idx)

    def predict_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        """``Trainer.predict``: the batch's latent codes (``mean``, ``log_var`` [B, L]) and mean
        reconstructions [B, C, S, S]."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        mean, log_var = self.encode(x)
        return {"mean": mean, "log_var": log_var, "reconstruction": self.decode(mean)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
