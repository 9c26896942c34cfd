"""The CPU E-step op on each of its code paths, timed in interleaved rounds in one process: each
instruction set this CPU runs (LGM_GMM_CPU_ISA) with and without pruned distances (LGM_GMM_PRUNE),
so their ratios hold on a shared, noisy machine.

    python benchmarks/gmm_paths.py --data pca50 --ks 10 100
    python benchmarks/gmm_paths.py --data pixels --ks 32 100 --iters 3 --json benchmarks/results/gmm_paths.json

Parameters come from benchmarks/gmm_em.py's start (uniform weights, random rows as means, the
data's variance) after ``--iters`` EM iterations, which sharpen the components as a fit does.
Columns: median ms per path; ``/first`` is the median over rounds of each path's time over the
first path's in the same round.
"""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gmm_em import PRUNE_ENV, initial_params, load_pixels, pca, torch_step  # noqa: E402
from harness import Record, base_parser, machine_info, print_table, time_interleaved, with_env, write_json  # noqa: E402

from lightning_genmodels.ops.gmm import CPU_ISA_ENV, available_cpu_isas, gmm_em_stats  # noqa: E402


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    default_dir = os.environ.get("LGM_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--data-dir", type=Path, default=Path(default_dir))
    parser.add_argument("--data", choices=["pixels", "pca50"], default="pca50")
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--covs", nargs="+", default=["diag", "spherical"])
    parser.add_argument("--iters", type=int, default=0, help="EM iterations before timing")
    args = parser.parse_args()
    pixels = load_pixels(args.data_dir, 60_000)
    x = (pixels if args.data == "pixels" else pca(pixels, 50)).float().contiguous()
    paths = {f"{isa}{'' if prune else '_noprune'}": {CPU_ISA_ENV: isa, **({} if prune else {PRUNE_ENV: "0"})}
             for isa in available_cpu_isas() if isa != "generic" for prune in (True, False)}
    info = machine_info("cpu")
    print(info)
    rows, records = [], []
    for k in args.ks:
        for cov in args.covs:
            state = {"params": tuple(p.float() for p in initial_params(x.double(), k, cov))}
            for _ in range(args.iters):
                torch_step("ext", x, cov, state)
            lw, mu, pc = state["params"]
            def call() -> None:
                gmm_em_stats(x, lw, mu, pc, cov, impl="ext")

            fns = {name: with_env(env, call) for name, env in paths.items()}
            times = time_interleaved(fns, "cpu", repeats=args.repeats, warmup=2)
            first = next(iter(times.values()))
            row = {"data": args.data, "K": k, "cov": cov}
            for name, t in times.items():
                ratio = statistics.median(a / b for a, b in zip(t, first))
                row[f"{name}_ms"] = 1e3 * statistics.median(t)
                row[f"{name}/first"] = ratio
                params = {"data": args.data, "N": x.shape[0], "D": x.shape[1], "K": k, "covariance_type": cov,
                          "iters_before": args.iters}
                records.append(Record("gmm_paths", name, "cpu", params, statistics.median(t), min(t), max(t),
                                      {"ratio_to_first": ratio, **info}))
            rows.append(row)
            print(row, flush=True)
    print_table(rows, list(dict.fromkeys(c for row in rows for c in row)))
    write_json(args.json, records, "cpu")


if __name__ == "__main__":
    main()
