"""IDX reader: real MNIST, corrupt copies, file search, and the download's atomic move."""
from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import pytest
import torch
import torchvision.datasets

from lightning_genmodels.data import MNISTDataModule
from lightning_genmodels.data.idx import (
    IDXFileNotFoundError,
    IDXFormatError,
    find_files,
    read_idx,
    read_images_labels,
)

TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
ALL_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", TEST_IMAGES, TEST_LABELS]


@pytest.fixture
def test_pair(mnist_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Uncompressed copies of the test images and labels in tmp_path, free to corrupt."""
    paths = []
    for name in (TEST_IMAGES, TEST_LABELS):
        (tmp_path / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
        paths.append(tmp_path / name)
    return paths[0], paths[1]


def read_pair(images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return read_images_labels(images, labels, (28, 28), 10)


def test_real_mnist(mnist_dir: Path) -> None:
    x, y = read_pair(mnist_dir / "train-images-idx3-ubyte.gz", mnist_dir / "train-labels-idx1-ubyte.gz")
    assert x.shape == (60_000, 28, 28) and x.dtype == torch.uint8 and y.shape == (60_000,)
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert round(x.double().mean().item() / 255, 4) == 0.1307
    x, y = read_pair(mnist_dir / f"{TEST_IMAGES}.gz", mnist_dir / f"{TEST_LABELS}.gz")
    assert x.shape == (10_000, 28, 28) and y.shape == (10_000,)
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert round(x.double().mean().item() / 255, 4) == 0.1325


def test_uncompressed_equals_gz(mnist_dir: Path, test_pair: tuple[Path, Path]) -> None:
    assert torch.equal(read_pair(*test_pair)[0], read_idx(mnist_dir / f"{TEST_IMAGES}.gz", 2051))


def test_truncated_file(test_pair: tuple[Path, Path]) -> None:
    images, labels = test_pair
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(IDXFormatError, match="truncated") as err:
        read_pair(images, labels)
    assert str(images) in str(err.value)


def test_trailing_bytes(test_pair: tuple[Path, Path]) -> None:
    images, labels = test_pair
    labels.write_bytes(labels.read_bytes() + b"\0\0")
    with pytest.raises(IDXFormatError, match="trailing bytes") as err:
        read_pair(images, labels)
    assert str(labels) in str(err.value)


def test_truncated_header(test_pair: tuple[Path, Path]) -> None:
    images, labels = test_pair
    images.write_bytes(images.read_bytes()[:10])
    with pytest.raises(IDXFormatError, match="truncated header"):
        read_pair(images, labels)


@pytest.mark.parametrize("which", [0, 1])
def test_bad_magic(test_pair: tuple[Path, Path], which: int) -> None:
    path = test_pair[which]
    path.write_bytes(struct.pack(">I", 2050) + path.read_bytes()[4:])
    with pytest.raises(IDXFormatError, match="bad magic number 2050") as err:
        read_pair(*test_pair)
    assert str(path) in str(err.value)


def test_images_and_labels_swapped(test_pair: tuple[Path, Path]) -> None:
    with pytest.raises(IDXFormatError, match="bad magic number 2049, expected 2051"):
        read_pair(test_pair[1], test_pair[0])


@pytest.mark.parametrize("damage", ["garbage", "flipped", "truncated"])
def test_corrupt_gzip(mnist_dir: Path, tmp_path: Path, damage: str) -> None:
    data = bytearray((mnist_dir / f"{TEST_IMAGES}.gz").read_bytes())
    if damage == "garbage":
        data = bytearray(b"not a gzip stream at all")
    elif damage == "flipped":
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    else:
        data = data[: len(data) // 2]
    path = tmp_path / f"{TEST_IMAGES}.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(IDXFormatError, match="bad gzip stream") as err:
        read_idx(path, 2051)
    assert str(path) in str(err.value)



def test_misnamed_compression_is_named(mnist_dir: Path, tmp_path: Path) -> None:
    """A gzip stream without .gz, or an uncompressed file with it: the error says to rename it
    (it said 'bad magic number 529205256' or 'bad gzip stream', and to fetch the file again)."""
    data = (mnist_dir / f"{TEST_LABELS}.gz").read_bytes()
    (tmp_path / TEST_LABELS).write_bytes(data)
    with pytest.raises(IDXFormatError, match=f"gzip stream without the .gz suffix; rename it to {TEST_LABELS}.gz"):
        read_idx(tmp_path / TEST_LABELS, 2049)
    (tmp_path / f"{TEST_IMAGES}.gz").write_bytes(gzip.decompress((mnist_dir / f"{TEST_IMAGES}.gz").read_bytes()))
    with pytest.raises(IDXFormatError, match=f"uncompressed IDX file with a .gz suffix; rename it to {TEST_IMAGES}$"):
        read_idx(tmp_path / f"{TEST_IMAGES}.gz", 2051)

def test_count_mismatch(test_pair: tuple[Path, Path]) -> None:
    images, labels = test_pair
    data = labels.read_bytes()
    labels.write_bytes(data[:4] + struct.pack(">I", 9_999) + data[8:-1])  # a valid 9,999-label file
    with pytest.raises(IDXFormatError, match="10000 images but .* 9999 labels") as err:
        read_pair(images, labels)
    assert str(images) in str(err.value) and str(labels) in str(err.value)


def test_label_out_of_range(test_pair: tuple[Path, Path]) -> None:
    images, labels = test_pair
    data = bytearray(labels.read_bytes())
    data[8 + 123] = 10
    labels.write_bytes(bytes(data))
    with pytest.raises(IDXFormatError, match="label 10 out of range") as err:
        read_pair(images, labels)
    assert str(labels) in str(err.value)


def test_files_declaring_no_items(test_pair: tuple[Path, Path]) -> None:
    """A valid header with count 0 (or a 0 dimension) raised torch.frombuffer's offset error,
    naming no file; the reader returns the empty tensor, and a data set of no images is named."""
    images, labels = test_pair
    labels.write_bytes(struct.pack(">II", 2049, 0))
    assert read_idx(labels, 2049).shape == (0,)
    images.write_bytes(struct.pack(">IIII", 2051, 0, 28, 28))
    assert read_idx(images, 2051).shape == (0, 28, 28)
    with pytest.raises(IDXFormatError, match="the header declares no images") as err:
        read_pair(images, labels)
    assert str(images) in str(err.value)


def test_wrong_image_size(test_pair: tuple[Path, Path]) -> None:
    with pytest.raises(IDXFormatError, match=r"images are \[28, 28\], expected \[32, 32\]"):
        read_images_labels(*test_pair, (32, 32), 10)


def test_missing_file(test_pair: tuple[Path, Path]) -> None:
    images, labels = test_pair
    labels.unlink()
    with pytest.raises(IDXFileNotFoundError, match="no such IDX file") as err:
        read_pair(images, labels)
    assert str(labels) in str(err.value)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)


def test_find_files_prefers_torchvision_layout(mnist_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    shutil.copy(mnist_dir / f"{TEST_IMAGES}.gz", raw)
    (raw / TEST_LABELS).write_bytes(b"")
    (tmp_path / TEST_LABELS).write_bytes(b"")
    found, missing = find_files(tmp_path, "kmnist", (TEST_IMAGES, TEST_LABELS, "absent"))
    assert found == [raw / f"{TEST_IMAGES}.gz", raw / TEST_LABELS] and missing == ["absent"]
    assert find_files(tmp_path, "mnist", (TEST_IMAGES,)) == ([], [TEST_IMAGES])


class FakeMNIST:
    """Stands in for torchvision.datasets.MNIST: "downloads" by copying the real files into
    ``root/MNIST/raw``; with ``fail_after`` set it raises after that many files."""

    source: Path
    fail_after: int | None = None
    roots: list[Path] = []

    def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
        assert download
        self.roots.append(Path(root))
        raw = Path(root) / type(self).__name__ / "raw"
        raw.mkdir(parents=True)
        for i, name in enumerate(ALL_FILES):
            if i == self.fail_after:
                raise RuntimeError("connection reset")
            shutil.copy(self.source / f"{name}.gz", raw)
            (raw / name).write_bytes(gzip.decompress((raw / f"{name}.gz").read_bytes()))


@pytest.fixture
def fake_mnist(monkeypatch: pytest.MonkeyPatch, mnist_dir: Path) -> type[FakeMNIST]:
    fake = type("MNIST", (FakeMNIST,), {"source": mnist_dir, "roots": []})
    monkeypatch.setattr(torchvision.datasets, "MNIST", fake)
    return fake


def test_download_moves_finished_files(fake_mnist: type[FakeMNIST], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    dm = MNISTDataModule(data_dir=str(data_dir), download=True, val_split=0)
    dm.prepare_data()
    raw = data_dir / "MNIST" / "raw"
    assert sorted(p.name for p in data_dir.iterdir()) == ["MNIST"]  # temporary folder removed
    assert sorted(p.name for p in raw.iterdir()) == sorted(ALL_FILES + [f"{n}.gz" for n in ALL_FILES])
    assert fake_mnist.roots[0].parent == data_dir  # downloaded beside, under a temporary name
    dm.setup("test")
    assert dm.data_test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    dm.prepare_data()  # files present: no second download
    assert len(fake_mnist.roots) == 1


def test_interrupted_download_leaves_nothing(fake_mnist: type[FakeMNIST], tmp_path: Path) -> None:
    fake_mnist.fail_after = 2
    dm = MNISTDataModule(data_dir=str(tmp_path), download=True)
    with pytest.raises(RuntimeError, match="connection reset"):
        dm.prepare_data()
    assert list(tmp_path.rglob("*")) == []


def test_no_download_without_flag(fake_mnist: type[FakeMNIST], tmp_path: Path) -> None:
    MNISTDataModule(data_dir=str(tmp_path)).prepare_data()
    assert fake_mnist.roots == [] and list(tmp_path.iterdir()) == []
