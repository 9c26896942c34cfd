"""evaluate's --log needs matplotlib: checked before any heavy work (the plot failed after all
the sampling, and report.md and results.json were never written); a plot that fails at the end
still leaves the report and the results."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from lightning_genmodels import evaluate
from lightning_genmodels.evaluate import main


def test_log_without_matplotlib_fails_before_any_heavy_work(mnist_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    ckpt, log = tmp_path / "a.ckpt", tmp_path / "fid.csv"
    ckpt.touch()
    log.write_text("epoch,step,val/fid\n0,1,5.0\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    monkeypatch.setattr(evaluate, "SampleQuality", lambda *a, **k: pytest.fail("heavy work started"))
    with pytest.raises(SystemExit) as exc:
        main(["--model", f"a=lightning_genmodels.GaussianMixture:{ckpt}", "--data-dir", str(mnist_dir),
              "--out", str(tmp_path / "out"), "--log", f"a={log}"])
    assert exc.value.code == 2
    assert "--log draws the FID plot with matplotlib, which does not import" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_failing_plot_still_writes_the_report_and_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys) -> None:
    def broken_plot(logs, out):
        raise ValueError("metrics.csv has no val/fid values")

    monkeypatch.setattr(evaluate, "plot_fid_logs", broken_plot)
    args = argparse.Namespace(num_samples=4, seed=0, kid_subset_size=2, floor_num=4)
    quality = SimpleNamespace(extractor=SimpleNamespace(sha256="0" * 64))
    floor = {"fid": 1.0, "histogram": [0.1] * 10}
    evaluate._write_outputs(tmp_path, args, [], quality, floor, {}, {"a": tmp_path / "m.csv"}, None)
    assert "the FID plot failed (ValueError: metrics.csv has no val/fid values)" in capsys.readouterr().err
    report = (tmp_path / "report.md").read_text()
    assert "real floor" in report and "fid_over_training.png" not in report
    assert json.loads((tmp_path / "results.json").read_text())["floor"]["fid"] == 1.0
