"""The evaluation command on a small GMM checkpoint: report folder, NLL, FID-over-training plot,
and its options checked before any heavy work."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_genmodels import GaussianMixture, evaluate
from lightning_genmodels.data import MNISTDataModule
from lightning_genmodels.evaluate import main, parse_model
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
])
def test_bad_options_fail_before_any_heavy_work(args: list[str], match: str, mnist_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    ckpt = tmp_path / "a.ckpt"
    ckpt.touch()  # existence is all the checks look at
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
