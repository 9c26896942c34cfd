"""Whole CPU sampling, `sample` against diffusers' loop, each in a process of its own.

``diffusion_sampling.py`` times its implementations in one process, in interleaved rounds. There
they share glibc's malloc state: diffusers' loop frees blocks large enough to raise the
allocator's dynamic thresholds, and the loops after it fault in fewer fresh pages than they would
alone. Here every timing is a fresh Python process that runs one implementation (one untimed
call, then ``--calls`` timed ones, median), alternating ours and diffusers' for ``--rounds``
rounds, as a user who runs only one of them sees it. ``paired`` is the median over rounds of
diffusers' time over ours in the same round. Same UNet config and noise as
``diffusion_sampling.py``; ``--march x86-64-v3`` (with ``ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2`` in the environment) measures the AVX2 path on an AVX-512 host.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diffusion_sampling import CONFIG_UNET, cpu_info, diffusers_loop, load_march_build, sampling_case  # noqa: E402
from harness import Record, print_table, write_json  # noqa: E402

IMPLS = ("ours", "diffusers")


def child(impl: str, case: tuple[str, int, int], calls: int, march: str | None) -> None:
    """One implementation in this process: prints its timed calls' seconds as JSON."""
    from lightning_genmodels import Diffusion
    from lightning_genmodels.ops.philox import philox_normal

    if march:
        load_march_build(march)
    sampler, steps, n = case
    torch.manual_seed(0)
    model = Diffusion(**CONFIG_UNET).eval()
    x_start = philox_normal(0, 0, [n, 1, 28, 28], device="cpu")
    if impl == "ours":
        def fn():
            return model.sample(n, steps=steps, sampler=sampler, eta=0.0, seed=0)
    else:
        def fn():
            return diffusers_loop(model, n, steps, sampler, x_start.clone())
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    print(json.dumps(times))


def run_child(impl: str, case_text: str, calls: int, march: str | None) -> list[float]:
    cmd = [sys.executable, __file__, "--child", impl, "--cases", case_text, "--calls", str(calls)]
    if march:
        cmd += ["--march", march]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{impl} {case_text} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["ddim:50:64"], metavar="SAMPLER:STEPS:N")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of fresh processes")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per process (after one untimed)")
    parser.add_argument("--march", help="the ops built with -march=MARCH (x86-64-v3: AVX2), in every process")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, sampling_case(args.cases[0]), args.calls, args.march)
        return
    info = cpu_info()
    if args.march:
        info["isa"] = f"-march={args.march}"
    print(f"CPU {info['cpu_model']}, ISA {info['isa']}, threads {torch.get_num_threads()}, fresh process per timing")
    records, rows = [], []
    for text in args.cases:
        case = sampling_case(text)
        sampler, steps, n = case
        per_round: dict[str, list[float]] = {impl: [] for impl in IMPLS}
        for _ in range(args.rounds):
            for impl in IMPLS:
                per_round[impl].append(statistics.median(run_child(impl, text, args.calls, args.march)))
        for impl in IMPLS:
            t = per_round[impl]
            records.append(Record("diffusion_sampling_isolated", impl, "cpu",
                                  {"sampler": sampler, "steps": steps, "n": n},
                                  statistics.median(t), min(t), max(t),
                                  {"rounds": t, "calls_per_process": args.calls, **info}))
        ours, theirs = per_round["ours"], per_round["diffusers"]
        rows.append({"sampler": sampler, "steps": steps, "n": n,
                     "ours_img_s": n / statistics.median(ours), "diffusers_img_s": n / statistics.median(theirs),
                     "ours_vs_diffusers": statistics.median(theirs) / statistics.median(ours),
                     "paired": statistics.median(b / a for a, b in zip(ours, theirs))})
    print_table(rows, list(rows[0]))
    write_json(args.json, records, "cpu")


if __name__ == "__main__":
    main()
