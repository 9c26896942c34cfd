"""Callbacks shared by the model families: sample grids and latent interpolations.

Every grid is drawn from a fixed seed (fixed noise), so grids from different epochs show the
same latents and can be compared. Each grid is written as a PNG (torchvision's ``save_image``)
and, when the trainer has a logger that takes images, sent to it as well (``_log_grid``).
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchvision.utils import make_grid, save_image

from .ddp import follow_world
from .module_utils import as_integer, check_integer


def _log_grid(trainer: Trainer, tag: str, grid: Tensor) -> None:
    """Send an image grid [C, H, W] in [0, 1] to every logger that takes images: one with
    ``log_image(key, images, step)`` (W&B, Neptune, ...) or whose experiment has
    ``add_image(tag, image, step)`` (TensorBoard). Others (CSV) are skipped."""
    for logger in trainer.loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=tag, images=[grid], step=trainer.global_step)
        elif hasattr(getattr(logger, "experiment", None), "add_image"):
            logger.experiment.add_image(tag, grid, global_step=trainer.global_step)


def slerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between rows of z0 and z1 (Shoemake 1985; White 2016, "Sampling
    Generative Networks"), falling back to the straight line when they are (anti)parallel.

    Args:
        z0, z1: endpoints [R, D].
        t: positions [S] in [0, 1].

    Returns:
        [R, S, D]: row r, step s is slerp(z0[r], z1[r], t[s]).
    """
    cos = torch.nn.functional.cosine_similarity(z0, z1, dim=1).clamp(-1.0, 1.0)  # [R]
    omega = torch.acos(cos)[:, None, None]  # [R, 1, 1]
    t = t[None, :, None]  # [1, S, 1]
    sin = torch.sin(omega)
    safe = sin.abs() > 1e-6
    w0 = torch.where(safe, torch.sin((1 - t) * omega) / torch.where(safe, sin, 1.0), 1 - t)
    w1 = torch.where(safe, torch.sin(t * omega) / torch.where(safe, sin, 1.0), t)
    return w0 * z0[:, None, :] + w1 * z1[:, None, :]


def _check_image_suffix(path: str) -> None:
    """ValueError unless ``path`` ends in an image suffix PIL writes (``save_image`` had failed
    with "unknown file extension" only when fit ended)."""
    from PIL import Image

    suffix = Path(path.format(epoch=0)).suffix.lower()
    if suffix not in Image.registered_extensions():
        raise ValueError(f"path={path!r} needs an image file suffix such as .png (got {suffix or 'none'})")


