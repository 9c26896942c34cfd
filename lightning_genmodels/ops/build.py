"""Build and load the C++/CUDA extension lazily, on first use, never at import.

The library is compiled with ``torch.utils.cpp_extension.load`` and ninja into a cache folder
keyed by a hash of the sources and flags, under a file lock, so DDP ranks that start together
build it once and all load it. Ops register with ``TORCH_LIBRARY`` and are called as
``torch.ops.lightning_genmodels.<op>``.

Environment:
    LGM_OPS_IMPL: ``ref`` forces every op onto its pure-PyTorch reference (``auto``, empty or
        unset: each call's ``impl``; another value raises ValueError).
    LGM_OPS_CACHE: the cache folder (``~`` expanded; default ``~/.cache/lightning_genmodels/ops``).
    LGM_OPS_CUDA: ``1`` compiles the CUDA sources even without a GPU, ``0`` never does (``auto``,
        empty or unset: with a GPU; another value raises ValueError).
    LGM_OPS_VERBOSE: ``1`` prints the compiler's commands.
    TORCH_CUDA_ARCH_LIST, CXX, CUDA_HOME: as for ``torch.utils.cpp_extension``; a CXX that links
        the C++ runtime statically is replaced by ``c++`` from PATH (toolchain.py).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import platform
import re
import shutil
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch.autograd import forward_ad

from .toolchain import ExtensionBuildError, checked_cxx

Impl = Literal["auto", "ref", "ext"]
IMPLS = ("auto", "ref", "ext")
NAMESPACE = "lightning_genmodels"
# Architectures compiled when no GPU is visible to pick one (a compile check, e.g. in CI).
DEFAULT_ARCHS = "8.0;9.0"
# -fno-math-errno: sqrt never sets errno here, so its loops vectorise (the Philox normals: 4x on AVX-512)
CPU_FLAGS = ["-O3", "-fno-math-errno", "-fopenmp", "-march=native"]
CUDA_SEARCH_ROOT = Path("/usr/local")  # where toolkits live as cuda/ and cuda-<version>/
CUDA_FLAGS = ["-O3", "--use_fast_math", "-lineinfo"]


@dataclass
class BuildInfo:
    """What was built: the library path, whether CUDA is in it, and for which architectures."""

    library: Path
    with_cuda: bool
    archs: list[str] = field(default_factory=list)
    cached: bool = False


_lock = threading.Lock()
_info: BuildInfo | None = None
_error: ExtensionBuildError | None = None
_warned: set[str] = set()  # which fallbacks have warned
_on_load: list[Callable[[], None]] = []


def source_dir() -> Path:
    """The ``csrc`` folder: inside the installed package, else the checkout's top level."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "csrc", here.parent / "csrc"):
        if (candidate / "ops.cpp").exists():
            return candidate
    raise ExtensionBuildError(f"csrc/ops.cpp not found in {here / 'csrc'} or {here.parent / 'csrc'}")


def _nvcc_from_wrapper(path: Path) -> Path | None:
    """Follow an ``nvcc`` that is a shell script (``exec /opt/cuda/bin/nvcc "$@"``)."""
    try:
        text = path.read_text(errors="ignore")[:4096]
    except OSError:
        return None
    for match in re.findall(r"(/[^\s\"']+/bin/nvcc)\b", text):
        target = Path(match)
        if target.exists() and target.resolve() != path.resolve():
            return target.resolve()
    return None


def _is_cuda_home(path: Path) -> bool:
    return (path / "bin" / "nvcc").exists() and (path / "include" / "cuda_runtime.h").exists()


