"""MNISTDataModule against the real MNIST files: layouts, split, formats, loaders, trainer."""
from __future__ import annotations

import gzip
import inspect
import shutil
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from lightning_genmodels.data import INPUT_FORMATS, MNISTDataModule, pass_through
from lightning_genmodels.data.idx import IDXFileNotFoundError, IDXFormatError

NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte"]
TEST_LABELS_HEAD = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def make_dm(data_dir: Path, stage: str = "fit", **kwargs) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(data_dir), **kwargs)
    dm.setup(stage)
    return dm


@pytest.fixture(scope="module")
def fit_dm(mnist_dir: Path) -> MNISTDataModule:
    return make_dm(mnist_dir, None, val_split=5000, seed=0)


def test_sizes_labels_and_means(mnist_dir: Path) -> None:
    dm = make_dm(mnist_dir, None, val_split=0, input_format="unit", batch_size=1000)
    assert len(dm.data_train) == 60_000 and len(dm.data_val) == 0 and len(dm.data_test) == 10_000
    assert dm.data_train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert round(dm.data_train.images.double().mean().item() / 255, 4) == 0.1307
    batches = list(dm.test_dataloader())
    x = torch.cat([b[0] for b in batches]).double()
    assert torch.cat([b[1] for b in batches])[:10].tolist() == TEST_LABELS_HEAD
    assert round(x.mean().item(), 4) == 0.1325
    assert [len(b[1]) for b in dm.predict_dataloader()] == [len(b[1]) for b in batches]


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("compressed", [True, False])
def test_layouts(mnist_dir: Path, tmp_path: Path, layout: str, compressed: bool) -> None:
    folder = tmp_path / "FashionMNIST" / "raw" if layout == "torchvision" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES[2:]:
        data = (mnist_dir / f"{name}.gz").read_bytes()
        if compressed:
            (folder / f"{name}.gz").write_bytes(data)
        else:
            (folder / name).write_bytes(gzip.decompress(data))
    dm = make_dm(tmp_path, "test", dataset="fashion_mnist")
    assert len(dm.data_test) == 10_000 and dm.data_test.labels[:10].tolist() == TEST_LABELS_HEAD


