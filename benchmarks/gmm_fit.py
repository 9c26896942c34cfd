"""Whole fits, initialisation included: ``GaussianMixture.fit(X)`` against scikit-learn's, on
dequantised MNIST pixels (float32, N=60000, D=784), to convergence with the same options
(k-means++ initialisation, n_init=1, tol=1e-3, reg_covar=1e-3, max_iter=300, so that both converge).
For the same seed both start from the same k-means++ centres (ours draws as scikit-learn's does)
and take nearly the same EM path: scikit-learn's sums are float32 here, ours float64, so the
iteration counts may differ by a few. And the cost of
``fit(X)`` per EM iteration against the E-step and M-step ops' own time on the same batches.

    python benchmarks/gmm_fit.py [--quick] [--isa avx2] [--ks 10,50,100] [--seeds N] [--json PATH]
    python benchmarks/gmm_fit.py --iteration-only --iteration-data pca50 --iteration-ks 10,100   # D = 50

An AVX2 machine on an AVX-512 host (our kernels, PyTorch's, MKL's and OpenBLAS's capped alike):
    LGM_GMM_CPU_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 OPENBLAS_CORETYPE=Haswell \
        python benchmarks/gmm_fit.py
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gmm_em import load_pixels, pca  # noqa: E402
from harness import Record, base_parser, cpu_model, machine_info, print_table, vector_isa, write_json  # noqa: E402

from lightning_genmodels import ConvergenceWarning, GaussianMixture  # noqa: E402
from lightning_genmodels.ops.gmm import CPU_ISA_ENV, GMMStats, gmm_cpu_isa, gmm_em_stats, gmm_m_step  # noqa: E402

OPTIONS = {"covariance_type": "diag", "init_params": "k-means++", "n_init": 1, "tol": 1e-3,
           "reg_covar": 1e-3, "max_iter": 300, "random_state": 0}
BATCH = 65536  # GaussianMixture.fit's default


def fit_ours(x: torch.Tensor, k: int, device: str, seed: int = 0) -> tuple[float, dict]:
    model = GaussianMixture(k, **{**OPTIONS, "random_state": seed})
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported in the table instead
        model.fit(x, accelerator=device, batch_size=BATCH)
    seconds = time.perf_counter() - start
    return seconds, {"n_iter": int(model.n_iter_), "converged": bool(model.converged_), "lower_bound": float(model.lower_bound_)}


def fit_sklearn(x: torch.Tensor, k: int, seed: int = 0) -> tuple[float, dict]:
    from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    model = SkGaussianMixture(k, **{**OPTIONS, "random_state": seed})
    data = x.numpy()  # the same float32 rows
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkConvergenceWarning)
        model.fit(data)
    seconds = time.perf_counter() - start
    return seconds, {"n_iter": int(model.n_iter_), "converged": bool(model.converged_), "lower_bound": float(model.lower_bound_)}


def per_iteration(x: torch.Tensor, k: int, device: str, repeats: int) -> dict:
    """Seconds per EM iteration of fit(X) (from max_iter=1 and max_iter=1+m fits from the same
    given start) and of the op alone over the same batches (views of x) along the same path: the
    E-step op and the M-step op chained from the same start, iterations 2 .. 1+m timed (the op's
    time moves with the parameters by up to ~10%, so timing it at the start alone would not do)."""
    start = GaussianMixture(k, **{**OPTIONS, "max_iter": 0}).fit(x, accelerator=device)
    init = {"weights_init": start.weights_.double().numpy(), "means_init": start.means_.double().numpy(),
            "precisions_init": start.precisions_.double().numpy()}
    xd = x.to(device)
    first = tuple(t.to(device, x.dtype) for t in (torch.log(start.weights_), start.means_, start.precisions_cholesky_))
    eps = float(torch.finfo(x.dtype).eps)

    def op_iterations(n: int) -> float:
        """Seconds of iterations 2 .. 1+n: the E-step op over the batches, then the M-step op."""
        log_w, means, prec_chol = first
        t0 = 0.0
        for i in range(1 + n):
            if i == 1:
                t0 = time.perf_counter()
            parts = [gmm_em_stats(xd[s : s + BATCH], log_w, means, prec_chol, "diag")
                     for s in range(0, xd.shape[0], BATCH)]
            stats = GMMStats(*(sum(p[j] for p in parts) for j in range(4)))
            step, prec_chol = gmm_m_step(stats, "diag", OPTIONS["reg_covar"], eps, prev_means=means)
            log_w, means, prec_chol = step.weights.log().to(x.dtype), step.means.to(x.dtype), prec_chol.to(x.dtype)
        return time.perf_counter() - t0

    def fit(n: int) -> float:
        model = GaussianMixture(k, **{**OPTIONS, "max_iter": n, "tol": 0.0}, **init)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, accelerator=device, batch_size=BATCH)
        return time.perf_counter() - t0

    m = 10
    op_iterations(1), fit(1)  # warm up
    ops, fits = [], []
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        ops.append(op_iterations(m) / m)
        fits.append((fit(1 + m) - fit(1)) / m)
    op, it = sorted(ops)[len(ops) // 2], sorted(fits)[len(fits) // 2]
    return {"op_s": op, "fit_iter_s": it, "ratio": it / op}


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist")
    parser.add_argument("--isa", default=None, choices=["auto", "avx512", "avx2", "generic"],
                        help="our CPU kernels' instruction set (sets LGM_GMM_CPU_ISA)")
    parser.add_argument("--ks", default="10,50,100", help="numbers of components (comma-separated)")
    parser.add_argument("--iteration-data", choices=["pixels", "pca50"], default="pixels",
                        help="data of the per-iteration cost (pca50: the pixels' first 50 principal components)")
    parser.add_argument("--iteration-ks", default="10", help="K of the per-iteration cost (comma-separated)")
    parser.add_argument("--iteration-only", action="store_true", help="skip the whole fits")
    parser.add_argument("--seeds", type=int, default=1,
                        help="random_state 0 .. seeds-1 for both (the iteration count moves with the start)")
    args = parser.parse_args()
    if args.isa:
        os.environ[CPU_ISA_ENV] = args.isa
    info = {**machine_info(args.device), "cpu_model": cpu_model(), "isa": vector_isa(), "kernel_isa": gmm_cpu_isa()}
    print(info)
    x = load_pixels(args.data_dir, 60_000).float()
    records, rows = [], []
    params = {"N": x.shape[0], "D": x.shape[1], "covariance_type": "diag"}
    xi = pca(x.double(), 50).float().contiguous() if args.iteration_data == "pca50" else x
    for k in [int(v) for v in args.iteration_ks.split(",")]:
        iteration = per_iteration(xi, k, args.device, 3 if args.quick else args.repeats)
        print(f"per EM iteration, {args.iteration_data} K={k}: op {iteration['op_s'] * 1e3:.2f} ms, "
              f"fit(X) {iteration['fit_iter_s'] * 1e3:.2f} ms, ratio {iteration['ratio']:.3f}", flush=True)
        records.append(Record("gmm_fit_per_iteration", "ext", args.device,
                              {**params, "D": xi.shape[1], "K": k, "data": args.iteration_data},
                              iteration["fit_iter_s"], iteration["fit_iter_s"], iteration["fit_iter_s"],
                              {**iteration, **info}))
    totals: dict[tuple[int, str], float] = {}
    for k in [] if args.iteration_only else [10] if args.quick else [int(v) for v in args.ks.split(",")]:
        for seed in range(args.seeds):
            for impl in ("ours", "sklearn"):
                seconds, out = fit_sklearn(x, k, seed) if impl == "sklearn" else fit_ours(x, k, args.device, seed)
                device = "cpu" if impl == "sklearn" else args.device
                records.append(Record("gmm_fit", impl, device, {**params, "K": k, "random_state": seed}, seconds,
                                      seconds, seconds, {**out, **info}))
                rows.append({"K": k, "seed": seed, "impl": impl, "s": seconds, **out})
                totals[k, impl] = totals.get((k, impl), 0.0) + seconds
                print(f"diag K={k} seed {seed} {impl}: {seconds:.1f} s ({out['n_iter']} iterations)", flush=True)
            ours, theirs = rows[-2]["s"], rows[-1]["s"]
            rows[-2]["speedup"] = theirs / ours
    print_table(rows, ["K", "seed", "impl", "s", "n_iter", "converged", "lower_bound", "speedup"])
    for k in sorted({k for k, _ in totals}):
        ours, theirs = totals[k, "ours"], totals[k, "sklearn"]
        print(f"K={k}: over {args.seeds} seed(s), ours {ours:.1f} s, scikit-learn {theirs:.1f} s, "
              f"speed-up {theirs / ours:.2f}")
    write_json(args.json, records, args.device)


if __name__ == "__main__":
    main()
