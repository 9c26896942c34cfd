"""The extension toolchain: CUDA_HOME resolution, forced ref, fallback, concurrent builds.

Build scenarios run in subprocesses with their own cache folder, so this process's loaded
library and one-warning state stay untouched.
"""
from __future__ import annotations

import os
import shutil
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
# the compiler swap of ops/toolchain.py is not a fallback (a GPU image's CXX links libstdc++ statically)
fallbacks = [w for w in caught if issubclass(w.category, RuntimeWarning) and "runtime statically" not in str(w.message)]
print("WARNINGS", len(fallbacks))
for w in fallbacks:
    print("WARNING", w.message)
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


def _tiny_csrc(tmp_path: Path) -> Path:
    """A one-function csrc/ (and a CUDA file), built in seconds where the package's own takes 3
    minutes on a 2-core CI machine: for tests of the build's logic, not of our kernels."""
    tiny = tmp_path / "csrc"
    (tiny / "cuda").mkdir(parents=True)
    (tiny / "ops.cpp").write_text('extern "C" int lgm_tiny_op() { return 7; }\n')
    (tiny / "cuda" / "tiny.cu").write_text("__global__ void lgm_tiny_kernel() {}\n")
    return tiny


def _tiny_build(tiny: Path) -> str:
    """Code for a subprocess: build.build() on the tiny csrc/, print its fallback warnings, whether it
    found the library cached and whether it has CUDA, and call the library."""
    return (
        "import ctypes, pathlib, warnings\n"
        "import lightning_genmodels.ops.build as b\n"
        f"b.source_dir = lambda: pathlib.Path({str(tiny)!r})\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    info = b.build()\n"
        "assert ctypes.CDLL(str(info.library)).lgm_tiny_op() == 7\n"
        "fallbacks = [w for w in caught if issubclass(w.category, RuntimeWarning) and 'runtime statically' not in str(w.message)]\n"
        "print('WARNINGS', len(fallbacks))\n"
        "print('CACHED', info.cached)\n"
        "print('WITH_CUDA', info.with_cuda)\n"
    )


