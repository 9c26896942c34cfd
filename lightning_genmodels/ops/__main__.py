"""Build the extension ahead of time and report what was built.

    python -m lightning_genmodels.ops build [--cuda | --no-cuda] [--arch "8.0;9.0"]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from .build import NAMESPACE, ExtensionBuildError, cache_dir, load_library, resolve_cuda_home, source_dir

# Dispatch keys the report checks. A CompositeExplicitAutograd kernel serves every device (ours
# there: gmm_cpu_isa, unet_sample_forward); a CompositeImplicitAutograd one comes with the schema.
KERNEL_KEYS = ("CPU", "CUDA", "CompositeExplicitAutograd", "CompositeImplicitAutograd")


def op_kernels(namespace: str = NAMESPACE) -> dict[str, list[str]]:
    """{op name: the KERNEL_KEYS it has a kernel for} of every op in ``namespace``."""
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith(f"{namespace}::"))
    return {n.split("::")[1]: [k for k in KERNEL_KEYS if torch._C._dispatch_has_kernel_for_dispatch_key(n, k)]
            for n in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_genmodels.ops")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help="compile (or find cached) and load the extension")
    cuda = cmd.add_mutually_exclusive_group()
    cuda.add_argument("--cuda", action="store_true", help="compile CUDA sources even without a GPU")
    cuda.add_argument("--no-cuda", action="store_true", help="CPU kernels only")
    cmd.add_argument("--arch", help="TORCH_CUDA_ARCH_LIST, e.g. '8.0;9.0'")
    cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.arch and args.no_cuda:
        parser.error("--arch picks CUDA architectures: it cannot go with --no-cuda")

    if args.cuda or args.no_cuda:
        os.environ["LGM_OPS_CUDA"] = "1" if args.cuda else "0"
    if args.arch:
        os.environ["TORCH_CUDA_ARCH_LIST"] = args.arch
    start = time.perf_counter()
    try:
        info = load_library()
    except ExtensionBuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    if (args.cuda or args.arch) and not info.with_cuda:  # a CUDA compile check must not pass CPU-only
        print(f"{NAMESPACE} ops built without CUDA ({info.library}), though --cuda or --arch asked for it: "
              "no CUDA toolkit or CUDA torch, or the CUDA compile failed (its warning above says why; on a "
              "machine without a GPU, --arch needs --cuda)", file=sys.stderr)
        return 1
    cuda_home = resolve_cuda_home()
    report = {
        "library": str(info.library),
        "cached": info.cached,
        "seconds": round(time.perf_counter() - start, 2),
        "cpu": True,
        "cuda": info.with_cuda,
        "archs": info.archs,
        "cuda_home": str(cuda_home) if cuda_home else None,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "sources": str(source_dir()),
        "cache": str(cache_dir()),
        "ops": op_kernels(),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>10}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