def resolve_cuda_home() -> Path | None:
    """Find the CUDA toolkit, following an ``nvcc`` on PATH that is a wrapper script.

    ``torch.utils.cpp_extension`` takes ``dirname(dirname(which nvcc))``, which is wrong when
    ``nvcc`` is a wrapper outside the toolkit (``/usr/local/bin/nvcc``); this reads the wrapper.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and _is_cuda_home(Path(os.environ[var])):
            return Path(os.environ[var])
    found = shutil.which("nvcc")
    if found:
        nvcc = Path(found).resolve()
        target = nvcc if _is_cuda_home(nvcc.parent.parent) else _nvcc_from_wrapper(nvcc)
        if target is not None and _is_cuda_home(target.parent.parent):
            return target.parent.parent
    versioned = sorted(CUDA_SEARCH_ROOT.glob("cuda-*"), key=_version_key, reverse=True)
    return next((c for c in [CUDA_SEARCH_ROOT / "cuda"] + versioned if _is_cuda_home(c)), None)


def _version_key(path: Path) -> tuple[int, ...]:
    """``cuda-12.4`` -> (12, 4): folders sort by version (``cuda-12`` after ``cuda-9``)."""
    return tuple(int(n) for n in re.findall(r"\d+", path.name.removeprefix("cuda-")))


def _wheel_cuda_includes(cuda_home: Path) -> list[str]:
    """Header folders of the NVIDIA wheels torch depends on, for a toolkit without cuBLAS or
    cuSPARSE headers (ATen's CUDA headers include them). Searched after the toolkit's own."""
    if (cuda_home / "include" / "cusparse.h").exists():
        return []
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec else []
    found = {str(h.parent) for root in roots for h in Path(root).glob("*/include/cusparse.h")}
    return [flag for folder in sorted(found) for flag in ("-isystem", folder)]


def _env_choice(name: str, choices: tuple[str, ...]) -> str:
    """``$name``, one of ``choices`` (unset or empty: ``choices[0]``), else ValueError: a typo
    (``LGM_OPS_IMPL=REF``) is named, not ignored."""
    value = os.environ.get(name) or choices[0]
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices} or unset, got {value!r}")
    return value


def _want_cuda(cuda_home: Path | None) -> bool:
    setting = _env_choice("LGM_OPS_CUDA", ("auto", "0", "1"))
    if setting == "0" or torch.version.cuda is None or cuda_home is None:
        return False
    return setting == "1" or torch.cuda.is_available()


def _arch_list() -> str:
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        return ";".join(f"{major}.{minor}" for major, minor in sorted(caps))
    return DEFAULT_ARCHS


def _sources(root: Path, with_cuda: bool) -> list[Path]:
    files = sorted(root.glob("*.cpp")) + sorted(root.glob("cpu/*.cpp"))
    return files + (sorted(root.glob("cuda/*.cu")) if with_cuda else [])


def _cpu_signature() -> str:
    """Identifies the host CPU's instruction set, since the build uses -march=native."""
    try:
        flags = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        return platform.machine() + (flags.group(1) if flags else "")
    except OSError:
        return platform.machine()


SOURCE_SUFFIXES = (".cpp", ".cc", ".cu", ".h", ".hpp", ".cuh")


def _build_key(root: Path, sources: list[Path], with_cuda: bool, archs: str) -> str:
    """Hash of every source file under ``csrc/`` (any header may be included), the flags, the
    torch version and the host CPU's instruction set."""
    digest = hashlib.sha256()
    every_file = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES)
    for path in every_file:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    extra = [torch.__version__, str(with_cuda), archs if with_cuda else "", os.environ.get("CXX", "")]
    digest.update("|".join(extra + CPU_FLAGS + CUDA_FLAGS + [_cpu_signature()]).encode())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """``$LGM_OPS_CACHE`` (``~`` expanded; unset or empty: the default)."""
    default = Path.home() / ".cache" / "lightning_genmodels" / "ops"
    return Path(os.environ.get("LGM_OPS_CACHE") or default).expanduser()


def _cpp_extension(cuda_home: Path | None):
    """Import ``torch.utils.cpp_extension`` with CUDA_HOME set to the resolved toolkit."""
    if cuda_home is not None and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = str(cuda_home)
    # Without a GPU it logs a warning at import that says nothing about our build.
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    if cuda_home is not None:
        cpp_extension.CUDA_HOME = str(cuda_home)  # it may have guessed at an earlier import
    return cpp_extension


