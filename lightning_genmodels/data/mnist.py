"""MNISTDataModule: MNIST (or Fashion-MNIST, KMNIST) held as one uint8 tensor, batched by tensor
indexing, in the input convention each model family declares.

Input formats (``input_format``; each may take a ``_flat`` suffix for [B, 784] instead of
[B, 1, 28, 28]; ``"flat"`` means ``"unit_flat"``), for a pixel byte x in 0..255:

- ``unit``: x / 255, in [0, 1].
- ``symmetric``: x / 127.5 - 1, in [-1, 1] (GANs, diffusion).
- ``binarized``: Bernoulli(x / 255), float 0/1, drawn afresh for every batch (dynamic
  binarisation; Salakhutdinov & Murray 2008) for Bernoulli-likelihood VAEs.
- ``dequantized``: (x + u) / 256 with u ~ U(0, 1), clamped into the open interval (0, 1)
  (uniform dequantisation; Theis, van den Oord & Bethge 2016) for continuous densities such
  as the GMM. In the DataModule u is fixed per sample: keyed by the sample's index in its
  file through the Philox stream (:func:`dequantization_noise`), so every epoch sees the same
  data and EM's convergence test compares like with like.
"""
from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..module_utils import as_integer, check_integer, plain_hparams
from .idx import (
    SPLIT_FILES,
    TORCHVISION_CLASSES,
    IDXFileNotFoundError,
    IDXFormatError,
    download,
    find_files,
    read_images_labels,
    search_folders,
)

__all__ = ["IDXFileNotFoundError", "IDXFormatError", "ImageTensorDataset", "MNISTDataModule", "format_images"]

IMAGE_SHAPE = (28, 28)
BASE_FORMATS = ("unit", "symmetric", "binarized", "dequantized")
INPUT_FORMATS = BASE_FORMATS + tuple(f"{f}_flat" for f in BASE_FORMATS) + ("flat",)
_OPEN_BELOW_ONE = 1.0 - 2.0**-24  # the largest float32 below 1


def check_input_format(input_format: str) -> str:
    """The canonical name of an input format (``"flat"`` -> ``"unit_flat"``); raises ValueError
    listing the valid names for anything else."""
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format={input_format!r} is not one of {', '.join(INPUT_FORMATS)}")
    return "unit_flat" if input_format == "flat" else input_format


def dequantization_noise(keys: Tensor, n_pixels: int, seed: int) -> Tensor:
    """Uniform noise U(0, 1) [len(keys), n_pixels] (float32) for the samples with index ``keys``:
    u = Φ(z), z the Philox normals ``philox_normal(seed, key · n_pixels, [n_pixels])`` of each
    sample, so a sample's noise depends on its index and the seed only (any batch, any epoch,
    any device). Drawn as one stretch of the stream covering ``0 .. max(keys)``."""
    from ..ops.philox import philox_normal  # here: ops imports the GMM, which imports data

    if keys.numel() == 0:
        return torch.empty(0, n_pixels)
    z = philox_normal(seed, 0, [int(keys.max()) + 1, n_pixels], dtype=torch.float64)[keys]
    return torch.special.ndtr(z).float()


def format_images(x: Tensor, input_format: str, noise: Tensor | None = None) -> Tensor:
    """Convert a batch of pixel bytes to the model's input convention (see module docstring).

    Args:
        x: uint8 [B, H, W].
        input_format: one of ``INPUT_FORMATS``.
        noise: U(0, 1) noise [B, H * W] for ``dequantized`` (e.g. :func:`dequantization_noise`);
            None draws it afresh from torch's generator.

    Returns:
        float32 [B, 1, H, W], or [B, H * W] for a ``_flat`` format.
    """
    fmt = check_input_format(input_format)
    if x.dtype != torch.uint8 or x.dim() != 3:  # (float images were scaled in place, the caller's too)
        raise ValueError(f"format_images takes pixel bytes, uint8 [B, H, W], got {x.dtype} {list(x.shape)}")
    if noise is not None and noise.shape != (x.shape[0], x.shape[1] * x.shape[2]):
        raise ValueError(f"noise must be [B, H * W] = [{x.shape[0]}, {x.shape[1] * x.shape[2]}], "
                         f"got {list(noise.shape)}")
    base, flat = fmt.removesuffix("_flat"), fmt.endswith("_flat")
    x = x.float()
    if base == "unit":
        x.div_(255)
    elif base == "symmetric":
        x.div_(127.5).sub_(1)
    elif base == "binarized":
        x = torch.bernoulli(x.div_(255))
    else:  # dequantized; float32 rounding of x + u can reach 1 (and u can be 0), hence the clamp
        u = torch.rand_like(x) if noise is None else noise.reshape(x.shape).to(x.dtype)
        x.add_(u).div_(256).clamp_(2.0**-24, _OPEN_BELOW_ONE)
    return x.flatten(1) if flat else x.unsqueeze(1)


