"""The k-means++ seeding of ``GaussianMixture.fit(X)`` (scikit-learn's greedy version) on the
dequantised MNIST pixels (float32, N=60000, D=784): one step's candidate distances and potentials
through our ``seeding_distances`` kernel against the reference (a matrix multiply, the GEMM
library's skinny path, and ATen ops on [N, C]), the op alone and the whole seeding (``sq_norms``
included), in interleaved rounds; and, where scikit-learn is installed, its ``kmeans_plusplus``
on the same rows and seed (whose centres ours must equal: the ``same_centres`` column).

    python benchmarks/kmeans_init.py [--quick] [--ks 10,50,100] [--repeats 3] [--json PATH]
"""
from __future__ import annotations

import functools
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gmm_em import load_pixels  # noqa: E402
from harness import Record, base_parser, cpu_model, machine_info, print_table, time_interleaved, vector_isa, write_json  # noqa: E402

from lightning_genmodels.gmm.kmeans import greedy_kmeans_plusplus  # noqa: E402
from lightning_genmodels.ops import seeding_distances, sq_norms  # noqa: E402
from lightning_genmodels.ops.gmm import gmm_cpu_isa  # noqa: E402

try:
    from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus
except ImportError:  # a benchmark-only comparison
    sk_kmeans_plusplus = None

IMPLS = ("ref", "ext")


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist")
    parser.add_argument("--ks", default="10,50,100", help="numbers of components (comma-separated)")
    args = parser.parse_args()
    info = {**machine_info(args.device), "cpu_model": cpu_model(), "isa": vector_isa(), "kernel_isa": gmm_cpu_isa()}
    print(info)
    x = load_pixels(args.data_dir, 60_000).float().contiguous()
    ks = [10] if args.quick else [int(v) for v in args.ks.split(",")]
    records, rows = [], []
    x_sq = sq_norms(x)
    cases = [(2 + int(math.log(k)), k) for k in ks]  # scikit-learn's candidates per centre
    for c_count, k in cases:
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(k))
        c = x[order[:c_count]].clone()
        closest = (x - x[order[-1]]).double().square().sum(1)  # D(x)² of one centre
        fns = {f"op {impl}": functools.partial(seeding_distances, x, c, x_sq, closest, impl=impl) for impl in IMPLS}
        fns.update({f"seeding {impl}": functools.partial(greedy_kmeans_plusplus, x, k, 0, impl=impl) for impl in IMPLS})
        if sk_kmeans_plusplus is not None:
            fns["seeding sklearn"] = functools.partial(sk_kmeans_plusplus, x.numpy(), k, random_state=0)
        t = time_interleaved(fns, args.device, repeats=args.repeats, warmup=1)
        row = {"K": k, "candidates": c_count}
        for what in ("op", "seeding"):
            ref, ext = t[f"{what} ref"], t[f"{what} ext"]
            row[f"{what}_ref_ms"] = 1e3 * statistics.median(ref)
            row[f"{what}_ext_ms"] = 1e3 * statistics.median(ext)
            row[f"{what}_ext_x_ref"] = statistics.median(e / r for e, r in zip(ext, ref))  # paired rounds
            for impl, ts in (("ref", ref), ("ext", ext)):
                records.append(Record(f"kmeans_{what}", impl, args.device, {"N": x.shape[0], "D": x.shape[1], "K": k,
                                      "candidates": c_count}, statistics.median(ts), min(ts), max(ts), info))
        if sk_kmeans_plusplus is not None:
            sk = t["seeding sklearn"]
            row["seeding_sklearn_ms"] = 1e3 * statistics.median(sk)
            row["sklearn_x_ext"] = statistics.median(s / e for s, e in zip(sk, t["seeding ext"]))
            theirs = torch.from_numpy(sk_kmeans_plusplus(x.numpy(), k, random_state=0)[0]).double()
            row["same_centres"] = torch.equal(greedy_kmeans_plusplus(x, k, 0), theirs)
            records.append(Record("kmeans_seeding", "sklearn", "cpu", {"N": x.shape[0], "D": x.shape[1], "K": k,
                                  "candidates": c_count, "same_centres": row["same_centres"]},
                                  statistics.median(sk), min(sk), max(sk), info))
        rows.append(row)
        print(f"K={k}: seeding ext {row['seeding_ext_ms'] / 1e3:.2f} s, ref {row['seeding_ref_ms'] / 1e3:.2f} s", flush=True)
    print_table(rows, list(rows[0]))
    write_json(args.json, records, args.device)


if __name__ == "__main__":
    main()
