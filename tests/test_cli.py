"""The LightningCLI entry point: fit end to end, model selection by name and path, errors."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lightning_genmodels import GaussianMixture
from lightning_genmodels.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "gmm_mnist.yaml"
K = 3
# 12 samples, 4 per row: torchvision's make_grid with padding 2 around 28-pixel images.
NUM_SAMPLES, NROW = 12, 4
GRID_SIZE = (NROW * 30 + 2, (NUM_SAMPLES // NROW) * 30 + 2)  # PIL's (width, height)



class MyGMM(GaussianMixture):
    """A user's subclass, selected by its import path ``tests.test_cli.MyGMM``."""

    def __init__(self, tag: str = "default", **kwargs) -> None:
        super().__init__(**kwargs)
        self.tag = tag


def fit_args(mnist_dir: Path, tmp_path: Path, model: str | None = None) -> list[str]:
    """A two-iteration fit of the shipped config, with every output under ``tmp_path``."""
    args = ["fit", "--config", str(CONFIG)]
    if model is not None:
        args += ["--model", model]
    return args + [
        "--data.data_dir", str(mnist_dir),
        "--data.batch_size", "10000",
        "--model.n_components", str(K),
        "--model.max_iter", "2",
        "--trainer.max_epochs", "2",
        "--trainer.accelerator", "cpu",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(tmp_path),
        # Without ``+=`` these edit the config's SampleGrid instead of appending a second one.
        "--trainer.callbacks.path", str(tmp_path / "samples.png"),
        "--trainer.callbacks.num_samples", str(NUM_SAMPLES),
        "--trainer.callbacks.nrow", str(NROW),
    ]


def printed_metric(out: str, name: str) -> float:
    """The value of ``name`` in the metrics table the CLI prints after fit."""
    values = [line.split()[1] for line in out.splitlines() if line.split()[:1] == [name]]
    assert len(values) == 1, f"{name} not printed once in:\n{out}"
    return float(values[0])


def check_grid(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == GRID_SIZE
        pixels = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32))
    assert pixels.std() > 0, "the sample grid is a constant image"


def check_fitted(model: GaussianMixture) -> None:
    assert model.fitted and model.n_iter_ == 2
    assert model.means_.shape == (K, 784) and model.covariances_.shape == (K, 784)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        assert torch.isfinite(getattr(model, name)).all(), name
    torch.testing.assert_close(model.weights_.sum().double(), torch.tensor(1.0, dtype=torch.float64))
    assert math.isfinite(model.lower_bound_)


@pytest.mark.parametrize("model", ["GaussianMixture", "lightning_genmodels.GaussianMixture"])
def test_fit_writes_grid_and_prints_metrics(
    mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, model: str
) -> None:
    cli = main(args=fit_args(mnist_dir, tmp_path, model))
    out = capsys.readouterr().out

    assert type(cli.model) is GaussianMixture
    assert cli.model.hparams.n_components == K and cli.model.hparams.covariance_type == "diag"
    check_fitted(cli.model)
    check_grid(tmp_path / "samples.png")
    assert printed_metric(out, "train/lower_bound") == pytest.approx(cli.model.lower_bound_, rel=1e-5)
    assert math.isfinite(printed_metric(out, "val/log_likelihood"))
    assert (tmp_path / "config.yaml").is_file()


def test_user_subclass_by_import_path(mnist_dir: Path, tmp_path: Path) -> None:
    args = fit_args(mnist_dir, tmp_path, "tests.test_cli.MyGMM") + ["--model.tag", "mine"]
    cli = main(args=args)

    assert type(cli.model) is MyGMM and cli.model.tag == "mine"
    # Arguments of the base class come through from the config and the command line.
    assert cli.model.hparams.n_components == K and cli.model.hparams.reg_covar == 1e-3
    check_fitted(cli.model)
    check_grid(tmp_path / "samples.png")


@pytest.mark.parametrize("given, want", [
    (["--trainer.limit_val_batches", "1"], 1),  # one batch (jsonargparse alone makes it 1.0: all)
    (["--trainer.limit_val_batches=2", "--trainer.val_check_interval", "1"], 2),
    (["--trainer.limit_val_batches", "0.5"], 0.5),
    (["--trainer.limit_val_batches", "1.0"], 1.0),
    (["--config", "LIMIT"], 1),  # YAML `limit_val_batches: 1`
    (["--config", "LIMIT", "--trainer.limit_val_batches", "0.25"], 0.25),
    (["--trainer", "TRAINER"], 1),  # a trainer-only config file: was 1.0
    (["--trainer", '{"limit_val_batches": 1}'], 1),
    (["--trainer.limit_val_batches", "1", "--config", "HALF"], 0.5),  # the later config wins: was 1
])
def test_integer_batch_limits_stay_integers(mnist_dir: Path, tmp_path: Path, given: list, want) -> None:
    files = {"LIMIT": "trainer:\n  limit_val_batches: 1\n", "TRAINER": "limit_val_batches: 1\n",
             "HALF": "trainer:\n  limit_val_batches: 0.5\n"}
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    given = [str(tmp_path / f"{a}.yaml") if a in files else a for a in given]
    cli = main(args=["--config", str(CONFIG), "--data.data_dir", str(mnist_dir),
                     "--trainer.default_root_dir", str(tmp_path), *given], run=False)
    assert cli.trainer.limit_val_batches == want and type(cli.trainer.limit_val_batches) is type(want)
    if "val_check_interval" in given:
        assert cli.trainer.val_check_interval == 1 and type(cli.trainer.val_check_interval) is int