class _GridCallback(Callback):
    """Write (and log) a grid of images at fit end and every ``every_n_epochs`` epochs.

    Subclasses implement ``_images(pl_module) -> [n, C, H, W]`` in [0, 1] and set ``tag``.
    """

    tag = "samples"

    def __init__(self, path: str, nrow: int, every_n_epochs: int, log_to_logger: bool) -> None:
        super().__init__()
        check_integer("every_n_epochs", every_n_epochs, 0)
        try:  # checked now: a bad field would fail only when the first grid is written
            str(path).format(epoch=0)
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"path={path!r}: the only field it may hold is {{epoch}} "
                             f"(write other braces as {{{{ and }}}}); got {type(err).__name__}: {err}") from None
        _check_image_suffix(str(path))
        self.path = str(path)  # a Path too
        self.nrow = nrow
        self.every_n_epochs = every_n_epochs
        self.log_to_logger = log_to_logger
        self.last_path: Path | None = None
        self._written_at: tuple | None = None  # _state_key at the last epoch-end grid

    def _images(self, pl_module: LightningModule) -> Tensor:
        raise NotImplementedError

    def _check(self, pl_module: LightningModule) -> None:
        """Raise TypeError if ``pl_module`` lacks what ``_images`` calls."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":  # grids are drawn only by fit: check before training, not when the first is due
            self._check(pl_module)

    def _write(self, trainer: Trainer, pl_module: LightningModule, log: bool) -> None:
        images = self._images(pl_module)  # on every rank: sampling may be collective
        if not trainer.is_global_zero:
            return
        images = images.detach().float().clamp(0, 1).cpu()
        path = Path(self.path.format(epoch=trainer.current_epoch))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(images, path, nrow=self.nrow, padding=2)
        self.last_path = path
        print(f"wrote {len(images)} {self.tag} to {path}")
        if log and self.log_to_logger:
            _log_grid(trainer, self.tag, make_grid(images, nrow=self.nrow, padding=2))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            with torch.no_grad():
                self._write(trainer, pl_module, log=True)
            self._written_at = _state_key(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        key = _state_key(trainer, pl_module)
        if key is not None and key == self._written_at:  # the last epoch's grid, of the same weights
            return  # (it was drawn again, under the next epoch's number: s_000 and s_001 alike)
        with torch.no_grad():
            self._write(trainer, pl_module, log=False)


def _state_key(trainer: Trainer, pl_module: LightningModule) -> tuple | None:
    """The global step and each state tensor's storage and version counter: equal keys, the same
    weights (an in-place update bumps the version, a new tensor moves the storage; a GMM's best
    restart restored at the end of fit does one or the other). None where a tensor has no
    version counter (an inference tensor). Writes through `.data` (Lightning's weight averaging
    swaps its average in so) go unseen: the epoch-end grids already draw from that average."""
    try:
        return (trainer.global_step, *((t.data_ptr(), t._version) for t in pl_module.state_dict().values()
                                      if isinstance(t, Tensor)))
    except RuntimeError:
        return None


class SampleGrid(_GridCallback):
    """A PNG grid of samples at the end of fitting and, every ``every_n_epochs`` epochs, also
    sent to the logger (TensorBoard ``add_image``, or any logger's ``log_image``).

    The module must provide ``sample_images(n, seed) -> [n, C, H, W]`` with values in [0, 1];
    every model family in this package does. The seed is fixed, so every grid shows the same
    noise and grids from different epochs are comparable.

    Args:
        path: PNG file; ``{epoch}`` in it is filled in for the periodic grids.
        num_samples: images in the grid.
        nrow: images per row.
        every_n_epochs: also write (and log) during training; 0 writes only at the end of ``fit``.
        seed: sampling seed (the fixed noise).
        log_to_logger: send the periodic grids to the trainer's loggers.
    """

    tag = "samples"

    def __init__(
        self,
        path: str = "outputs/samples.png",
        num_samples: int = 64,
        nrow: int = 8,
        every_n_epochs: int = 0,
        seed: int = 0,
        log_to_logger: bool = True,
    ) -> None:
        # checked now: they would fail only when fit ends
        check_integer("num_samples", num_samples, 1)
        check_integer("nrow", nrow, 1)
        check_integer("seed", seed, 0, 2**64 - 1)
        super().__init__(path, nrow, every_n_epochs, log_to_logger)
        self.num_samples = num_samples
        self.seed = seed

    def _check(self, pl_module: LightningModule) -> None:
        if not hasattr(pl_module, "sample_images"):
            raise TypeError(f"{type(pl_module).__name__} has no sample_images(n, seed) for SampleGrid")

    def _images(self, pl_module: LightningModule) -> Tensor:
        self._check(pl_module)
        return pl_module.sample_images(self.num_samples, seed=self.seed)


class LatentInterpolation(_GridCallback):
    """A grid of walks through latent space: row r decodes ``num_steps`` points on the path
    from z_r0 to z_r1, two fixed draws from the N(0, I) prior.

    The module must provide ``latent_dim: int`` and ``decode_latents(z [n, latent_dim]) ->
    [n, C, H, W]`` in [0, 1] (the VAE and the GAN do).

    Args:
        path: PNG file; ``{epoch}`` in it is filled in for the periodic grids.
        num_rows: walks (rows in the grid).
        num_steps: points per walk, endpoints included (columns).
        mode: ``slerp`` (along the sphere, suited to Gaussian priors) or ``lerp`` (a line).
        every_n_epochs: also write (and log) during training; 0 writes only at the end of ``fit``.
        seed: seed of the endpoints, in [0, 2**64).
        log_to_logger: send the periodic grids to the trainer's loggers.
    """

    tag = "interpolations"

    def __init__(
        self,
        path: str = "outputs/interpolation.png",
        num_rows: int = 8,
        num_steps: int = 10,
        mode: str = "slerp",
        every_n_epochs: int = 0,
        seed: int = 0,
        log_to_logger: bool = True,
    ) -> None:
        if mode not in ("slerp", "lerp"):
            raise ValueError(f"mode={mode!r} is not one of slerp, lerp")
        # checked now: they would fail only when fit ends
        check_integer("num_rows", num_rows, 1)
        check_integer("num_steps", num_steps, 2)
        check_integer("seed", seed, 0, 2**64 - 1)
        super().__init__(path, num_steps, every_n_epochs, log_to_logger)
        self.num_rows, self.num_steps, self.mode, self.seed = num_rows, num_steps, mode, seed

    def latents(self, latent_dim: int) -> Tensor:
        """The walks' latents [num_rows * num_steps, latent_dim], row by row, on the CPU."""
        generator = torch.Generator().manual_seed(self.seed)
        z0, z1 = torch.randn(2, self.num_rows, latent_dim, generator=generator)
        t = torch.linspace(0.0, 1.0, self.num_steps)
        if self.mode == "slerp":
            z = slerp(z0, z1, t)
        else:
            z = torch.lerp(z0[:, None], z1[:, None], t[None, :, None])
        return z.reshape(-1, latent_dim)

    def _check(self, pl_module: LightningModule) -> None:
        if not isinstance(getattr(pl_module, "latent_dim", None), int) or not hasattr(pl_module, "decode_latents"):
            raise TypeError(
                f"{type(pl_module).__name__} needs latent_dim and decode_latents(z) for LatentInterpolation"
            )

    def _images(self, pl_module: LightningModule) -> Tensor:
        self._check(pl_module)
        return pl_module.decode_latents(self.latents(pl_module.latent_dim).to(pl_module.device))


# ---------------------------------------------------------------------------- FID tracking


def _check_fid_options(every_n_epochs: int, num_samples: int, batch_size: int, seed: int, num_real: int | None,
                       kid_subset_size: int) -> None:
    """Raise ValueError at construction for what would fail only at the first evaluation."""
    from .metrics.quality import KID_MIN_SUBSET, min_samples

    least = min_samples()
    why = f" (precision/recall's k = {least - 1} nearest neighbours need {least} images)"
    options = [("every_n_epochs", every_n_epochs, 1, ""), ("batch_size", batch_size, 1, ""),
               ("num_samples", num_samples, least, why), ("kid_subset_size", kid_subset_size, KID_MIN_SUBSET, "")]
    if num_real is not None:
        options.append(("num_real", num_real, least, why))
    for name, value, low, note in options:
        if (v := as_integer(value)) is None:
            raise ValueError(f"FIDCallback: {name} must be an integer, got {value!r}")
        if v < low:
            raise ValueError(f"FIDCallback: {name} must be >= {low}{note}, got {value}")
    chunks = -(-num_samples // batch_size)  # chunk j of the samples has seed + j
    if (v := as_integer(seed)) is None or not 0 <= v <= 2**64 - chunks:
        raise ValueError(f"FIDCallback: seed must be an integer in [0, 2**64 - {chunks}] (chunk j of the {chunks} "
                         f"sample chunks has seed + j), got {seed!r}")


class FIDCallback(Callback):
    """Every ``every_n_epochs`` validation epochs, generate ``num_samples`` images with the
    module's ``sample_images(n, seed)`` and log ``val/fid``, ``val/kid``, ``val/precision``,
    ``val/recall``, ``val/mode_coverage`` and ``val/confidence`` (see
    :class:`~lightning_genmodels.metrics.SampleQuality`), so that
    ``ModelCheckpoint(monitor="val/fid", mode="min", every_n_epochs=N)`` keeps the best model.

    The samples are chunks of ``batch_size`` images, chunk j drawn with seed ``seed + j`` (the
    same seeds every time, so epochs are compared on the same noise). Under DDP rank r draws the
    chunks j = r, r + W, ... and torchmetrics sums the statistics across ranks, so any number of
    processes evaluates exactly the same samples as one (a module whose ``sample_images`` takes
    ``distributed``, as Diffusion's, is asked to draw each chunk alone). Runs at the end of validation on epochs
    where ``(epoch + 1) % every_n_epochs == 0`` (ModelCheckpoint's rule for ``every_n_epochs``).

    Args:
        data_dir: MNIST IDX folder for the real images (None: ``$LGM_DATA_DIR``).
        every_n_epochs: evaluate every N epochs.
        num_samples: generated images per evaluation, over all ranks; at least 4, as
            precision/recall's k = 3 nearest neighbours need k + 1 points.
        batch_size: images per ``sample_images`` call.
        seed: base seed of the samples.
        split: real reference set; its features are cached on disk.
        num_real: a seeded subset of the real split (None: all of it); at least 4 as well.
        feature: "mnist" or an Inception layer (see SampleQuality).
        weights_path: feature-network weights (None: shipped MNIST weights).
        cache_dir: real-feature cache folder (None: the default in metrics/real.py).
        kid_subset_size: KID subset size, >= 2 (capped by the sample counts).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        every_n_epochs: int = 1,
        num_samples: int = 10_000,
        batch_size: int = 500,
        seed: int = 0,
        split: str = "test",
        num_real: int | None = None,
        feature: str | int = "mnist",
        weights_path: str | None = None,
        cache_dir: str | None = None,
        kid_subset_size: int = 1000,
    ) -> None:
        super().__init__()
        _check_fid_options(every_n_epochs, num_samples, batch_size, seed, num_real, kid_subset_size)
        self.data_dir, self.every_n_epochs, self.num_samples = data_dir, every_n_epochs, num_samples
        self.batch_size, self.seed, self.split, self.num_real = batch_size, seed, split, num_real
        self.feature, self.weights_path, self.cache_dir = feature, weights_path, cache_dir
        self.kid_subset_size = kid_subset_size
        self.quality = None
        self.last: dict[str, float] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "sample_images"):
            raise TypeError(f"{type(pl_module).__name__} has no sample_images(n, seed) for FIDCallback")
        shape = getattr(pl_module, "image_shape", None)  # the VAE's and the GAN's: known before sampling
        if shape is not None and tuple(shape) != (1, 28, 28):
            raise ValueError(f"FIDCallback scores MNIST-like images [N, 1, 28, 28]; {type(pl_module).__name__} "
                             f"draws images of shape [N, {', '.join(map(str, shape))}]")
        if stage == "fit" and getattr(trainer, "limit_val_batches", None) == 0:  # (no FID logged, silently)
            rank_zero_warn("FIDCallback scores samples at the end of validation epochs, and "
                           "Trainer(limit_val_batches=0) runs none: no val/fid will be logged")
        if self.quality is None:
            from .metrics import SampleQuality

            self.quality = SampleQuality(self.feature, self.weights_path, kid_subset_size=self.kid_subset_size)
            self.quality.to(pl_module.device)
            self.quality.set_real_from_data(self.data_dir, self.split, self.num_real, self.cache_dir,
                                            trainer.global_rank, trainer.world_size)

    @torch.no_grad()
    def evaluate(self, pl_module: LightningModule, rank: int = 0, world_size: int = 1) -> dict[str, float]:
        """Draw this rank's chunks, update the metrics, compute (synchronised) and reset."""
        from .metrics.quality import sample_chunks

        self.quality.to(pl_module.device)
        follow_world(self.quality, world_size)  # not a process group an earlier DDP fit left open
        # each rank draws its own chunks: a module whose sampling can be collective draws alone
        alone = {"distributed": False} if "distributed" in inspect.signature(pl_module.sample_images).parameters \
            else {}
        try:  # reset also after an error: the failed call's samples had counted in the next one
            for seed, size in sample_chunks(self.num_samples, self.batch_size, self.seed, rank, world_size):
                self.quality.update(pl_module.sample_images(size, seed=seed, **alone).float().clamp(0, 1))
            out = self.quality.compute(num_generated=self.num_samples)
        finally:
            self.quality.reset()
        return {name: float(out[key]) for name, key in (
            ("fid", "fid"), ("kid", "kid"), ("precision", "precision"), ("recall", "recall"),
            ("mode_coverage", "coverage"), ("confidence", "confidence"))}

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.last = self.evaluate(pl_module, trainer.global_rank, trainer.world_size)
        for name, value in self.last.items():
            pl_module.log(f"val/{name}", value, sync_dist=False)  # already synchronised