class ImageTensorDataset(Dataset):
    """Images and labels held as whole tensors; ``__getitems__`` builds a batch by indexing.

    Use with ``collate_fn=pass_through``: torch's DataLoader then calls
    ``dataset.__getitems__(batch_indices)`` once per batch, with no per-sample Python work.

    Args:
        images: uint8 [N, H, W].
        labels: uint8 or int [N].
        input_format: one of ``INPUT_FORMATS``.
        keys: [N] each sample's index in its file, the key of its dequantisation noise;
            None means 0 .. N-1.
        noise_seed: the Philox seed of that noise.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, input_format: str, keys: Tensor | None = None, noise_seed: int = 0
    ) -> None:
        n = images.shape[0] if images.dim() else 0
        if images.dtype != torch.uint8 or images.dim() != 3:  # (checked now, not at the first batch)
            raise ValueError(f"images must be uint8 [N, H, W], got {images.dtype} {list(images.shape)}")
        if labels.shape != (n,) or labels.is_floating_point() or labels.is_complex():  # (0.5 became 0)
            raise ValueError(f"labels must be integers [N] = [{n}], got {labels.dtype} {list(labels.shape)}")
        if keys is not None and keys.shape != (n,):  # (an IndexError at the batch that reached past them)
            raise ValueError(f"keys must be [N] = [{n}], got {list(keys.shape)}")
        self.images = images
        self.labels = labels.long()
        self.input_format = check_input_format(input_format)
        self.keys = torch.arange(images.shape[0]) if keys is None else keys
        self.noise_seed = noise_seed
        self._noise: Tensor | None = None  # [N, H * W], drawn on first use (dequantized only)

    def _noise_of(self, idx: Tensor) -> Tensor | None:
        if not self.input_format.startswith("dequantized"):
            return None
        if self._noise is None:
            self._noise = dequantization_noise(self.keys, self.images[0].numel(), self.noise_seed)
        return self._noise[idx]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """A batch: images float32 [B, ...] in the input format, labels int64 [B]."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return format_images(self.images[idx], self.input_format, self._noise_of(idx)), self.labels[idx]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]


def pass_through(batch: Any) -> Any:
    """collate_fn for :class:`ImageTensorDataset`: the batch is already built."""
    return batch


