"""Shared benchmark plumbing: timing, the record format, tables and JSON.

Every benchmark in this folder prints a table and, with ``--json PATH``, writes a list of
records ``{bench, impl, device, params, median_s, min_s, max_s, ...extra}``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import torch


@dataclass
class Record:
    """One measured case of one implementation."""

    bench: str
    impl: str
    device: str
    params: dict[str, Any]
    median_s: float
    min_s: float
    max_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("extra"))
        return out


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], device: torch.device | str, repeats: int = 5, warmup: int = 1, inner: int = 1):
    """Median, min and max wall time of ``fn()`` in seconds, after ``warmup`` untimed calls.
    ``inner`` > 1 times runs of that many calls between two synchronisations, per call: on a GPU
    the rate of back-to-back launches, without one host round trip per microsecond-scale call."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times), min(times), max(times)


def with_env(env: dict[str, str], fn: Callable[[], Any]) -> Callable[[], Any]:
    """fn with the environment variables of env set during each call, then restored (how the
    benchmarks pick the GMM kernels' instruction set and pruning per call)."""

    def call() -> Any:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return fn()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    return call


def time_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device | str, repeats: int = 5,
                     warmup: int = 1, rewarm: int = 0, rotate: bool = False) -> dict[str, list[float]]:
    """Wall times in seconds of each ``fns[name]()``, ``repeats`` rounds that call every function
    once in turn (so a change of machine load hits all of them alike), after ``warmup`` rounds.
    ``rewarm``: each timed call follows that many untimed ones of the same function, so that each
    finds the machine as its own calls left it, not as the previous function did. ``rotate``: round
    r starts at function r mod len(fns), so that none always follows the same one."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(warmup + repeats):
        shift = r % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            for _ in range(rewarm if r >= warmup else 0):
                fn()
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="a subset that runs in about a minute")
    parser.add_argument("--json", type=Path, help="write the records to this JSON file")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case")
    return parser


def _cpuinfo_field(name: str) -> str | None:
    try:
        match = re.search(rf"^{name}\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        return None
    return match.group(1).strip() if match else None


def cpu_model() -> str:
    """The processor's name (``/proc/cpuinfo`` model name) with its family and model numbers
    (a VM's "AMD EPYC" names neither Zen 3 nor Zen 4), else what ``platform`` knows."""
    name = _cpuinfo_field("model name")
    if not name:
        return platform.processor() or platform.machine()
    family, model = _cpuinfo_field("cpu family"), _cpuinfo_field("model")
    return f"{name} (family {family}, model {model})" if family and model else name


def vector_isa() -> str:
    """The widest x86 vector instruction set of this CPU: ``avx512f``, ``avx2`` (with FMA),
    ``avx``, ``sse4_2``; else the machine name (``aarch64``). Results from different ISAs are
    never one comparison."""
    flags = set((_cpuinfo_field("flags") or "").split())
    if "avx512f" in flags:
        return "avx512f"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    for isa in ("avx", "sse4_2"):
        if isa in flags:
            return isa
    return platform.machine()


SC_LEVEL2_CACHE_SIZE = 191  # glibc's _SC_LEVEL2_CACHE_SIZE (bits/confname.h), x86-64 Linux


def l2_cache_bytes() -> int:
    """A core's level-2 cache in bytes (0 where unknown), as glibc's sysconf gives it to the C++
    kernels (Python's os.sysconf lacks the name)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return max(0, int(libc.sysconf(SC_LEVEL2_CACHE_SIZE)))
    except (OSError, AttributeError):
        return 0


def machine_info(device: str) -> dict[str, Any]:
    """Date, host, CPU model and vector ISA, threads and torch version (and the GPU, on CUDA)."""
    info = {
        "date": date.today().isoformat(),
        "host": platform.node(),
        "cpu": cpu_model(),
        "isa": vector_isa(),
        "l2_bytes": l2_cache_bytes(),  # the CPU GMM kernels' tile size depends on it
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A plain fixed-width table; floats to 4 significant digits."""

    def fmt(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def write_json(path: Path | None, records: list[Record], device: str, **machine_extra: Any) -> None:
    """Write the records with ``machine_info`` (plus ``machine_extra``) in each."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    machine = {**machine_info(device), **machine_extra}
    payload = [{**r.as_json(), "machine": machine} for r in records]
    path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {len(records)} records to {path}")
