"""IDX files, the format of MNIST, Fashion-MNIST and KMNIST: read, check, find, download.

An IDX file is a 4-byte big-endian magic number ``0x0000TTNN`` (``TT`` the element type, 0x08
for unsigned bytes; ``NN`` the number of dimensions), ``NN`` big-endian uint32 sizes, then the
elements in C order. Images are ``2051 = 0x0803`` ([N, rows, cols] bytes), labels ``2049 =
0x0801`` ([N] bytes). Files ending in ``.gz`` are gzip streams of the same bytes. The MNIST
family ships four such files under the same names; torchvision keeps them in
``<root>/<TorchvisionClass>/raw/``.

Reference: Y. LeCun, C. Cortes, C. J. C. Burges, "The MNIST database of handwritten digits",
http://yann.lecun.com/exdb/mnist/ (file format section).
"""
from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import torch
from torch import Tensor

# dataset argument -> torchvision class name, which is also torchvision's folder name
TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_FIX = "replace it with a good copy, or delete it and fetch it again with download=True"


class IDXFormatError(ValueError):
    """An IDX file is missing, truncated or corrupt; the message names the file."""


class IDXFileNotFoundError(FileNotFoundError, IDXFormatError):
    """IDX files are missing: both a FileNotFoundError and an :class:`IDXFormatError`."""


def _read_bytes(path: Path) -> bytes:
    """The file's IDX bytes, decompressed when its name ends in ``.gz``."""
    if not path.is_file():
        raise IDXFileNotFoundError(f"{path}: no such IDX file")
    data = path.read_bytes()
    if path.suffix != ".gz":
        if data[:2] == _GZIP_MAGIC:  # good data, wrong name: the advice is not to fetch it again
            raise IDXFormatError(f"{path}: a gzip stream without the .gz suffix; rename it to {path.name}.gz")
        return data
    if data[:3] == b"\0\0" + bytes([_UBYTE]):
        raise IDXFormatError(f"{path}: an uncompressed IDX file with a .gz suffix; rename it to {path.stem}")
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise IDXFormatError(f"{path}: bad gzip stream ({err}); {_FIX}") from err


def read_idx(path: str | Path, magic: int) -> Tensor:
    """Read one unsigned-byte IDX file and check its header against its size.

    Args:
        path: the file, ``.gz`` or uncompressed.
        magic: the magic number it must have (2051 images, 2049 labels).

    Returns:
        uint8 tensor with the shape the header declares, e.g. images [N, 28, 28], labels [N].

    Raises:
        IDXFileNotFoundError: the file does not exist.
        IDXFormatError: bad gzip stream, wrong magic number, or the header's sizes disagree with
            the number of bytes present (truncated file or trailing bytes).
    """
    path = Path(path)
    if isinstance(magic, bool) or not isinstance(magic, int) or magic >> 8 != _UBYTE or magic & 0xFF == 0:
        # (an assert, gone under python -O, which then read other element types as bytes)
        raise ValueError(f"magic must be an unsigned-byte IDX magic number 0x08NN with NN >= 1 dimensions "
                         f"(2051 images, 2049 labels): only those files are read, got {magic!r}")
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXFormatError(f"{path}: {len(data)} bytes, too short for an IDX header; {_FIX}")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise IDXFormatError(f"{path}: bad magic number {found}, expected {magic}; {_FIX}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(f"{path}: truncated header ({len(data)} of {header} bytes); {_FIX}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    declared, present = math.prod(shape), len(data) - header
    if present != declared:
        what = "truncated" if present < declared else "trailing bytes"
        raise IDXFormatError(
            f"{path}: {what}: header declares shape {list(shape)} = {declared} bytes of data "
            f"but the file holds {present}; {_FIX}"
        )
    if declared == 0:  # (frombuffer refuses an offset at the buffer's end)
        return torch.zeros(shape, dtype=torch.uint8)
    # bytearray: torch.frombuffer needs a writable buffer; one copy, ~20 ms for 47 MB
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).reshape(shape)


def read_images_labels(
    images_path: str | Path, labels_path: str | Path, image_shape: tuple[int, int], num_classes: int
) -> tuple[Tensor, Tensor]:
    """Read a matched pair of image and label files and check that they agree.

    Args:
        images_path: IDX images file (magic 2051).
        labels_path: IDX labels file (magic 2049).
        image_shape: the (rows, cols) every image must have, e.g. (28, 28).
        num_classes: labels must lie in ``[0, num_classes)``.

    Returns:
        images: uint8 [N, rows, cols]; labels: uint8 [N].

    Raises:
        IDXFormatError: either file is corrupt, holds no images, the image size is wrong, the
            counts differ, or a label is out of range.
    """
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[0] == 0:
        raise IDXFormatError(f"{images_path}: the header declares no images; {_FIX}")
    if tuple(images.shape[1:]) != tuple(image_shape):
        raise IDXFormatError(
            f"{images_path}: images are {list(images.shape[1:])}, expected {list(image_shape)}"
        )
    if images.shape[0] != labels.shape[0]:
        raise IDXFormatError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; the two files must come from the same release"
        )
    if labels.numel() and int(labels.max()) >= num_classes:
        raise IDXFormatError(
            f"{labels_path}: label {int(labels.max())} out of range [0, {num_classes}); {_FIX}"
        )
    return images, labels


def search_folders(data_dir: Path, dataset: str) -> list[Path]:
    """The folders searched for IDX files: torchvision's layout first, then the flat folder."""
    return [data_dir / TORCHVISION_CLASSES[dataset] / "raw", data_dir]


def find_files(data_dir: Path, dataset: str, names: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    """Look for IDX files in ``<data_dir>/<TorchvisionClass>/raw`` and then ``data_dir``, each
    uncompressed or ``.gz``; returns (paths found, names not found)."""
    folders = search_folders(data_dir, dataset)
    found, missing = [], []
    for name in names:
        hits = [d / n for d in folders for n in (name, f"{name}.gz") if (d / n).is_file()]
        if hits:
            found.append(hits[0])
        else:
            missing.append(name)
    return found, missing


def download(data_dir: Path, dataset: str) -> None:
    """Fetch the four IDX files through torchvision into ``<data_dir>/<TorchvisionClass>/raw``.

    torchvision downloads into a temporary folder inside ``data_dir``; only when it has finished
    (and checked the MD5s) are the files renamed into place, each rename atomic, so an
    interrupted download leaves no partial file where the reader looks.
    """
    import torchvision.datasets  # lazily: slow to import, needed only here

    cls_name = TORCHVISION_CLASSES[dataset]
    target = data_dir / cls_name / "raw"
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=data_dir))
    try:
        getattr(torchvision.datasets, cls_name)(root=str(tmp), train=True, download=True)
        source = tmp / cls_name / "raw"
        target.mkdir(parents=True, exist_ok=True)
        for name in SPLIT_FILES["train"] + SPLIT_FILES["test"]:
            for file in (name, f"{name}.gz"):
                if (source / file).is_file() and not (target / file).exists():
                    os.replace(source / file, target / file)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
