"""FID of the MNIST GMM after n EM iterations, and its final checkpoint, for the evaluation report.

    python benchmarks/gmm_fid_curve.py --data-dir ../shared/data/mnist \
        --csv docs/evaluation/gmm_fid_log.csv --ckpt /work/ckpts/gmm.ckpt

FIDCallback logs FID during a GMM fit too, but after each EM iteration of one fit; this gives
the curve of a fresh fit per point instead: it fits the model of configs/gmm_mnist.yaml (K=20, diag, k-means++,
seed 0) afresh for max_epochs = n, n in ``--iters`` (the same deterministic start, so fit n is
the first n EM iterations of the longest fit), and writes ``epoch,val/fid,...`` rows in the
format of Lightning's CSVLogger, which ``python -m lightning_genmodels.evaluate --log`` plots.
The longest fit is saved as the checkpoint.
"""
from __future__ import annotations

import argparse
import csv
import warnings
from pathlib import Path

from lightning.pytorch import Trainer

from lightning_genmodels import GaussianMixture
from lightning_genmodels.data import MNISTDataModule
from lightning_genmodels.metrics import SampleQuality
from lightning_genmodels.metrics.quality import sample_chunks

GMM = {"n_components": 20, "covariance_type": "diag", "max_iter": 20, "tol": 1e-3, "reg_covar": 1e-3,
       "init_params": "k-means++", "random_state": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--iters", type=int, nargs="+", default=[1, 2, 3, 5, 8, 12, 20])
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--csv", required=True)
    parser.add_argument("--ckpt", required=True)
    args = parser.parse_args()
    quality = SampleQuality(kid_subset_size=1000)
    quality.set_real_from_data(args.data_dir, "test")
    rows = []
    for n in sorted(args.iters):
        model = GaussianMixture(**GMM)
        dm = MNISTDataModule(data_dir=args.data_dir, batch_size=10_000, val_split=5000)
        trainer = Trainer(max_epochs=n, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, accelerator="cpu")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer.fit(model, dm)
        for seed, size in sample_chunks(args.num_samples, 500, seed=0):
            quality.update(model.sample_images(size, seed=seed).float())
        out = quality.compute()
        quality.reset()
        row = {"epoch": model.n_iter_ - 1, "step": model.n_iter_, "train/lower_bound": model.lower_bound_,
               **{f"val/{k}": float(out[k]) for k in ("fid", "kid", "precision", "recall", "coverage", "confidence")}}
        rows.append(row)
        print(", ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
        if n == max(args.iters):
            Path(args.ckpt).parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(args.ckpt)
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
