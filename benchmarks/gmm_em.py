"""One exact EM iteration of a Gaussian mixture: our kernel (ext), the PyTorch reference (ref)
and scikit-learn, beside the machine's limit for each case.

    python benchmarks/gmm_em.py --quick
    python benchmarks/gmm_em.py --quick --isa avx2     # the AVX2 kernels, on an AVX-512 host too
    python benchmarks/gmm_em.py --device cuda --large --json benchmarks/results/gmm_em_h100.json

An iteration is the fused E-step pass plus the M-step, from the same initial parameters for all
implementations; iterations are chained, so the reported log-likelihood (the mean lower bound of
the last E-step) shows the implementations reach the same fit. The limit of a case is dense work
at the matrix-multiply rate measured here (distances and moments for every row and component)
plus one read pass over X, both timed in rounds interleaved with ``ext`` (each call after
``REWARM`` untimed ones of its own, so the machine is warm as in a fit): ``ext_x_limit`` is the median over rounds
of ext's time over that round's limit (the machines are shared: a burst of load then hits both
sides of the ratio), ``best_x_limit`` ext's fastest round over the smallest limit. ``nnz`` is the fraction of responsibilities above e^-87 at the initial
parameters; ``sparse`` says the kernel's moments skip the rest (nnz < 1/2), one way it can beat the
limit; ``pruned`` is the fraction of (row, component) distances the float32 CPU kernel cuts short
(csrc/cpu/gmm_prune.cpp: a partial distance already shows the responsibility is 0), the other,
and ``noprune`` times the same kernel with that turned off (LGM_GMM_PRUNE=0). ``gauss50``
(standard normal rows, overlapping components) keeps the responsibilities dense.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    Record, base_parser, machine_info, print_table, time_fn, time_interleaved, with_env, write_json,
)

from lightning_genmodels.gmm.em import precision_cholesky  # noqa: E402
from lightning_genmodels.data.idx import read_idx  # noqa: E402
from lightning_genmodels.ops.gmm import (  # noqa: E402
    CPU_ISA_ENV, _gmm_log_prob_ref, gmm_cpu_isa, gmm_em_stats, gmm_m_step,
)

COV_TYPES = ("diag", "spherical", "tied", "full")
LARGE = "gauss1m"  # --large: N=1,000,000 standard normal rows, D=128, K=1024 (a GPU target)
REG_COVAR = 1e-3
PRUNE_ENV = "LGM_GMM_PRUNE"  # "0": the CPU kernel computes every distance in full
QUIET_S = 0.5  # idle seconds before timing each implementation
REWARM = 3  # untimed calls before each timed one of ext and the limit probes (timed_with_limit)
Params = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # log_weights, means, prec_chol


def load_pixels(data_dir: Path, n: int) -> torch.Tensor:
    """MNIST training images as dequantised pixels in (0, 1): float64 [n, 784]."""
    path = next(p for p in [data_dir / "train-images-idx3-ubyte.gz", data_dir / "train-images-idx3-ubyte"] if p.exists())
    images = read_idx(path, 2051)[:n].reshape(n, -1).double()
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return (images + noise) / 256.0


def pca(x: torch.Tensor, k: int) -> torch.Tensor:
    centred = x - x.mean(0)
    _, vectors = torch.linalg.eigh(centred.T @ centred)
    return centred @ vectors[:, -k:].flip(1)


def initial_params(x: torch.Tensor, k: int, cov_type: str) -> Params:
    """Uniform weights, k distinct random rows as means, the data's covariance for every component."""
    n, d = x.shape
    means = x[torch.randperm(n, generator=torch.Generator().manual_seed(1))[:k]]
    var = x.var(0) + REG_COVAR
    cov: dict[str, Callable[[], torch.Tensor]] = {
        "diag": lambda: var.expand(k, d).clone(),
        "spherical": lambda: var.mean().expand(k).clone(),
        "tied": lambda: torch.cov(x.T) + REG_COVAR * torch.eye(d, dtype=x.dtype),
        "full": lambda: (torch.cov(x.T) + REG_COVAR * torch.eye(d, dtype=x.dtype)).expand(k, d, d).clone(),
    }
    log_w = torch.full((k,), -float(np.log(k)), dtype=x.dtype)
    return log_w, means.clone(), precision_cholesky(cov[cov_type](), cov_type)


