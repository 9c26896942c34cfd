"""The evaluation command on a small GMM checkpoint: report folder, NLL, FID-over-training plot,
and its options checked before any heavy work."""
from __future__ import annotations

import json
import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import lightning
import torch
from lightning.pytorch import Trainer

from lightning_genmodels import GAN, VAE, GaussianMixture, evaluate
from lightning_genmodels.data import MNISTDataModule
from lightning_genmodels.evaluate import checked_samples, main, parse_model
from lightning_genmodels.metrics import load_real_images


@pytest.fixture(scope="module")
def gmm_ckpt(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = GaussianMixture(3, covariance_type="diag", max_iter=2, random_state=0)
    dm = MNISTDataModule(data_dir=str(mnist_dir), batch_size=5000, val_split=50_000)
    trainer = Trainer(max_epochs=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    with pytest.warns(UserWarning):  # 2 EM iterations do not converge
        trainer.fit(model, dm)
    path = tmp_path_factory.mktemp("ckpt") / "gmm.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_report_folder(mnist_dir: Path, gmm_ckpt: Path, tmp_path: Path, fid_cache: Path, test_features) -> None:
    log = tmp_path / "metrics.csv"
    log.write_text("epoch,step,val/fid,train/lower_bound\n0,1,30.5,\n0,1,,12.0\n1,2,20.25,\n3,4,18.0,\n")
    out = tmp_path / "report"
    main(["--model", f"gmm=lightning_genmodels.GaussianMixture:{gmm_ckpt}", "--log", f"gmm={log}",
          "--data-dir", str(mnist_dir), "--out", str(out), "--num-samples", "300", "--floor-num", "500",
          "--kid-subset-size", "400", "--cache-dir", str(fid_cache)])
    for name in ("report.md", "results.json", "samples_gmm.png", "fid_over_training.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    row, floor = results["models"]["gmm"], results["floor"]
    assert row["fid"] > floor["fid"] > 0 and 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
    report = (out / "report.md").read_text()
    assert "| gmm | " in report and f"{row['fid']:.3f}" in report and "samples_gmm.png" in report
    # each row states the KID subset size it used: 400 of the floor's 500 images, all 300 samples
    assert (floor["kid_subset_size"], row["kid_subset_size"]) == (400, 300)
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model | FID"))
    table = [[c.strip() for c in line.strip("|").split("|")] for line in lines[start : start + 4]]
    col = table[0].index("KID subset")
    assert {r[0]: r[col] for r in table[2:]} == {"real floor (train 500)": "400", "gmm": "300"}

    # NLL: the dequantisation bound from the GMM's exact density, recomputed here
    model = GaussianMixture.load_from_checkpoint(gmm_ckpt, weights_only=False)
    dm = MNISTDataModule(data_dir=str(mnist_dir), input_format="dequantized_flat", batch_size=1000, val_split=0)
    dm.setup("test")
    torch.manual_seed(0)
    log_p = torch.cat([model.score_samples(x).double() for x, _ in dm.test_dataloader()])
    expected = -log_p.mean().item() / (784 * math.log(2)) + 8
    assert row["nll_bits_per_dim"] == pytest.approx(expected, rel=1e-9)
    assert 0 < expected < 8


def test_bad_model_spec_is_rejected() -> None:
    with pytest.raises(ValueError, match="NAME=package.module.Class:/path/to.ckpt"):
        parse_model("gmm=/work/ckpts/gmm.ckpt")
    assert parse_model("gmm=lightning_genmodels.GaussianMixture:/a/b.ckpt")[1] == "lightning_genmodels.GaussianMixture"


def test_nll_uses_the_models_own_method_else_nothing(mnist_dir: Path) -> None:
    from torch import nn

    from lightning_genmodels.evaluate import nll_bits_per_dim

    class WithNLL(nn.Module):
        input_format = "binarized_flat"

        def nll_bits_per_dim(self, loader) -> float:
            x, _ = next(iter(loader))
            assert x.shape == (1000, 784) and set(x.unique().tolist()) <= {0.0, 1.0}  # the model's format
            return 1.25

    assert nll_bits_per_dim(WithNLL(), str(mnist_dir), seed=0) == (1.25, "model.nll_bits_per_dim")
    assert nll_bits_per_dim(nn.Linear(2, 2), str(mnist_dir), seed=0) == (None, "not defined")


@pytest.mark.parametrize("args, match", [
    (["--num-samples", "0"], "--num-samples must be >= 4 .*need 4 generated samples.*got 0"),
    (["--num-samples", "3"], "--num-samples must be >= 4 .*got 3"),
    (["--floor-num", "3"], "--floor-num must be >= 4 .*need 4 real training images.*got 3"),
    (["--floor-num", "1"], "--floor-num must be >= 4 .*got 1"),
    (["--floor-num", "60001"], "--floor-num must be at most 60000 .*got 60001"),
    (["--kid-subset-size", "1"], "--kid-subset-size must be >= 2, got 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--model", "b=lightning_genmodels.GaussianMixture:/no/such.ckpt"], "checkpoint /no/such.ckpt not found"),
    (["--model", "b=lightning_genmodels.NoSuchModel:{ckpt}"], "has no class 'NoSuchModel'"),
    (["--model", "a=lightning_genmodels.VAE:{ckpt}"], "the name 'a' is given twice"),
    (["--log", "a=/no/such.csv"], "--log 'a=/no/such.csv'"),
    (["--data-dir", "{tmp}"], "--data-dir: mnist IDX files not found"),
    (["--data-dir", "{tmp}"], "--data-dir PATH for lightning_genmodels.evaluate"),  # (it named only the CLI's flags)
    (["--log", "a={tmp}/no_fid.csv"], "--log 'a=.*no_fid.csv': .*no_fid.csv has no val/fid values"),
    (["--log", "a={tmp}/bad_fid.csv"], "--log 'a=.*bad_fid.csv': could not convert string to float: 'x'"),
    (["--log", "a={tmp}/fid.csv", "--log", "a={tmp}/fid.csv"], "--log 'a=.*fid.csv': the name 'a' is given twice"),
    (["--model", "a/b=lightning_genmodels.VAE:{ckpt}"], "the name 'a/b' must be 1 to 100 letters, digits"),
    (["--model", "a b=lightning_genmodels.VAE:{ckpt}"], "the name 'a b' must be"),
    (["--seed", "-1"], r"--seed must be an integer in \[0, 2\*\*64 - 20\] .*20 sample chunks.*got -1"),
    (["--seed", str(2**64 - 19)], rf"--seed must be .*got {2**64 - 19}"),
    (["--out", "{ckpt}"], "--out '.*a.ckpt': .*a.ckpt exists and is not a folder"),
    (["--out", "{ckpt}/sub"], "--out '.*a.ckpt/sub': .*a.ckpt exists and is not a folder"),
    (["--cache-dir", "{ckpt}"], "--cache-dir '.*a.ckpt': .*a.ckpt exists and is not a folder"),  # a traceback, late
    ([], r"--model a=lightning_genmodels.GaussianMixture:.*a.ckpt: the checkpoint does not load as "
         r"lightning_genmodels.GaussianMixture \(\w+Error: "),
])
def test_bad_options_fail_before_any_heavy_work(args: list[str], match: str, mnist_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    ckpt = tmp_path / "a.ckpt"
    ckpt.touch()  # existence is all the checks before loading look at
    (tmp_path / "no_fid.csv").write_text("epoch,step,train/loss\n0,1,2.0\n")
    (tmp_path / "bad_fid.csv").write_text("epoch,step,val/fid\n0,1,x\n")
    (tmp_path / "fid.csv").write_text("epoch,step,val/fid\n0,1,5.0\n")
    monkeypatch.setattr(evaluate, "SampleQuality", lambda *a, **k: pytest.fail("heavy work started"))
    base = ["--model", f"a=lightning_genmodels.GaussianMixture:{ckpt}", "--data-dir", str(mnist_dir),
            "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exc:
        main(base + [a.format(ckpt=ckpt, tmp=tmp_path) for a in args])
    assert exc.value.code == 2
    assert re.search(match, capsys.readouterr().err), match
    assert not (tmp_path / "out").exists()


def test_too_few_real_images_name_the_range(mnist_dir: Path) -> None:
    with pytest.raises(ValueError, match="num=1 real train images requested; give 2 .* to 60000"):
        load_real_images(mnist_dir, "train", 1)
    with pytest.raises(ValueError, match=r"num=100.0 real test images requested; .* an integer"):
        load_real_images(mnist_dir, "test", 100.0)  # a TypeError from slicing, naming nothing
    assert load_real_images(mnist_dir, "test", np.int64(5)).shape == (5, 28, 28)


def _save(model: torch.nn.Module, path: Path) -> Path:
    """A checkpoint that Class.load_from_checkpoint reads, without a Trainer."""
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints of a tiny VAE and GAN, and the VAE's first 1000 bytes (corrupt)."""
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    vae = _save(VAE(latent_dim=8), folder / "vae.ckpt")
    (folder / "cut.ckpt").write_bytes(vae.read_bytes()[:1000])
    return {"vae": vae, "gan": _save(GAN(latent_dim=16, features=8), folder / "gan.ckpt"), "cut": folder / "cut.ckpt"}


@pytest.mark.parametrize("spec, match", [
    ("b=lightning_genmodels.VAE:{cut}", r"--model b=lightning_genmodels.VAE:.*cut.ckpt: the checkpoint does not "
                                        r"load as lightning_genmodels.VAE \(RuntimeError: PytorchStreamReader"),
    ("b=lightning_genmodels.VAE:{gan}", r"--model b=lightning_genmodels.VAE:.*gan.ckpt: the checkpoint does not "
                                        r"load as lightning_genmodels.VAE \(RuntimeError: .*Missing key"),
], ids=["corrupt", "gan_as_vae"])
def test_checkpoints_that_do_not_load_fail_before_any_sampling(spec: str, match: str, tiny_ckpts: dict[str, Path],
                                                               mnist_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Every model is loaded up front: a corrupt checkpoint, or one of another class, given after a
    good one, is named in one parser error before the floor or any model is sampled."""
    monkeypatch.setattr(evaluate, "SampleQuality", lambda *a, **k: pytest.fail("heavy work started"))
    with pytest.raises(SystemExit) as exc:
        main(["--model", f"a=lightning_genmodels.VAE:{tiny_ckpts['vae']}", "--model", spec.format(**tiny_ckpts),
              "--data-dir", str(mnist_dir), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert re.search(match, capsys.readouterr().err), match
    assert not (tmp_path / "out").exists()


def _images(n: int) -> torch.Tensor:
    return torch.linspace(0, 1, n * 784).reshape(n, 1, 28, 28)


@pytest.mark.parametrize("images, match", [
    (_images(4) * 255, r"returned values in \[0, 255\], expected \[0, 1\]"),
    (_images(4) * 2 - 1, r"returned values in \[-1, 1\], expected \[0, 1\]"),
    ((_images(4) * 255).to(torch.uint8), r"returned values in \[0, 255\]"),
    (_images(2), r"returned 2 images \[2, 1, 28, 28\], expected \[4, 1, 28, 28\]"),
    (_images(4).reshape(4, 28, 28), r"returned shape \[4, 28, 28\], expected \[4, 1, 28, 28\]"),
    (_images(4).index_fill(0, torch.tensor([1]), float("nan")), "returned 784 NaN or infinite values"),
    (_images(4).tolist(), r"returned a list, expected a tensor \[4, 1, 28, 28\] in \[0, 1\]"),
], ids=["0_255", "-1_1", "uint8", "half_count", "no_channel", "nan", "list"])
def test_samples_out_of_range_or_of_the_wrong_count_are_refused(images, match: str) -> None:
    with pytest.raises(ValueError, match=r"model 'm': sample_images\(4, seed=7\) " + match):
        checked_samples(images, "m", 4, 7)


def test_samples_within_float_rounding_of_0_1_are_clamped() -> None:
    images = _images(4).double()
    images[0, 0, 0, 0], images[-1, 0, -1, -1] = -1e-7, 1 + 1e-7
    out = checked_samples(images, "m", 4, 0)
    assert out.dtype == torch.float32 and (out.min().item(), out.max().item()) == (0.0, 1.0)


class Range255VAE(VAE):
    def sample_images(self, n, seed=0):
        return super().sample_images(n, seed) * 255


class SymmetricVAE(VAE):
    def sample_images(self, n, seed=0):
        return super().sample_images(n, seed) * 2 - 1


class HalfCountVAE(VAE):
    def sample_images(self, n, seed=0):
        return super().sample_images(max(1, n // 2), seed)


@pytest.mark.parametrize("cls, match", [
    ("Range255VAE", r"model 'bad': sample_images\(8, seed=0\) returned values in \[[\d.]+, [\d.]+\], expected"),
    ("SymmetricVAE", r"model 'bad': sample_images\(8, seed=0\) returned values in \[-[\d.]+, -?[\d.]+\], expected"),
    ("HalfCountVAE", r"model 'bad': sample_images\(8, seed=0\) returned 4 images \[4, 1, 28, 28\]"),
], ids=["0_255", "-1_1", "half_count"])
def test_a_model_with_bad_samples_fails_and_the_models_before_it_are_written(
        cls: str, match: str, tiny_ckpts: dict[str, Path], mnist_dir: Path, tmp_path: Path, fid_cache: Path,
        test_features, monkeypatch: pytest.MonkeyPatch) -> None:
    """Samples outside [0, 1] (scored after a silent clamp before) or fewer than asked (scored as
    fewer) raise, naming the model; the report keeps the floor and the models done before it."""
    monkeypatch.setitem(sys.modules, "evaluate_bad_models", types.ModuleType("evaluate_bad_models"))
    monkeypatch.setattr(sys.modules["evaluate_bad_models"], cls, globals()[cls], raising=False)
    monkeypatch.setattr(evaluate, "nll_bits_per_dim", lambda *a: (None, "not defined"))  # IWAE: slow, not tested here
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        main(["--model", f"good=lightning_genmodels.VAE:{tiny_ckpts['vae']}",
              "--model", f"bad=evaluate_bad_models.{cls}:{tiny_ckpts['vae']}", "--data-dir", str(mnist_dir),
              "--out", str(out), "--num-samples", "16", "--batch-size", "8", "--floor-num", "16",
              "--kid-subset-size", "4", "--cache-dir", str(fid_cache)])
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["good"] and results["models"]["good"]["fid"] > results["floor"]["fid"]
    assert re.search(match, results["meta"]["failed"]) and not (out / "samples_bad.png").exists()
    report = (out / "report.md").read_text()
    assert "**Incomplete:** model 'bad' failed (ValueError: " in report and "| good | " in report