def _compile(name: str, build_dir: Path, sources: list[Path], with_cuda: bool, cuda_home: Path | None):
    cpp_extension = _cpp_extension(cuda_home if with_cuda else None)
    root = sources[0].parent
    cuda_defines = ["-DLGM_WITH_CUDA"] if with_cuda else []
    if with_cuda:
        cuda_defines += _wheel_cuda_includes(cuda_home)
    return cpp_extension.load(
        name=name,
        sources=[str(s) for s in sources],
        extra_cflags=CPU_FLAGS + cuda_defines,
        extra_cuda_cflags=CUDA_FLAGS + cuda_defines,
        extra_ldflags=["-fopenmp"],
        extra_include_paths=[str(root)],
        build_directory=str(build_dir),
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=os.environ.get("LGM_OPS_VERBOSE") == "1",
    )


@contextlib.contextmanager
def _cxx(cxx: str | None):
    """CXX set to ``cxx`` (None: left as it is) for one build."""
    if cxx is None:
        yield
        return
    saved = os.environ.get("CXX")
    os.environ["CXX"] = cxx
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CXX")
        else:
            os.environ["CXX"] = saved


def build(with_cuda: bool | None = None) -> BuildInfo:
    """Compile (or find in the cache) and load the extension library.

    Args:
        with_cuda: compile the CUDA sources; ``None`` decides from the toolkit, the GPU and
            ``LGM_OPS_CUDA``.

    Raises:
        ExtensionBuildError: with the compiler's message when the build or load fails.
    """
    root = source_dir()
    cuda_home = resolve_cuda_home()
    if with_cuda is None and _want_cuda(cuda_home):
        try:
            return _build(root, True, cuda_home)
        except ExtensionBuildError as exc:  # keep the CPU kernels: retry without CUDA
            warnings.warn(f"{NAMESPACE}: the CUDA build failed, building the CPU kernels only: {exc}",
                          RuntimeWarning, stacklevel=2)
            return _build(root, False, cuda_home)
    if with_cuda and (cuda_home is None or torch.version.cuda is None):
        raise ExtensionBuildError("CUDA build asked for, but no CUDA toolkit or CUDA torch found")
    return _build(root, bool(with_cuda), cuda_home)


def _build(root: Path, with_cuda: bool, cuda_home: Path | None) -> BuildInfo:
    archs = _arch_list() if with_cuda else ""
    if with_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    sources = _sources(root, with_cuda)
    name = f"lgm_ops_{_build_key(root, sources, with_cuda, archs)}"
    build_dir = cache_dir() / name
    library = build_dir / f"{name}.so"
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        lock_file = open(build_dir / "build.lock", "w")
    except OSError as exc:  # e.g. a read-only cache folder: set LGM_OPS_CACHE
        if not _linked(library):
            raise ExtensionBuildError(f"cannot use the build cache {build_dir} (set LGM_OPS_CACHE): {exc}") from exc
        lock_file = None  # read-only, but holding the built library: nothing to write, so no lock
    if lock_file is None:
        try:
            torch.ops.load_library(str(library))
        except Exception as exc:
            raise ExtensionBuildError(f"loading {library} failed: {exc}") from exc
        return BuildInfo(library, with_cuda, archs.split(";") if archs else [], True)
    # One process builds; the others wait on the lock, then find the library built.
    with lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        cached = _linked(library)
        try:
            if library.exists() and not cached:  # cut short by a killed build: link it again
                library.unlink()
            if cached:
                torch.ops.load_library(str(library))
            else:
                with _cxx(checked_cxx()):
                    _compile(name, build_dir, sources, with_cuda, cuda_home)
        except Exception as exc:  # the compiler's output is in the message
            raise ExtensionBuildError(f"building {NAMESPACE} ops failed: {exc}") from exc
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    return BuildInfo(library, with_cuda, archs.split(";") if archs else [], cached)


def _linked(library: Path) -> bool:
    """Whether ninja finished linking ``library``: its ``.ninja_log`` lists a command only once the
    command succeeded. A build killed while linking leaves a partial library, and loading one
    kills the process (SIGBUS), so only a library in the log counts as built."""
    try:
        log = (library.parent / ".ninja_log").read_text(errors="replace")
    except OSError:
        return False
    return library.exists() and any(line.split("\t")[3:4] == [library.name] for line in log.splitlines())