def torch_step(impl: str, x: torch.Tensor, cov_type: str, state: dict[str, Any]) -> None:
    """One EM iteration with our op (``impl`` ext or ref) and M-step, in x's dtype."""
    log_w, means, prec = state["params"]
    stats = gmm_em_stats(x, log_w, means, prec, cov_type, impl=impl)
    new, prec_chol = gmm_m_step(stats, cov_type, REG_COVAR, float(torch.finfo(x.dtype).eps), impl=impl)
    state["params"] = (new.weights.log().to(x.dtype), new.means.to(x.dtype), prec_chol.to(x.dtype))
    state["loglik"] = stats.loglik / x.shape[0]


def sklearn_model(params: Params, cov_type: str):
    from sklearn.mixture import GaussianMixture

    log_w, means, prec = (p.double().cpu().numpy() for p in params)
    gm = GaussianMixture(len(log_w), covariance_type=cov_type, reg_covar=REG_COVAR)
    gm.weights_, gm.means_, gm.precisions_cholesky_ = np.exp(log_w), means, prec
    return gm


def sklearn_step(x: np.ndarray, state: dict[str, Any]) -> None:
    gm = state["model"]
    log_prob_norm, log_resp = gm._e_step(x)
    gm._m_step(x, log_resp)
    state["loglik"] = log_prob_norm


def case_flops(n: int, d: int, k: int, cov_type: str) -> float:
    """Floating-point work of one iteration as dense products compute it."""
    return {
        "diag": 8.0 * n * d * k,  # [x², x] · W, then Rᵀ [x, x²]
        "spherical": 4.0 * n * d * k,  # x · μᵀ, then Rᵀ x
        "tied": 4.0 * n * d * d + 4.0 * n * d * k,  # x U and xᵀx, then distances and Rᵀ x
        "full": 4.0 * n * d * d * k,  # (x − μ_k) U_k and Σ r x xᵀ per component
    }[cov_type]


def limit_probes(x: torch.Tensor) -> tuple[dict[str, Callable[[], Any]], float]:
    """The two measurements behind a limit: a read pass over x and a square matrix multiply in
    x's dtype (its flops returned beside them)."""
    size = 4096 if x.is_cuda else 2048
    a = torch.randn(size, size, dtype=x.dtype, device=x.device)
    return {"read": lambda: x.sum(), "gemm": lambda: a @ a}, 2.0 * size**3


def timed_with_limit(fn: Callable[[], Any], x: torch.Tensor, flops: float, repeats: int, warmup: int):
    """fn's (median, min, max) seconds and its ratio to the limit, paired: fn, the read pass and
    the matrix multiply run in interleaved rounds, each round's time is divided by that round's
    limit (read + flops at that round's matrix rate), and the median ratio is reported, so that a
    change of machine load (these machines are shared) hits both sides of the ratio alike. Beside
    it, the ratio of the fastest fn to the smallest limit over the rounds (``best``: each side at
    its least disturbed; on a shared machine the two can differ by 30%).
    Returns (timing, median ratio, median limit seconds, median read seconds, median flop rate,
    best ratio)."""
    probes, gemm_flops = limit_probes(x)
    # rewarm: each timed call finds the machine as its own calls left it (a fit's iterations follow
    # one another; X of 12 MB stays in cache between them), not as the multiply did. One untimed
    # call is not enough: right after a 2048^2 multiply (even on one thread) and one EM step, the
    # next step took 1.62 ms where a run of steps takes 1.46; after three, 1.47 (spherical K=10,
    # pca50, AVX-512).
    t = time_interleaved({"fn": fn, **probes}, x.device, repeats=repeats, warmup=warmup, rewarm=REWARM)
    rates = [gemm_flops / g for g in t["gemm"]]
    limits = [r + flops / rate for r, rate in zip(t["read"], rates)]
    ratio = statistics.median(f / lim for f, lim in zip(t["fn"], limits))
    timing = (statistics.median(t["fn"]), min(t["fn"]), max(t["fn"]))
    best = min(t["fn"]) / min(limits)
    return timing, ratio, statistics.median(limits), statistics.median(t["read"]), statistics.median(rates), best