def test_integer_batch_limits_under_the_subcommand_of_a_top_level_config(mnist_dir: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """A config before the subcommand, ``fit: trainer: limit_val_batches: 1``, was read as 1.0."""
    top = tmp_path / "top.yaml"
    top.write_text("fit:\n  trainer:\n    limit_val_batches: 1\n    limit_train_batches: 0.5\n")
    with pytest.raises(SystemExit) as exit_info:
        main(args=["--config", str(top), "fit", "--config", str(CONFIG), "--data.data_dir", str(mnist_dir),
                   "--print_config"])
    assert exit_info.value.code == 0
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert trainer["limit_val_batches"] == 1 and type(trainer["limit_val_batches"]) is int
    assert trainer["limit_train_batches"] == 0.5


def test_integer_batch_limits_of_a_dict_config(mnist_dir: Path, tmp_path: Path) -> None:
    """main(args=dict), LightningCLI's structured form, read ``limit_val_batches: 1`` as 1.0 (every batch)."""
    args = {"model": {"class_path": "GaussianMixture", "init_args": {"n_components": 2}},
            "data": {"init_args": {"data_dir": str(mnist_dir)}},
            "trainer": {"limit_val_batches": 1, "limit_train_batches": 0.5, "default_root_dir": str(tmp_path)}}
    cli = main(args=args, run=False)
    assert cli.trainer.limit_val_batches == 1 and type(cli.trainer.limit_val_batches) is int
    assert cli.trainer.limit_train_batches == 0.5


def test_saved_config_keeps_integer_limits(mnist_dir: Path, tmp_path: Path) -> None:
    """config.yaml said ``limit_val_batches: 1.0`` (all batches) for ``1`` (one batch)."""
    main(args=fit_args(mnist_dir, tmp_path) + ["--trainer.limit_val_batches", "1",
                                               "--trainer.limit_train_batches", "0.5"])
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())["trainer"]
    assert saved["limit_val_batches"] == 1 and type(saved["limit_val_batches"]) is int
    assert saved["limit_train_batches"] == 0.5


