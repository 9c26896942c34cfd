"""Test helpers shared across test modules."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# Parametrise a test over devices: the CUDA twin skips without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


def run_script(script: str, *args: object, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``tests/<script>`` with ``args`` in a fresh interpreter, this checkout first on
    PYTHONPATH (DDP scripts start their ranks from there); a hang or a non-zero exit status fails
    the test with the script's output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "tests" / script), *map(str, args)], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script} hung:\n{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


class Denoiser(nn.Module):
    """A user's own tiny denoiser for Diffusion subclasses: one convolution, t unused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