def cases(quick: bool) -> list[tuple[str, int, str]]:
    """--quick: issue 7's targets, diag and spherical at K = 10 and 100 on every data set."""
    data = ("pixels", "pca50", "gauss50")
    covs = ("diag", "spherical") if quick else COV_TYPES
    return [(d, k, c) for d in data for k in (10, 100) for c in covs if not (d == "gauss50" and c in ("tied", "full"))]


def resp_density(x: torch.Tensor, params: Params, cov_type: str) -> float:
    """Fraction of responsibilities above e^-87 (the float32 kernel's exact zeros) at params."""
    joint = _gmm_log_prob_ref(x, *params, cov_type)
    return (torch.softmax(joint, 1) > float(np.exp(-87.0))).double().mean().item()


def pruned_fraction(x: torch.Tensor, params: Params, cov_type: str) -> float:
    """Fraction of (row, component) pairs the CPU kernel drops at params (0 where it does not prune)."""
    if x.device.type != "cpu":
        return 0.0
    joint = torch.ops.lightning_genmodels._gmm_pruned_log_prob(x, *params, cov_type)
    return torch.isneginf(joint).double().mean().item()


def run_case(data: str, x: torch.Tensor, k: int, cov_type: str, args) -> list[Record]:
    n, d = x.shape
    params = initial_params(x.double().cpu(), k, cov_type)
    xd = x.to(args.device, torch.float32)
    flops = case_flops(n, d, k, cov_type)
    limit = {}
    nnz = resp_density(xd.double(), tuple(p.to(args.device) for p in params), cov_type)
    common = {"data": data, "N": n, "D": d, "K": k, "covariance_type": cov_type}
    # Slow cases (full and tied covariances on 784 pixels): one timed run, no warm-up.
    slow = cov_type in ("full", "tied") and d > 100
    repeats, warmup = (1, 0) if slow else (args.repeats, 1)
    records = []
    impls = ["ext", "ref", "sklearn"] if not (slow and args.quick) else ["ext"]
    if data == LARGE or args.device != "cpu":
        impls = ["ext", "ref"]  # scikit-learn: minutes per iteration at N=1e6; on a GPU machine, its CPU's time
    pruned = pruned_fraction(xd, tuple(p.to(args.device, torch.float32) for p in params), cov_type)
    if pruned > 0:
        impls.insert(1, "noprune")
    for impl in impls:
        # OpenBLAS threads keep spinning for ~0.1 s after a scikit-learn step and take both cores:
        # the next case's ext ran 2.5x slower right after one (6.7 vs 2.7 ms, gauss50 K=10 diag).
        time.sleep(QUIET_S if args.device == "cpu" else 0.0)
        if impl == "sklearn":
            xs = x.double().cpu().numpy()
            state: dict[str, Any] = {"model": sklearn_model(params, cov_type)}
            timing = time_fn(lambda: sklearn_step(xs, state), "cpu", repeats=repeats, warmup=warmup)
            device, dtype = "cpu", "float64"
        else:
            state = {"params": tuple(p.to(args.device, torch.float32) for p in params)}
            op_impl = "ext" if impl == "noprune" else impl
            env = {PRUNE_ENV: "0"} if impl == "noprune" else {}
            step = with_env(env, lambda: torch_step(op_impl, xd, cov_type, state))
            if impl == "ext":
                timing, ratio, *limit_parts = timed_with_limit(step, xd, flops, repeats, warmup)
                limit = dict(zip(("limit_s", "read_s", "flop_rate", "x_limit_best"), limit_parts), x_limit=ratio)
            else:
                timing = time_fn(step, args.device, repeats=repeats, warmup=warmup)
            device, dtype = args.device, "float32"
        extra = {
            "final_loglik": float(state["loglik"]),
            "iterations": repeats + warmup,
            **limit,
            "flops": flops,
            "x_limit": limit["x_limit"] if impl == "ext" else timing[0] / limit["limit_s"],
            "resp_nnz": nnz,
            "sparse": nnz < 0.5,
            "pruned": pruned,
        }
        params_json = {**common, "dtype": dtype}
        records.append(Record("gmm_em", impl, device, params_json, *timing, extra))
    by_impl = {r.impl: r for r in records}
    for r in records:
        for other in ("ref", "sklearn", "noprune"):
            if other in by_impl:
                r.extra[f"speedup_vs_{other}"] = by_impl[other].median_s / r.median_s
    return records


