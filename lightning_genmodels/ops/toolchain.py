"""The C++ compiler for the extension: one that links the C++ runtime as a shared library.

On one GPU image ``CXX`` named an ``/opt/gcc`` whose libraries carry their own static copy of
libstdc++: the extension it built crashed the process (segmentation fault) on the first error an
op raised, where the same sources built by the system's g++, which links ``libstdc++.so.6`` as
PyTorch does, raised the error in Python (H100, 2026-11-26). A static copy alone did not crash
on this CI machine (GCC 13 with ``-static-libstdc++``, with or without ``-Bsymbolic``), so the
exact cause there is not known; a private C++ runtime beside PyTorch's is the one difference
found, and it is avoided. Before a build the compiler links a three-line probe library, whose
ELF dependencies tell which runtime it gets.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SHARED_RUNTIMES = ("libstdc++.so", "libc++.so")
PROBE = '#include <stdexcept>\nvoid lgm_probe(int n) { if (n < 0) throw std::runtime_error("n"); }\n'
SHT_DYNAMIC, DT_NULL, DT_NEEDED = 6, 0, 1


class ExtensionBuildError(RuntimeError):
    """The extension could not be compiled or loaded; the message holds the compiler output."""


def needed_libraries(path: Path | str) -> list[str]:
    """The DT_NEEDED entries (shared libraries it links) of an ELF64 little-endian file; [] for
    any other file."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = []
    for _, sh_type, _, _, offset, size, link, *_ in sections:
        if sh_type != SHT_DYNAMIC:
            continue
        strings = sections[link][4]
        for pos in range(offset, offset + size, 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == DT_NULL:
                break
            if tag == DT_NEEDED:
                start = strings + value
                names.append(data[start:data.index(b"\0", start)].decode())
    return names


def links_shared_runtime(cxx: str) -> bool | None:
    """Whether ``cxx -shared`` links the C++ runtime as a shared library; None when it cannot
    build the probe (the real build then fails with the compiler's own message)."""
    with tempfile.TemporaryDirectory() as tmp:
        source, library = Path(tmp) / "probe.cpp", Path(tmp) / "probe.so"
        source.write_text(PROBE)
        try:
            subprocess.run([cxx, "-shared", "-fPIC", "-o", str(library), str(source)],
                           check=True, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return None
        return any(name.startswith(SHARED_RUNTIMES) for name in needed_libraries(library))


def _torch_compiler() -> str:
    match = re.search(r"-\s*((?:GCC|clang)[^\n]*)", torch.__config__.show(), re.I)
    return match.group(1).strip() if match else "the compiler that built PyTorch"


def checked_cxx() -> str | None:
    """The compiler to build with: None keeps ``$CXX`` (or ``c++``) when it links the C++
    runtime as a shared library, or cannot be probed; else ``c++`` or ``g++`` from PATH that
    does, with a warning.

    Raises:
        ExtensionBuildError: no compiler found links the C++ runtime as a shared library.
    """
    cxx = os.environ.get("CXX") or "c++"
    if links_shared_runtime(cxx) is not False:
        return None
    first = Path(shutil.which(cxx) or cxx).resolve()
    for name in ("c++", "g++"):
        other = shutil.which(name)
        if other and Path(other).resolve() != first and links_shared_runtime(other):
            warnings.warn(f"lightning_genmodels: the C++ compiler {cxx} links the C++ runtime statically (an "
                          f"error inside an op would crash the process); building with {other} instead",
                          RuntimeWarning, stacklevel=3)
            return other
    raise ExtensionBuildError(
        f"the C++ compiler {cxx} links the C++ runtime (libstdc++) statically, so an error raised inside "
        f"an op would crash the process: set CXX to a compiler that links it as a shared library "
        f"(PyTorch was built with {_torch_compiler()})"
    )