class MNISTDataModule(LightningDataModule):
    """MNIST for every model family: a seeded train/val split of the 60,000 training images, the
    10,000 test images for test and predict, batches ``(images float32, labels int64)``.

    Data on disk: the four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each ``.gz`` or not) are read from
    ``<data_dir>/MNIST/raw/`` (torchvision's layout; ``FashionMNIST``/``KMNIST`` for the other
    datasets) or from ``data_dir`` itself. On an offline machine copy them into either place and
    pass ``data_dir`` (``--data.data_dir PATH`` on the command line) or set ``$LGM_DATA_DIR``.
    With ``download=True`` missing files are fetched through torchvision in ``prepare_data``,
    which Lightning runs once per node, not once per DDP rank.

    Input format: a model declares the convention it needs as a class attribute
    (``GaussianMixture.input_format = "dequantized_flat"``). In ``setup`` the DataModule adopts
    it when its own ``input_format`` is None (``"unit"`` when neither says), and raises
    ValueError when both are set and differ. See the module docstring for the formats.

    Args:
        data_dir: folder holding the IDX files (``~`` expanded); None means ``$LGM_DATA_DIR`` or ``"data"``.
        dataset: which IDX dataset: picks torchvision's folder name and download class.
        download: fetch missing files through torchvision (needs internet).
        input_format: one of ``unit``, ``symmetric``, ``binarized``, ``dequantized``, each
            optionally ``_flat``, or ``flat`` (= ``unit_flat``); None adopts the model's.
        val_split: validation images taken from the training file: a count (int) or a
            fraction (float in [0, 1)).
        seed: seed of the train/val split; the same seed gives the same split.
        batch_size: samples per batch, for every loader.
        num_workers: DataLoader worker processes (kept alive between epochs when > 0).
        pin_memory: page-locked batches for faster copies to a GPU.
    """

    num_classes = 10

    def __init__(
        self,
        data_dir: str | None = None,
        dataset: Literal["mnist", "fashion_mnist", "kmnist"] = "mnist",
        download: bool = False,
        input_format: str | None = None,
        val_split: int | float = 5000,
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if dataset not in TORCHVISION_CLASSES:
            raise ValueError(f"dataset={dataset!r} is not one of {', '.join(TORCHVISION_CLASSES)}")
        if input_format is not None:
            check_input_format(input_format)
        if as_integer(val_split) is not None:  # NumPy's too (np.int64(100) was refused as no count)
            val_split = as_integer(val_split)
        elif isinstance(val_split, numbers.Real) and not isinstance(val_split, bool):  # (np.float32)
            val_split = float(val_split)
        if isinstance(val_split, bool) or not (
            (isinstance(val_split, int) and val_split >= 0)
            or (isinstance(val_split, float) and 0.0 <= val_split < 1.0)
        ):
            raise ValueError(f"val_split={val_split!r}: give a count >= 0 or a fraction in [0, 1)")
        check_integer("seed", seed, 0, 2**63 - 1)  # 2 seed + 1 seeds the test file's noise
        check_integer("batch_size", batch_size, 1)
        check_integer("num_workers", num_workers, 0)
        self.save_hyperparameters()
        plain_hparams(self)
        # "~" expanded, as torchvision's datasets do; an empty $LGM_DATA_DIR counts as unset
        data_dir = data_dir if data_dir is not None else os.environ.get("LGM_DATA_DIR") or "data"
        self.data_dir = Path(data_dir).expanduser()
        # the format in use: the argument, or after setup the one adopted from the model
        self.input_format = None if input_format is None else check_input_format(input_format)
        self._loaded: dict[str, tuple[Tensor, Tensor]] = {}
        self.data_train: ImageTensorDataset | None = None
        self.data_val: ImageTensorDataset | None = None
        self.data_test: ImageTensorDataset | None = None

    @property
    def dims(self) -> tuple[int, ...]:
        """Shape of one sample in the current input format: (1, 28, 28) or (784,) if flat."""
        flat = (self.input_format or "unit").endswith("_flat")
        return (IMAGE_SHAPE[0] * IMAGE_SHAPE[1],) if flat else (1, *IMAGE_SHAPE)

    def prepare_data(self) -> None:
        """Download missing files when ``download=True`` (one process per node)."""
        names = SPLIT_FILES["train"] + SPLIT_FILES["test"]
        if self.hparams.download and find_files(self.data_dir, self.hparams.dataset, names)[1]:
            download(self.data_dir, self.hparams.dataset)

    def setup(self, stage: str | None = None) -> None:
        """Settle the input format and build the datasets that ``stage`` needs."""
        self.input_format = self._resolve_input_format()
        if stage in (None, "fit", "validate"):
            images, labels = self._load("train")
            val_idx, train_idx = self._split_indices(images.shape[0])
            fmt, seed = self.input_format, 2 * self.hparams.seed  # noise streams: 2s train file, 2s+1 test
            self.data_train = ImageTensorDataset(images[train_idx], labels[train_idx], fmt, train_idx, seed)
            self.data_val = ImageTensorDataset(images[val_idx], labels[val_idx], fmt, val_idx, seed)
        if stage in (None, "test", "predict"):
            self.data_test = ImageTensorDataset(*self._load("test"), self.input_format, None, 2 * self.hparams.seed + 1)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, shuffle=False)

    def _resolve_input_format(self) -> str:
        """The DataModule's format, else the attached model's ``input_format``, else "unit"."""
        ours = self.hparams.input_format
        model = self.trainer.lightning_module if self.trainer is not None else None
        theirs = getattr(model, "input_format", None)
        if ours is None:
            return check_input_format(theirs or "unit")
        if theirs is not None and check_input_format(theirs) != check_input_format(ours):
            raise ValueError(
                f"model {type(model).__name__} needs input_format={theirs!r} but the datamodule "
                f"gives {ours!r}; set the datamodule's input_format to {theirs!r} or leave it None"
            )
        return check_input_format(ours)

    def _load(self, split: str) -> tuple[Tensor, Tensor]:
        """uint8 images [N, 28, 28] and labels [N] of "train" or "test", read once and cached."""
        if split not in self._loaded:
            found, missing = find_files(self.data_dir, self.hparams.dataset, SPLIT_FILES[split])
            if missing:
                raise IDXFileNotFoundError(self._missing_message(missing))
            self._loaded[split] = read_images_labels(*found, IMAGE_SHAPE, self.num_classes)
        return self._loaded[split]

    def _missing_message(self, missing: list[str]) -> str:
        folders = ", ".join(str(d.resolve()) for d in search_folders(self.data_dir, self.hparams.dataset))
        return (
            f"{self.hparams.dataset} IDX files not found: {', '.join(f'{n}[.gz]' for n in missing)}. "
            f"Searched: {folders}. Fix: fetch them through torchvision with download=True "
            f"(--data.download true on the training command line), or point data_dir at a folder "
            f"holding the four IDX files, .gz or not (--data.data_dir PATH on the training command "
            f"line, --data-dir PATH for lightning_genmodels.evaluate, or $LGM_DATA_DIR)."
        )

    def _split_indices(self, n: int) -> tuple[Tensor, Tensor]:
        """Sorted (val indices, train indices) of a seeded random split of ``range(n)``."""
        val_split = self.hparams.val_split
        n_val = round(val_split * n) if isinstance(val_split, float) else val_split
        if n_val >= n:
            raise ValueError(f"val_split={val_split!r} leaves no training data out of {n} images")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.hparams.seed))
        return perm[:n_val].sort().values, perm[n_val:].sort().values

    def _loader(self, dataset: ImageTensorDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            drop_last=False,
            collate_fn=pass_through,
            num_workers=workers,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=workers > 0,
        )
