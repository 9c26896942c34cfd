"""The data helpers name bad arguments: format_images takes pixel bytes (float images were
divided by 255 in place, the caller's tensor too), noise of the batch's size; read_idx an
unsigned-byte magic number (an assert, gone under python -O, read other element types as bytes)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_genmodels.data import ImageTensorDataset, format_images, read_idx


@pytest.mark.parametrize("x, noise, match", [
    (torch.rand(2, 28, 28), None, r"uint8 \[B, H, W\], got torch.float32 \[2, 28, 28\]"),
    (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), None, r"got torch.uint8 \[2, 1, 28, 28\]"),
    (torch.zeros(2, 28, 28, dtype=torch.uint8), torch.rand(2, 10), r"noise must be \[B, H \* W\] = \[2, 784\]"),
], ids=["float", "4d", "noise"])
def test_format_images_names_bad_input(x: torch.Tensor, noise, match: str) -> None:
    before = x.clone()
    with pytest.raises(ValueError, match=match):
        format_images(x, "dequantized", noise)
    assert torch.equal(x, before)


@pytest.mark.parametrize("magic", [0x0D03, 0x0800, 2051.0, True])
def test_read_idx_refuses_magic_numbers_it_cannot_read(magic, tmp_path: Path) -> None:
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(b"\0\0\x0d\x03" + b"\0\0\0\x01" * 3 + b"\0" * 4)
    with pytest.raises(ValueError, match="unsigned-byte IDX magic number"):
        read_idx(path, magic)


IMAGES = torch.zeros(4, 28, 28, dtype=torch.uint8)
LABELS = torch.zeros(4, dtype=torch.uint8)


@pytest.mark.parametrize("kwargs, match", [
    ({"images": IMAGES.float()}, r"images must be uint8 \[N, H, W\], got torch.float32"),
    ({"labels": LABELS[:3]}, r"labels must be integers \[N\] = \[4\], got torch.uint8 \[3\]"),
    ({"labels": torch.tensor([0.5, 1, 2, 3])}, r"labels must be integers .* got torch.float32"),  # (0.5 became 0)
    ({"keys": torch.arange(2)}, r"keys must be \[N\] = \[4\], got \[2\]"),
], ids=["float_images", "short_labels", "float_labels", "short_keys"])
def test_image_tensor_dataset_checks_when_built(kwargs, match: str) -> None:
    args = {"images": IMAGES, "labels": LABELS, "input_format": "dequantized", **kwargs}
    with pytest.raises(ValueError, match=match):  # (an IndexError at the first batch past them)
        ImageTensorDataset(**args)
