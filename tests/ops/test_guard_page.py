"""No CPU kernel reads past the end of x: each ISA's ops on x that ends at an unreadable page
(tests/ops/guard_page_script.py, in a subprocess, since a read past the end is a SIGSEGV)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_genmodels.ops.gmm import available_cpu_isas

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mmap/mprotect through libc")
@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_no_kernel_reads_past_the_end_of_x(isa: str) -> None:
    if isa not in available_cpu_isas():
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("guard_page_script.py")), isa],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"rc {proc.returncode} after:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert proc.stdout.count("ok ") == 2 * 5 * 5