def test_two_processes_building_at_once_both_succeed(tmp_path):
    """The build lock: one process compiles, the other waits and loads its library."""
    env = {**os.environ, "LGM_OPS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT), "LGM_OPS_CUDA": "0"}
    env.pop("LGM_OPS_IMPL", None)
    code = _tiny_build(_tiny_csrc(tmp_path))
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert "WARNINGS 0" in out, out + err
    libraries = list((tmp_path / "cache").glob("*/*.so"))
    assert len(libraries) == 1, libraries
    # The second process found the first one's library instead of compiling again.
    assert sorted("CACHED True" in out for out, _ in outputs) == [False, True]



def test_a_library_cut_short_is_built_again(tmp_path):
    """A build killed while linking leaves a partial library that ninja's log does not list: the
    next build links it again (loading it had killed every later process with SIGBUS)."""
    tiny = _tiny_csrc(tmp_path)
    code = (
        "import pathlib, torch\n"
        "import lightning_genmodels.ops.build as b\n"
        f"root = pathlib.Path({str(tiny)!r})\n"
        "name = 'lgm_ops_' + b._build_key(root, b._sources(root, False), False, '')\n"
        "(b.cache_dir() / name).mkdir(parents=True)\n"
        "elf = (pathlib.Path(torch.__file__).parent / 'lib' / 'libc10.so').read_bytes()[:4096]\n"
        "(b.cache_dir() / name / f'{name}.so').write_bytes(elf)  # what a killed link leaves\n"
    ) + _tiny_build(tiny)
    result = _run(code, tmp_path / "cache", LGM_OPS_CUDA="0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CACHED False" in result.stdout, result.stdout + result.stderr


def test_a_read_only_cache_holding_the_library_loads_it(tmp_path):
    """A cache folder where the lock cannot be opened (read-only: a shared or root-owned cache;
    here build.lock is a folder, as root ignores permissions) but whose library is built: it is
    loaded (the build was refused, so impl='auto' lost every kernel and 'ext' raised)."""
    code = _tiny_build(_tiny_csrc(tmp_path)) + (
        "lock = info.library.parent / 'build.lock'\n"
        "lock.unlink(); lock.mkdir()\n"
        "again = b.build()\n"
        "print('AGAIN', again.cached, again.library == info.library)\n"
    )
    result = _run(code, tmp_path / "cache", LGM_OPS_CUDA="0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AGAIN True True" in result.stdout, result.stdout + result.stderr

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



@pytest.mark.parametrize("name, value", [("LGM_OPS_IMPL", "REF"), ("LGM_OPS_IMPL", "ext"), ("LGM_OPS_CUDA", "true")])
def test_unknown_environment_setting_is_an_error(name, value, monkeypatch):
    """A typo in LGM_OPS_IMPL / LGM_OPS_CUDA is named (it was ignored: 'REF' ran the kernels)."""
    from lightning_genmodels.ops import build

    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name} must be one of .* got '{value}'"):
        build.use_ext("auto") if name == "LGM_OPS_IMPL" else build._want_cuda(Path("/cuda"))
    monkeypatch.setenv(name, "")  # empty: as unset
    assert build.use_ext("ref") is False and build._env_choice(name, ("auto", "x")) == "auto"


def test_cache_folder_setting(monkeypatch):
    """LGM_OPS_CACHE: '~' expanded, empty as unset (it built into a literal '~' folder, or into
    the working directory)."""
    from lightning_genmodels.ops.build import cache_dir

    monkeypatch.delenv("LGM_OPS_CACHE", raising=False)
    default = cache_dir()
    assert default == Path.home() / ".cache" / "lightning_genmodels" / "ops"
    monkeypatch.setenv("LGM_OPS_CACHE", "")
    assert cache_dir() == default
    monkeypatch.setenv("LGM_OPS_CACHE", "~/lgm_cache")
    assert cache_dir() == Path.home() / "lgm_cache"

def test_cuda_folders_sort_by_version(tmp_path, monkeypatch):
    from lightning_genmodels.ops import build

    for version in ("9.2", "12.4", "11.8"):
        _fake_toolkit(tmp_path / f"cuda-{version}")
    for var in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no nvcc on PATH
    monkeypatch.setattr(build, "CUDA_SEARCH_ROOT", tmp_path)
    assert resolve_cuda_home() == tmp_path / "cuda-12.4"


def test_build_key_hashes_every_source_file(tmp_path):
    """An edit to any file under csrc/ (cpu/gmm_kernels.h included) must change the cache key."""
    from lightning_genmodels.ops.build import _build_key, _sources, source_dir

    root = tmp_path / "csrc"
    shutil.copytree(source_dir(), root)
    key = lambda: _build_key(root, _sources(root, False), False, "")  # noqa: E731
    headers = sorted(p for p in root.rglob("*") if p.suffix in (".h", ".cuh"))
    assert root / "cpu" / "gmm_kernels.h" in headers
    for header in headers:
        before = key()
        header.write_text(header.read_text() + "\n// edited\n")
        assert key() != before, header.relative_to(root)


def test_failed_cuda_compile_keeps_the_cpu_kernels(tmp_path):
    toolkit = _fake_toolkit(tmp_path / "broken-cuda")  # its nvcc does nothing: the compile fails
    (toolkit / "bin" / "nvcc").write_text("#!/bin/sh\nexit 1\n")
    result = _run(_tiny_build(_tiny_csrc(tmp_path)), tmp_path / "cache", CUDA_HOME=str(toolkit), LGM_OPS_CUDA="1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WITH_CUDA False" in result.stdout, result.stdout + result.stderr[-3000:]
    assert "WARNINGS 1" in result.stdout  # "the CUDA build failed, building the CPU kernels only"


def test_unusable_cache_folder_stays_inside_the_auto_fallback(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a cache path below a file: mkdir fails (as a read-only folder would)
    result = _run(DRAW, blocker / "cache", LGM_OPS_CUDA="0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNINGS 1" in result.stdout, result.stdout + result.stderr


def test_cuda_tensors_fall_back_per_device_when_built_without_cuda(monkeypatch):
    import torch

    from lightning_genmodels.ops import ExtensionBuildError, build, load_library

    if load_library().with_cuda:
        pytest.skip("the library here has CUDA kernels")
    monkeypatch.setattr(build, "_warned", set())
    assert build.use_ext("auto", torch.device("cpu"))
    with pytest.warns(RuntimeWarning, match="built without CUDA") as caught:
        assert not build.use_ext("auto", torch.device("cuda", 0))
        assert not build.use_ext("auto", "cuda")
    assert len(caught) == 1  # one warning, not one per call
    with pytest.raises(ExtensionBuildError, match="without CUDA"):
        build.use_ext("ext", "cuda")


@pytest.mark.skipif(shutil.which("c++") is None or os.uname().machine != "x86_64", reason="needs an x86-64 c++")
@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_simd_kernels_compile_under_fortify_source(isa, tmp_path):
    """Ubuntu's GCC defines _FORTIFY_SOURCE, which makes memcpy an always_inline wrapper built for
    -march=native; inside a `#pragma GCC target` region for another ISA (avx2 on an AVX-512 host),
    a call to it failed the whole build (seen on the GPU machine). Compiled as the build does."""
    from torch.utils.cpp_extension import include_paths

    from lightning_genmodels.ops.build import CPU_FLAGS, source_dir

    root = source_dir()
    # -O1 (not the build's -O3): it defines __OPTIMIZE__, so the fortified wrappers are in play and
    # always_inline calls are inlined, in 30 s instead of 50 s per file on a 2-core CI machine.
    flags = [f for f in CPU_FLAGS if not f.startswith("-O")] + ["-O1"]
    cmd = ["c++", "-std=c++20", "-fPIC", "-D_FORTIFY_SOURCE=2", *flags, "-I", str(root)]
    cmd += [flag for folder in include_paths() for flag in ("-isystem", folder)]
    cmd += ["-c", str(root / "cpu" / f"gmm_simd_{isa}.cpp"), "-o", str(tmp_path / f"{isa}.o")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _static_cxx(tmp_path: Path) -> str:
    """A c++ that links a private copy of the C++ runtime into each library, as the /opt/gcc of
    one GPU image did (the extension it built there crashed on the first error an op raised)."""
    wrapper = tmp_path / "static-c++"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("c++")} "$@" -static-libstdc++ -Wl,-Bsymbolic\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return str(wrapper)


needs_cxx = pytest.mark.skipif(shutil.which("c++") is None or sys.platform != "linux", reason="needs c++ on Linux")


@needs_cxx
def test_probe_tells_a_static_cxx_runtime_from_a_shared_one(tmp_path):
    from lightning_genmodels.ops.toolchain import links_shared_runtime, needed_libraries

    assert links_shared_runtime("c++") is True
    assert links_shared_runtime(_static_cxx(tmp_path)) is False
    assert links_shared_runtime(str(tmp_path / "no-such-c++")) is None  # the build reports it
    import torch

    needed = needed_libraries(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")
    assert any(n.startswith("libc10") for n in needed), needed
    assert needed_libraries(Path(__file__)) == []  # not an ELF file


@needs_cxx
def test_a_cxx_with_a_static_runtime_is_replaced_with_a_warning(tmp_path, monkeypatch):
    from lightning_genmodels.ops import toolchain

    monkeypatch.setenv("CXX", _static_cxx(tmp_path))
    with pytest.warns(RuntimeWarning, match="links the C\\+\\+ runtime statically"):
        chosen = toolchain.checked_cxx()
    assert chosen == shutil.which("c++") or chosen == shutil.which("g++")
    monkeypatch.setenv("CXX", "c++")
    assert toolchain.checked_cxx() is None  # a good compiler is kept
    monkeypatch.setenv("CXX", _static_cxx(tmp_path))
    monkeypatch.setattr(toolchain.shutil, "which", lambda name: None)  # no other compiler on PATH
    with pytest.raises(toolchain.ExtensionBuildError, match="set CXX to a compiler that links it as a shared"):
        toolchain.checked_cxx()


def test_op_kernels_lists_every_kernel_key() -> None:
    import torch

    from lightning_genmodels.ops.__main__ import op_kernels

    lib = torch.library.Library("lgm_report_test", "DEF")
    try:
        for name, key in (("on_cpu", "CPU"), ("composite", "CompositeExplicitAutograd"), ("schema_only", None)):
            lib.define(f"{name}(Tensor x) -> Tensor")
            if key:
                lib.impl(name, torch.clone, key)
        assert op_kernels("lgm_report_test") == {
            "composite": ["CompositeExplicitAutograd"], "on_cpu": ["CPU"], "schema_only": []}
    finally:
        lib._destroy()


def test_build_report_lists_the_composite_kernels(capsys: pytest.CaptureFixture) -> None:
    """`python -m lightning_genmodels.ops build`: ops registered under CompositeExplicitAutograd
    (they run on the CPU) are listed with that key, not as having no kernels."""
    import json

    from lightning_genmodels.ops.__main__ import main

    assert main(["build", "--json"]) == 0
    ops = json.loads(capsys.readouterr().out)["ops"]
    for name in ("gmm_cpu_isa", "unet_sample_forward"):
        assert "CompositeExplicitAutograd" in ops[name], (name, ops[name])
    assert "CPU" in ops["gmm_log_prob"]
    assert all(ops.values()), ops  # every op has a kernel somewhere



@pytest.mark.parametrize("argv", [["--cuda"], ["--arch", "9.0"], ["--cuda", "--arch", "9.0"]])
def test_build_asked_for_cuda_fails_without_it(argv, monkeypatch, capsys) -> None:
    """`build --cuda [--arch A]` is CI's compile check of the CUDA sources: a library without CUDA
    (the CUDA compile failed and the CPU-only retry built) exits 1, not 0."""
    import dataclasses

    from lightning_genmodels.ops import build, load_library
    from lightning_genmodels.ops.__main__ import main

    monkeypatch.setenv("LGM_OPS_CUDA", "auto")  # main sets these; monkeypatch restores them
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "")
    monkeypatch.setattr(build, "_info", dataclasses.replace(load_library(), with_cuda=False))
    assert main(["build", *argv]) == 1
    assert "built without CUDA" in capsys.readouterr().err
    assert main(["build"]) == 0
    with pytest.raises(SystemExit):
        main(["build", "--no-cuda", "--arch", "9.0"])

COLD_COMPILE = """
import torch
from lightning_genmodels.ops import gmm_log_prob, philox_normal
x, lw, mu, pc = torch.randn(10, 4), torch.full((3,), -1.0986), torch.randn(3, 4), torch.ones(3, 4)
draw = torch.compile(lambda: philox_normal(3, 1, [64], impl="IMPL"), fullgraph=True)
joint = torch.compile(lambda x: gmm_log_prob(x, lw, mu, pc, "diag", impl="IMPL"), fullgraph=True)
torch.testing.assert_close(draw(), philox_normal(3, 1, [64], impl="ref"))
torch.testing.assert_close(joint(x), gmm_log_prob(x, lw, mu, pc, "diag", impl="ref"))
print("OK")
"""


@pytest.mark.parametrize("impl", ["auto", "ext"])
def test_first_use_inside_torch_compile_fullgraph(impl):
    """The library loads while Dynamo traces (its lock is not traceable: 'Dynamo does not know
    how to enter a lock context manager' where no eager call came first)."""
    from lightning_genmodels.ops.build import cache_dir

    result = _run(COLD_COMPILE.replace("IMPL", impl), cache_dir())
    assert "OK" in result.stdout, result.stderr[-3000:]