def test_printed_config_keeps_integer_limits(mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--print_config wrote ``limit_val_batches: 1.0`` for ``1``: a run from it took every batch."""
    with pytest.raises(SystemExit) as exit_info:
        main(args=["fit", "--config", str(CONFIG), "--data.data_dir", str(mnist_dir),
                   "--trainer.limit_val_batches", "1", "--trainer.limit_train_batches", "0.5",
                   "--trainer.val_check_interval", "1", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    trainer = printed["trainer"]
    assert (trainer["limit_val_batches"], trainer["limit_train_batches"], trainer["val_check_interval"]) == (1, 0.5, 1)
    assert type(trainer["limit_val_batches"]) is int and type(trainer["val_check_interval"]) is int
    for key in ("ckpt_path", "weights_only"):  # fit's own options: not taken without a subcommand
        printed.pop(key, None)
    path = tmp_path / "printed.yaml"
    path.write_text(yaml.safe_dump(printed, sort_keys=False))
    cli = main(args=["--config", str(path), "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert cli.trainer.limit_val_batches == 1 and type(cli.trainer.limit_val_batches) is int
    assert cli.trainer.val_check_interval == 1 and type(cli.trainer.val_check_interval) is int


@pytest.mark.parametrize("option, want", [
    (["--model.n_components", "-1"], "error: lightning_genmodels.GaussianMixture: n_components must be an integer >= 1, got -1"),
    (["--data.val_split", "2.0"], "error: lightning_genmodels.MNISTDataModule: val_split=2.0: give a count"),
    (["--trainer.callbacks+=SampleGrid", "--trainer.callbacks.path", "a.png", "--trainer.callbacks.num_samples", "-1"],
     "error: lightning_genmodels.SampleGrid: num_samples=-1 must be an integer >= 1\n"),
])
def test_a_constructor_error_is_one_line(mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                         option: list, want: str) -> None:
    """It was a 75-line traceback ending in jsonargparse's union report."""
    with pytest.raises(SystemExit) as exit_info:
        main(args=["fit", "--model", "GaussianMixture", "--data.data_dir", str(mnist_dir),
                   "--trainer.default_root_dir", str(tmp_path), *option])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert want in err and "Traceback" not in err and "Given value" not in err
    assert "Not a valid subclass" not in err  # the list's other subtype, a single Callback: noise


def test_data_defaults_to_mnist(mnist_dir: Path, tmp_path: Path) -> None:
    """The docs promised MNISTDataModule without --data; --data.batch_size alone was an error."""
    cli = main(args=["--model", "GaussianMixture", "--model.n_components", "3", "--data.data_dir", str(mnist_dir),
                     "--data.batch_size", "100", "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert type(cli.datamodule).__name__ == "MNISTDataModule" and cli.datamodule.hparams.batch_size == 100


def test_help_lists_subcommands(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args=["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for subcommand in ("fit", "validate", "test", "predict"):
        assert f"    {subcommand}" in out, subcommand


def test_bad_option_names_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["fit", "--config", str(CONFIG), "--model.covariance_type", "bogus",
            "--trainer.default_root_dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main(args=args)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "covariance_type" in err and "bogus" in err
    assert not (tmp_path / "config.yaml").exists()


def test_python_dash_m_fit_prints_the_table_and_the_png_only(mnist_dir: Path, tmp_path: Path) -> None:
    # tol=1e9: EM converges at its 2nd iteration, so no ConvergenceWarning is due either.
    result = subprocess.run(
        [sys.executable, "-m", "lightning_genmodels", *fit_args(mnist_dir, tmp_path), "--model.tol", "1e9"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""  # no Lightning banner, tips or warnings
    lines = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert lines == ["wrote", "metric", "train/lower_bound", "val/log_likelihood"], result.stdout
    assert str(tmp_path / "samples.png") in result.stdout
    check_grid(tmp_path / "samples.png")


def test_python_dash_m_validate_of_an_unfitted_model_says_so_without_a_traceback(mnist_dir: Path,
                                                                                  tmp_path: Path) -> None:
    args = ["validate", *fit_args(mnist_dir, tmp_path)[1:], "--trainer.limit_val_batches", "1"]
    result = subprocess.run([sys.executable, "-m", "lightning_genmodels", *args],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "error: GaussianMixture is not fitted yet" in result.stderr and "--ckpt_path" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_predict_saves_the_outputs_and_prints_the_path(mnist_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """`predict` computed every batch's outputs and dropped them: nothing was written or printed."""
    cli = main(args=fit_args(mnist_dir, tmp_path))
    ckpt = tmp_path / "gmm.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    capsys.readouterr()
    main(args=["predict", "--config", str(CONFIG), "--data.data_dir", str(mnist_dir), "--data.batch_size", "100",
               "--model.n_components", str(K), "--trainer.limit_predict_batches", "2",
               "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(ckpt)])
    path = tmp_path / "predictions.pt"
    assert capsys.readouterr().out.splitlines() == [f"wrote {path}"]
    saved = torch.load(path)
    torch.testing.assert_close(saved["index"], torch.arange(200))
    assert saved["labels"].shape == saved["log_prob"].shape == (200,)
    assert ((saved["labels"] >= 0) & (saved["labels"] < K)).all() and saved["log_prob"].isfinite().all()


def test_ckpt_path_of_a_model_saved_outside_the_cli(mnist_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """A checkpoint of a model built in Python (no ``_class_path`` among its hyperparameters)
    failed to parse against LightningModule: "Option 'n_components' is not accepted". Its
    hyperparameters now go to the class the config names, over the config's values (K = 2, not 20)."""
    from torch.utils.data import DataLoader, TensorDataset

    import lightning

    x = torch.rand(300, 784, generator=torch.Generator().manual_seed(0))
    trainer = lightning.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, limit_val_batches=0)
    with pytest.warns(UserWarning):  # one EM iteration does not converge
        trainer.fit(GaussianMixture(2, covariance_type="diag", max_iter=1, random_state=0),
                    DataLoader(TensorDataset(x, torch.zeros(300)), batch_size=300))
    ckpt = tmp_path / "python.ckpt"
    trainer.save_checkpoint(ckpt)
    cli = main(args=["predict", "--config", str(CONFIG), "--data.data_dir", str(mnist_dir), "--data.batch_size", "100",
                     "--trainer.limit_predict_batches", "1", "--trainer.accelerator", "cpu",
                     "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(ckpt)])
    assert type(cli.model) is GaussianMixture and cli.model.hparams.n_components == 2
    saved = torch.load(tmp_path / "predictions.pt")
    assert saved["labels"].shape == (100,) and ((saved["labels"] >= 0) & (saved["labels"] < 2)).all()
