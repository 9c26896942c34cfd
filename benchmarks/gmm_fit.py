"""A whole fit, initialisation included: ``GaussianMixture.fit(X)`` against scikit-learn's, on
dequantised MNIST pixels, to convergence (same options, k-means initialisation on each side).

    python benchmarks/gmm_fit.py [--quick] [--json PATH]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gmm_em import load_pixels  # noqa: E402
from harness import Record, base_parser, machine_info, print_table, write_json  # noqa: E402

from lightning_genmodels import GaussianMixture  # noqa: E402


def fit_ours(x: torch.Tensor, options: dict, device: str) -> tuple[float, dict]:
    model = GaussianMixture(**options)
    start = time.perf_counter()
    model.fit(x.float(), accelerator=device, batch_size=10_000)
    seconds = time.perf_counter() - start
    return seconds, {"n_iter": model.n_iter_, "converged": model.converged_, "lower_bound": model.lower_bound_}


def fit_sklearn(x: torch.Tensor, options: dict) -> tuple[float, dict]:
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    model = SkGaussianMixture(**options)
    data = x.double().numpy()
    start = time.perf_counter()
    model.fit(data)
    seconds = time.perf_counter() - start
    return seconds, {"n_iter": model.n_iter_, "converged": model.converged_, "lower_bound": model.lower_bound_}


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist")
    args = parser.parse_args()
    print(machine_info(args.device))
    x = load_pixels(args.data_dir, 60_000)
    cases = [("diag", 10)] if args.quick else [("diag", 10), ("spherical", 10), ("diag", 50)]
    records, rows = [], []
    for cov, k in cases:
        options = dict(n_components=k, covariance_type=cov, reg_covar=1e-3, max_iter=100, tol=1e-3, random_state=0)
        for impl in ("ext", "sklearn"):
            if impl == "sklearn":
                seconds, out = fit_sklearn(x, options)
            else:
                seconds, out = fit_ours(x, options, args.device)
            params = {"N": x.shape[0], "D": x.shape[1], "K": k, "covariance_type": cov}
            records.append(Record("gmm_fit", impl, "cpu" if impl == "sklearn" else args.device, params,
                                  seconds, seconds, seconds, out))
            rows.append({**params, "impl": impl, "s": seconds, **out})
            print(f"{cov} K={k} {impl}: {seconds:.1f} s", flush=True)
    print_table(rows, list(rows[0].keys()))
    write_json(args.json, records, args.device)


if __name__ == "__main__":
    main()