def case_rows(records: list[Record]) -> list[dict[str, Any]]:
    """One row per case: ext, ref and scikit-learn times beside the limit."""
    rows: dict[tuple, dict[str, Any]] = {}
    for r in records:
        p = r.params
        key = (p["data"], p["K"], p["covariance_type"])
        row = rows.setdefault(key, {"data": p["data"], "N": p["N"], "D": p["D"], "K": p["K"], "cov": p["covariance_type"]})
        row[f"{r.impl}_ms"] = 1e3 * r.median_s
        if r.impl == "ext":
            row.update(limit_ms=1e3 * r.extra["limit_s"], ext_x_limit=r.extra["x_limit"],
                       best_x_limit=r.extra.get("x_limit_best", float("nan")),
                       ref_x_ext=r.extra.get("speedup_vs_ref", float("nan")),
                       sk_x_ext=r.extra.get("speedup_vs_sklearn", float("nan")),
                       noprune_x_ext=r.extra.get("speedup_vs_noprune", float("nan")),
                       nnz=r.extra["resp_nnz"], sparse="yes" if r.extra["sparse"] else "no",
                       pruned=r.extra["pruned"], loglik=r.extra["final_loglik"])
    return list(rows.values())


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    default_dir = os.environ.get("LGM_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--data-dir", type=Path, default=Path(default_dir))
    parser.add_argument("--n", type=int, default=60_000, help="rows of MNIST to use")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--large", action="store_true", help="add N=1e6, D=128, K=1024 diag (GPU target)")
    parser.add_argument("--isa", default=None, choices=["auto", "avx512", "avx2", "generic"],
                        help="CPU kernels' instruction set (sets LGM_GMM_CPU_ISA; default: the host's widest)")
    parser.add_argument("--data", nargs="+", choices=["pixels", "pca50", "gauss50"], default=None,
                        help="only these data sets (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.isa:
        os.environ[CPU_ISA_ENV] = args.isa
    kernel_isa = gmm_cpu_isa() if args.device == "cpu" else None
    print({**machine_info(args.device), "kernel_isa": kernel_isa})
    pixels = load_pixels(args.data_dir, args.n)
    gauss = torch.randn(args.n, 50, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    datasets = {"pixels": pixels, "pca50": pca(pixels, 50), "gauss50": gauss}
    todo = [c for c in cases(args.quick) if args.data is None or c[0] in args.data]
    if args.large:
        gen = torch.Generator().manual_seed(2)
        datasets[LARGE] = torch.randn(1_000_000, 128, generator=gen, dtype=torch.float64)
        todo.append((LARGE, 1024, "diag"))
    records: list[Record] = []
    for data, k, cov_type in todo:
        for r in run_case(data, datasets[data], k, cov_type, args):
            records.append(r)
            print(f"{data} K={k} {cov_type} {r.impl}: {1e3 * r.median_s:.1f} ms", flush=True)
    print()
    rows = case_rows(records)
    print_table(rows, list(dict.fromkeys(c for row in rows for c in row)))
    write_json(args.json, records, args.device, kernel_isa=kernel_isa)


if __name__ == "__main__":
    main()
