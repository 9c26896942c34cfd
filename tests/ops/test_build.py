"""The extension toolchain: CUDA_HOME resolution, forced ref, fallback, concurrent builds.

Build scenarios run in subprocesses with their own cache folder, so this process's loaded
library and one-warning state stay untouched.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_genmodels.ops.build import resolve_cuda_home

ROOT = Path(__file__).resolve().parents[2]

DRAW = """
import warnings, torch
from lightning_genmodels.ops import philox_normal
from lightning_genmodels.ops.philox import _philox_normal_ref
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    a = philox_normal(3, 1, [64], impl="auto")
    b = philox_normal(3, 65, [64], impl="auto")
ref = _philox_normal_ref(3, 1, [128], torch.device("cpu"))
assert torch.allclose(torch.cat([a, b]), ref, atol=1e-5)
print("WARNINGS", sum(issubclass(w.category, RuntimeWarning) for w in caught))
"""


def _run(code: str, cache: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "LGM_OPS_CACHE": str(cache), "PYTHONPATH": str(ROOT), **env}
    if "LGM_OPS_IMPL" not in env:
        full_env.pop("LGM_OPS_IMPL", None)
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=600, cwd=ROOT
    )


def test_forced_ref_builds_nothing(tmp_path):
    result = _run(DRAW, tmp_path, LGM_OPS_IMPL="ref")
    assert result.returncode == 0, result.stderr
    assert "WARNINGS 0" in result.stdout
    assert not any(tmp_path.iterdir()), "forcing ref must not start a build"


def test_failed_build_falls_back_with_one_warning(tmp_path):
    result = _run(DRAW, tmp_path, CXX="/nonexistent/c++", LGM_OPS_CUDA="0")
    assert result.returncode == 0, result.stderr
    assert "WARNINGS 1" in result.stdout, result.stdout + result.stderr


def test_failed_build_raises_under_ext(tmp_path):
    code = """
from lightning_genmodels.ops import ExtensionBuildError, philox_normal
try:
    philox_normal(3, 0, [4], impl="ext")
except ExtensionBuildError as exc:
    print("RAISED", "nonexistent" in str(exc))
"""
    result = _run(code, tmp_path, CXX="/nonexistent/c++", LGM_OPS_CUDA="0")
    assert "RAISED True" in result.stdout, result.stdout + result.stderr


def test_two_processes_building_at_once_both_succeed(tmp_path):
    env = {**os.environ, "LGM_OPS_CACHE": str(tmp_path), "PYTHONPATH": str(ROOT), "LGM_OPS_CUDA": "0"}
    env.pop("LGM_OPS_IMPL", None)
    code = DRAW + "\nfrom lightning_genmodels.ops import load_library\nprint('CACHED', load_library().cached)"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert "WARNINGS 0" in out, out + err
    libraries = list(tmp_path.glob("*/*.so"))
    assert len(libraries) == 1, libraries
    # The second process found the first one's library instead of compiling again.
    assert sorted("CACHED True" in out for out, _ in outputs) == [False, True]


def _fake_toolkit(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("")
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return root


def test_cuda_home_follows_an_nvcc_wrapper_script(tmp_path, monkeypatch):
    toolkit = _fake_toolkit(tmp_path / "opt" / "cuda-99.0")
    wrappers = tmp_path / "wrappers"
    wrappers.mkdir()
    wrapper = wrappers / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{wrappers}{os.pathsep}{os.environ['PATH']}")
    assert resolve_cuda_home() == toolkit.resolve()


def test_cuda_home_from_environment_wins(tmp_path, monkeypatch):
    toolkit = _fake_toolkit(tmp_path / "cuda")
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    assert resolve_cuda_home() == toolkit


@pytest.mark.parametrize("impl", ["fast", "", None])
def test_unknown_impl_is_an_error(impl):
    from lightning_genmodels.ops import use_ext

    with pytest.raises(ValueError, match="impl must be one of"):
        use_ext(impl)
