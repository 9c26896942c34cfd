"""``python -m lightning_genmodels`` with missing or corrupt MNIST files prints the error naming
them and the fix, exit status 1, without a traceback (as for an unfitted model)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("corrupt", [False, True], ids=["missing", "corrupt"])
def test_bad_data_files_say_so_without_a_traceback(corrupt: bool, tmp_path: Path) -> None:
    if corrupt:
        for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
            (tmp_path / name).write_bytes(b"\0\0\x08")
    args = ["fit", "--model", "GaussianMixture", "--data.data_dir", str(tmp_path), "--trainer.max_epochs", "1",
            "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "lightning_genmodels", *args],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    expected = "too short for an IDX header" if corrupt else "mnist IDX files not found"
    assert "error: " in result.stderr and expected in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