def load_library() -> BuildInfo:
    """Build and load once per process; later calls return the same info or re-raise."""
    if torch.compiler.is_compiling():  # loaded (or built) at trace time, its globals never read
        fields = _load_while_tracing()
        if fields is None:
            raise ExtensionBuildError(f"the {NAMESPACE} ops failed to build (an eager call's error says why)")
        return BuildInfo(Path(fields[0]), fields[1], list(fields[2]), fields[3])
    if _info is not None:  # loaded: no lock to take
        return _info
    return _load()


def _load() -> BuildInfo:
    global _info, _error
    with _lock:
        if _info is None and _error is None:
            try:
                _info = build()
            except ExtensionBuildError as exc:
                _error = exc
            else:
                for fn in _on_load:
                    fn()
        if _error is not None:
            raise _error
        return _info


@torch.compiler.assume_constant_result
def _load_while_tracing() -> tuple[str, bool, tuple[str, ...], bool] | None:
    """_load run by Dynamo at trace time, not traced (its lock is not), its BuildInfo's fields
    a constant (Dynamo takes no dataclass there); None where the build failed."""
    try:
        info = _load()
    except ExtensionBuildError:
        return None
    return str(info.library), info.with_cuda, tuple(info.archs), info.cached


def register_on_load(fn: Callable[[], None]) -> None:
    """Run ``fn`` once the library is loaded (at once if it already is): fakes, autograd."""
    _on_load.append(fn)
    if _info is not None:
        fn()


def use_ext(impl: str, device: torch.device | str | None = None, inputs: Sequence[Any] = ()) -> bool:
    """Whether an op call should take the compiled kernel (True) or the reference (False).

    ``ref`` (or ``LGM_OPS_IMPL=ref``) takes the reference; ``ext`` builds and raises on
    failure; ``auto`` builds and, on failure, warns once and takes the reference. Per device:
    a CUDA ``device`` needs a library built with CUDA (``auto`` falls back with one warning,
    ``ext`` raises). The kernels have no backward: where grad mode is on and one of ``inputs``
    requires grad, or one carries a forward-mode tangent (``torch.func.jvp``/``jacfwd``, a
    ``forward_ad`` dual), ``auto`` takes the reference (which has one) and ``ext`` raises.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "ref" or _env_choice("LGM_OPS_IMPL", ("auto", "ref")) == "ref":
        return False
    if _differentiated(inputs):
        if impl == "ext":
            raise ValueError(f"impl='ext': the {NAMESPACE} kernels have no backward (nor forward-mode derivative), "
                             "and an input requires grad or carries a tangent (impl='auto' or 'ref' differentiates "
                             "through the PyTorch reference)")
        return False
    cuda = device is not None and torch.device(device).type == "cuda"
    if impl == "ext":
        info = load_library()
        if cuda and not info.with_cuda:
            raise ExtensionBuildError(
                f"impl='ext' on {device}, but the {NAMESPACE} ops were built without CUDA "
                "(no CUDA toolkit at build time, or its compile failed)"
            )
        return True
    try:
        info = load_library()
    except ExtensionBuildError as exc:
        _warn_once("build", f"{NAMESPACE}: falling back to the PyTorch reference ops: {exc}")
        return False
    if cuda and not info.with_cuda:
        _warn_once("cuda", f"{NAMESPACE}: the ops were built without CUDA; CUDA tensors use the "
                           "PyTorch reference ops (install a CUDA toolkit and rebuild for the kernels)")
        return False
    return True


def _differentiated(inputs: Sequence[Any]) -> bool:
    """Whether autograd would differentiate through an op on ``inputs``: reverse mode (grad mode on
    and a tensor requiring grad) or forward mode (a dual level open and a tensor with a tangent,
    which the kernels would drop: a zero jvp)."""
    tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return True
    return forward_ad._current_level >= 0 and any(forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)