def test_missing_files_without_download(tmp_path: Path) -> None:
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False)
    dm.prepare_data()  # nothing to do, no error yet
    with pytest.raises(FileNotFoundError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in msg and str(tmp_path) in msg
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert "download=True" in msg and "data_dir" in msg
    assert isinstance(err.value, IDXFileNotFoundError)


def test_corrupt_file_surfaces_in_setup(mnist_dir: Path, tmp_path: Path) -> None:
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01\0\0\x27\x10" + bytes(9_000))
    with pytest.raises(IDXFormatError, match="truncated") as err:
        make_dm(tmp_path, "test")
    assert str(tmp_path / "t10k-labels-idx1-ubyte") in str(err.value)


def test_env_var_data_dir(mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGM_DATA_DIR", str(mnist_dir))
    assert MNISTDataModule().data_dir == mnist_dir
    assert MNISTDataModule(data_dir="elsewhere").data_dir == Path("elsewhere")



def test_data_dir_expands_home(mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """data_dir="~/..." (and $LGM_DATA_DIR) reads under the home folder, as torchvision's root does
    (it searched a literal '~' folder in the working directory); an empty $LGM_DATA_DIR is unset."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "mnist").mkdir()
    for name in NAMES[2:]:
        shutil.copy(mnist_dir / f"{name}.gz", tmp_path / "mnist")
    assert len(make_dm(Path("~/mnist"), "test").data_test) == 10_000
    monkeypatch.setenv("LGM_DATA_DIR", "~/mnist")
    assert MNISTDataModule().data_dir == tmp_path / "mnist"
    monkeypatch.setenv("LGM_DATA_DIR", "")
    assert MNISTDataModule().data_dir == Path("data")

def test_split_determinism(mnist_dir: Path, fit_dm: MNISTDataModule) -> None:
    same = make_dm(mnist_dir, val_split=5000, seed=0)
    other = make_dm(mnist_dir, val_split=5000, seed=1)
    assert torch.equal(same.data_val.images, fit_dm.data_val.images)
    assert torch.equal(same.data_train.labels, fit_dm.data_train.labels)
    assert not torch.equal(other.data_val.images, fit_dm.data_val.images)
    # train and val partition the training file: sizes and per-class counts add up
    for dm in (fit_dm, other):
        assert len(dm.data_train) == 55_000 and len(dm.data_val) == 5_000
        counts = sum(torch.bincount(d.labels, minlength=10) for d in (dm.data_train, dm.data_val))
        assert counts.tolist() == torch.bincount(dm._load("train")[1].long(), minlength=10).tolist()


def test_split_fraction(mnist_dir: Path) -> None:
    dm = make_dm(mnist_dir, val_split=0.1, seed=3)
    assert len(dm.data_val) == 6_000 and len(dm.data_train) == 54_000


@pytest.mark.parametrize("option, value, match", [
    ("seed", -1, r"seed=-1 must be an integer in \[0, 9223372036854775807\]"),  # failed at the first batch as -2
    ("seed", 2**63, "seed=9223372036854775808 must be"),
    ("seed", 1.5, "seed=1.5 must be an integer"),
    ("seed", None, "seed=None must be an integer"),
    ("batch_size", 0, "batch_size=0 must be an integer >= 1"),  # failed inside torch's BatchSampler
    ("num_workers", -1, "num_workers=-1 must be an integer >= 0"),
])
def test_bad_integer_options_are_named_when_built(option: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MNISTDataModule(**{option: value})


@pytest.mark.parametrize("val_split", [-1, 1.0, 1.5, True])
def test_bad_val_split(val_split: float) -> None:
    with pytest.raises(ValueError, match="val_split"):
        MNISTDataModule(val_split=val_split)


def test_val_split_too_large(mnist_dir: Path) -> None:
    with pytest.raises(ValueError, match="leaves no training data"):
        make_dm(mnist_dir, val_split=60_000)


def test_eval_loaders_keep_every_sample(mnist_dir: Path) -> None:
    dm = make_dm(mnist_dir, None, val_split=1000, batch_size=384)
    for loader, dataset in [(dm.val_dataloader(), dm.data_val), (dm.test_dataloader(), dm.data_test)]:
        labels = torch.cat([y for _, y in loader])
        assert len(labels) == len(dataset) and len(dataset) % 384 != 0
        assert torch.equal(labels, dataset.labels)  # in order: no shuffle, nothing dropped
    assert sum(len(y) for _, y in dm.train_dataloader()) == 59_000


def test_loader_settings(fit_dm: MNISTDataModule) -> None:
    dm = MNISTDataModule(num_workers=2, pin_memory=True, batch_size=64)
    dm.data_test = fit_dm.data_test
    loader = dm.test_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers and loader.pin_memory
    assert loader.batch_size == 64 and not loader.drop_last
    assert not fit_dm.val_dataloader().persistent_workers


def test_workers_build_batches(fit_dm: MNISTDataModule) -> None:
    dm = MNISTDataModule(num_workers=1, batch_size=2500, input_format="binarized")
    dm.data_test = fit_dm.data_test  # borrowed: no second read of the files
    batches = list(dm.test_dataloader())
    assert [tuple(x.shape) for x, _ in batches] == [(2500, 1, 28, 28)] * 4


@pytest.mark.parametrize("input_format", INPUT_FORMATS)
def test_input_formats(mnist_dir: Path, input_format: str) -> None:
    dm = make_dm(mnist_dir, "test", input_format=input_format, batch_size=500)
    x, y = next(iter(dm.test_dataloader()))
    x2, _ = next(iter(dm.test_dataloader()))
    flat = input_format.endswith("flat")
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and y.shape == (500,)
    assert x.shape == ((500, 784) if flat else (500, 1, 28, 28))
    assert dm.dims == tuple(x.shape[1:])
    pixels = dm.data_test.images[:500].reshape(x.shape).float()
    base = input_format.removesuffix("_flat").removesuffix("flat") or "unit"
    if base == "unit":
        assert torch.allclose(x, pixels / 255) and x.min() == 0 and x.max() == 1
    elif base == "symmetric":
        assert torch.allclose(x, pixels / 127.5 - 1) and x.min() == -1 and x.max() == 1
    elif base == "binarized":
        assert set(x.unique().tolist()) == {0.0, 1.0} and not torch.equal(x, x2)
        assert abs(x.mean().item() - pixels.mean().item() / 255) < 0.01
        assert torch.all(x[pixels == 0] == 0) and torch.all(x[pixels == 255] == 1)
    else:  # dequantized: inside (0, 1), in the pixel's bin [x/256, (x+1)/256], noise fixed per sample
        assert x.min() > 0 and x.max() < 1 and torch.equal(x, x2)
        offset = x * 256 - pixels
        assert offset.min() >= 0 and offset.max() <= 1
        assert abs(offset.mean().item() - 0.5) < 0.01


@pytest.mark.parametrize("bad", ["Unit", "binary", "flat_unit", ""])
def test_bad_input_format(bad: str) -> None:
    with pytest.raises(ValueError, match="dequantized_flat") as err:
        MNISTDataModule(input_format=bad)
    assert repr(bad) in str(err.value)


def test_single_item(fit_dm: MNISTDataModule) -> None:
    x, y = fit_dm.data_test[0]
    assert x.shape == (1, 28, 28) and int(y) == 7


def test_distributed_sampler(fit_dm: MNISTDataModule) -> None:
    dataset = fit_dm.data_test
    sampler = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=False)
    loader = DataLoader(dataset, batch_size=96, sampler=sampler, collate_fn=pass_through)
    batches = list(loader)
    assert all(x.shape == (96, 1, 28, 28) for x, _ in batches[:-1])
    assert sum(len(y) for _, y in batches) == 5_000
    assert torch.equal(torch.cat([y for _, y in batches]), dataset.labels[0::2])


def test_train_epoch_is_fast(fit_dm: MNISTDataModule) -> None:
    dm = MNISTDataModule(batch_size=128, input_format="dequantized")
    dm.data_train = fit_dm.data_train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only add contention on a busy CI machine
    try:
        start = time.perf_counter()
        seen = torch.cat([y for _, y in dm.train_dataloader()])
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    assert len(seen) == 55_000 and not torch.equal(seen, dm.data_train.labels)  # shuffled
    assert elapsed < 5.0, f"one epoch of batches took {elapsed:.2f} s"


def test_hparams_and_signature() -> None:
    dm = MNISTDataModule(batch_size=32, input_format="flat", val_split=0.2)
    assert dm.hparams.batch_size == 32 and dm.hparams.input_format == "flat"
    assert dm.input_format == "unit_flat" and dm.dims == (784,) and dm.num_classes == 10
    assert MNISTDataModule().dims == (1, 28, 28)
    for p in list(inspect.signature(MNISTDataModule.__init__).parameters.values())[1:]:
        assert p.annotation is not inspect.Parameter.empty and p.default is not inspect.Parameter.empty


class Stub(L.LightningModule):
    """One training and one validation step; records the training batch it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: torch.Tensor | None = None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen = batch[0]
        return self.layer(batch[0].mean().reshape(1, 1)).sum()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        assert batch[0].shape == self.seen.shape

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class BinarizedStub(Stub):
    input_format = "binarized_flat"


class FlatStub(Stub):
    input_format = "unit_flat"


def fit_one_step(model: L.LightningModule, dm: MNISTDataModule) -> None:
    trainer = L.Trainer(
        accelerator="cpu", fast_dev_run=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(model, datamodule=dm)


@pytest.mark.parametrize(
    "model_cls, dm_format, expected",
    [(BinarizedStub, None, "binarized_flat"), (Stub, None, "unit"), (FlatStub, "flat", "unit_flat")],
)
def test_format_adopted_from_model(
    mnist_dir: Path, model_cls: type[Stub], dm_format: str | None, expected: str
) -> None:
    model = model_cls()
    dm = MNISTDataModule(data_dir=str(mnist_dir), input_format=dm_format, batch_size=64)
    fit_one_step(model, dm)
    assert dm.input_format == expected and dm.hparams.input_format == dm_format
    assert model.seen.shape == ((64, 784) if expected.endswith("flat") else (64, 1, 28, 28))
    if expected == "binarized_flat":
        assert set(model.seen.unique().tolist()) == {0.0, 1.0}


def test_format_mismatch_raises(mnist_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=str(mnist_dir), input_format="symmetric")
    match = "model BinarizedStub needs .*'binarized_flat' but the datamodule gives 'symmetric'"
    with pytest.raises(ValueError, match=match):
        fit_one_step(BinarizedStub(), dm)


def test_setup_without_trainer_uses_unit(fit_dm: MNISTDataModule) -> None:
    assert fit_dm.input_format == "unit"
    x, _ = next(iter(fit_dm.val_dataloader()))
    assert x.shape[1:] == (1, 28, 28) and 0 <= x.min() and x.max() <= 1


def test_dequantization_noise_is_fixed_per_sample(mnist_dir: Path) -> None:
    """EM must see the same data every epoch: a sample's noise is keyed by its index."""
    dm = make_dm(mnist_dir, "fit", val_split=59000, input_format="dequantized_flat", batch_size=250, seed=3)
    ds = dm.data_train  # 1000 training samples
    a = ds.__getitems__([5, 17, 900])[0]
    b = ds.__getitems__([900, 5])[0]  # another batch, another order
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])
    epochs = [torch.cat([x for x, _ in dm.train_dataloader()]) for _ in range(2)]  # shuffled
    assert torch.equal(epochs[0].sort(0).values, epochs[1].sort(0).values)
    pixels = ds.images[[5, 17, 900]].reshape(3, -1).double()
    u = a.double() * 256 - pixels  # the noise itself: U(0, 1)
    assert 0.0 <= float(u.min()) and float(u.max()) <= 1.0
    u_all = torch.cat([x for x, _ in dm.train_dataloader()]).double() * 256
    u_all = u_all - u_all.floor()
    assert abs(float(u_all.mean()) - 0.5) < 0.01 and abs(float(u_all.var()) - 1 / 12) < 0.01
    other = make_dm(mnist_dir, "fit", val_split=59000, input_format="dequantized_flat", seed=4)
    assert not torch.equal(other.data_train.__getitems__([5])[0], ds.__getitems__([5])[0])
