"""Real-data features, computed once per (data, network) and cached on disk.

The cache file is ``<cache_dir>/real_<network sha256[:16]>_<data sha256[:16]>.pt`` holding the
features [N, F] float64; ``cache_dir`` defaults to ``$LGM_CACHE_DIR/fid`` or
``~/.cache/lightning_genmodels/fid``. The data key hashes the uint8 image bytes themselves, so
another split, subset or dataset gets its own entry. A cache file that cannot be read or does
not hold finite float64 features [N, F] of these images is stale: it is recomputed and
overwritten, with a warning naming it.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ..module_utils import as_integer

__all__ = ["default_cache_dir", "load_real_images", "real_features", "seeded_subset"]


def default_cache_dir() -> Path:
    """``$LGM_CACHE_DIR/fid``, else ``~/.cache/lightning_genmodels/fid``."""
    root = os.environ.get("LGM_CACHE_DIR")
    return Path(root) / "fid" if root else Path.home() / ".cache" / "lightning_genmodels" / "fid"


def load_real_images(
    data_dir: str | Path | None, split: Literal["train", "test"] = "test", num: int | None = None, seed: int = 0
) -> Tensor:
    """MNIST images uint8 [N, 28, 28] from the IDX files in ``data_dir``.

    Args:
        data_dir: folder of the IDX files (see MNISTDataModule); None: ``$LGM_DATA_DIR``.
        split: "test" (10,000 images, the default reference set) or "train" (60,000).
        num: keep a seeded random subset of this many images; None keeps all, in file order.
        seed: seed of the subset.
    """
    from lightning_genmodels.data import MNISTDataModule

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    dm = MNISTDataModule(data_dir=None if data_dir is None else str(data_dir), input_format="unit", val_split=0)
    dm.setup("fit" if split == "train" else "test")
    images = (dm.data_train if split == "train" else dm.data_test).images
    if num is not None:
        if (count := as_integer(num)) is None or not 2 <= count <= len(images):
            raise ValueError(f"num={num!r} real {split} images requested; give 2 (FID's minimum) to "
                             f"{len(images)} (the size of the {split} split), an integer")
        images = seeded_subset(images, count, seed)
    return images


def seeded_subset(images: Tensor, num: int, seed: int = 0) -> Tensor:
    """``num`` rows of ``images`` drawn without replacement with ``seed`` (load_real_images' subset)."""
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:num]]


@torch.no_grad()
def real_features(
    extractor: nn.Module, images: Tensor, cache_dir: str | Path | None = None, batch_size: int = 1000
) -> Tensor:
    """Features [N, F] float64 of real images uint8 [N, 28, 28], read from the cache when there.

    Args:
        extractor: a feature module with ``sha256`` (see extractors.py); features run on its device.
        images: uint8 [N, 28, 28].
        cache_dir: cache folder; None: :func:`default_cache_dir`. Written atomically, so DDP ranks
            computing the same entry at once do not clash. An unreadable or invalid entry
            (truncated, empty, not a tensor, wrong shape or dtype, NaN/inf) is treated as stale:
            a warning names the file, and it is recomputed and overwritten.
        batch_size: images per forward pass.

    Raises:
        ValueError: the freshly computed features contain NaN or inf (nothing is cached).
    """
    if images.dtype != torch.uint8 or images.dim() != 3 or len(images) == 0:
        raise ValueError(f"real images must be uint8 [N, H, W] with N >= 1, got {images.dtype} {list(images.shape)}")
    data_key = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()[:16]
    net_key = getattr(extractor, "sha256", None)
    if not net_key:
        raise ValueError(f"{type(extractor).__name__} has no sha256 attribute to key the real-feature cache")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"real_{net_key[:16]}_{data_key}.pt"
    if path.is_file():
        feats, problem = _read_cache(path, len(images), getattr(extractor, "num_features", None))
        if problem is None:
            return feats
        warnings.warn(f"real-feature cache {path} is unusable ({problem}); recomputing and overwriting it",
                      stacklevel=2)
    device = next(extractor.parameters()).device
    feats = torch.cat([
        extractor(images[i : i + batch_size].to(device).float().div(255).unsqueeze(1)).cpu()
        for i in range(0, len(images), batch_size)
    ])
    if not torch.isfinite(feats).all():
        raise ValueError(f"{type(extractor).__name__} returned NaN or inf features for the real images "
                         f"(not cached to {path}): check the feature network's weights")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache, suffix=".tmp", delete=False) as tmp:
        try:
            torch.save(feats, tmp)
        except BaseException:  # (a failed write left its .tmp file in the cache)
            tmp.close()
            os.remove(tmp.name)
            raise
    os.replace(tmp.name, path)
    return feats


def _read_cache(path: Path, rows: int, cols: int | None) -> tuple[Tensor | None, str | None]:
    """(features, None) if ``path`` holds finite float64 features [rows, cols] (cols None: any),
    else (None, why)."""
    try:
        feats = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to read a cache entry makes it stale: pickle, zip, EOF, OS
        return None, f"unreadable: {type(err).__name__}"
    if not isinstance(feats, Tensor):
        return None, f"holds a {type(feats).__name__}, not a tensor"
    if feats.dtype != torch.float64 or feats.dim() != 2 or feats.shape[0] != rows or cols not in (None, feats.shape[1]):
        return None, f"holds {feats.dtype} {list(feats.shape)}, expected torch.float64 [{rows}, {cols or 'F'}]"
    if not torch.isfinite(feats).all():
        return None, "holds NaN or inf"
    return feats, None
