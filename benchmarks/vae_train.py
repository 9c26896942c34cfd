"""VAE training throughput: ``Trainer.fit`` on :class:`lightning_genmodels.VAE` against a plain
PyTorch loop over the same networks, dynamically binarised MNIST batches, batch size and update
(one reparameterised ELBO step with Adam, the same finite-input check, β warm-up).

Both sides start from the same weights and time every steady-state batch on its own (start of
one batch to start of the next, so the loop's own overhead counts; a few warm-up batches and
setup excluded); runs alternate between the two so that both see the same machine load, and the
median over all timed batches is the statistic (robust to other processes on a shared machine).
Lightning's side is the real path: ``training_step`` with its ``self.log_dict`` calls, the
optimisation loop, callbacks and hooks.

    python benchmarks/vae_train.py --data-dir /path/to/mnist [--quick] [--json PATH]
"""
from __future__ import annotations

import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Record, base_parser, cpu_model, machine_info, print_table, vector_isa, write_json  # noqa: E402
from train_timing import WARMUP, lightning_batch_times, per_batch  # noqa: E402

from lightning_genmodels import VAE  # noqa: E402
from lightning_genmodels.data import MNISTDataModule  # noqa: E402



def make_model(options: dict) -> VAE:
    torch.manual_seed(0)
    return VAE(**options)


def run_lightning(options: dict, dm: MNISTDataModule, batches: int) -> list[float]:
    """Seconds of each steady-state batch of ``Trainer.fit``."""
    return lightning_batch_times(make_model(options), dm.train_dataloader(), batches)


def run_plain(options: dict, dm: MNISTDataModule, batches: int) -> list[float]:
    """Seconds of each steady-state batch of the same update written as a plain PyTorch loop."""
    model = make_model(options)
    optimizer = torch.optim.Adam(model.parameters(), lr=model.hparams.lr)
    model.train()
    torch.manual_seed(1)
    stamps = []
    for step, (x, _) in enumerate(dm.train_dataloader()):
        stamps.append(time.perf_counter())
        if step == batches:
            break
        if not torch.isfinite(x).all():
            raise ValueError("train batch contains NaN or inf")
        rec, kl = model.elbo_terms(x)
        loss = model.training_loss(rec, kl, model.beta_at(step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return per_batch(stamps)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder of the MNIST IDX files")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=65, help="batches per run (first 5 untimed)")
    args = parser.parse_args()
    if args.device != "cpu":
        parser.error("this benchmark runs on the CPU only")
    batches, repeats = (30, 2) if args.quick else (args.batches, args.repeats)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"You defined a `validation_step` but have no `val_dataloader`")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    options = {"latent_dim": 32, "likelihood": "bernoulli", "kl_warmup_steps": 500}
    dm = MNISTDataModule(data_dir=args.data_dir, input_format=VAE.input_format, batch_size=args.batch_size)
    dm.setup("fit")
    times: dict[str, list[float]] = {"lightning": [], "torch": []}
    paired = []  # per repeat: Lightning's median over the plain loop's, run back to back
    for r in range(repeats):  # alternate, so both see the same machine load
        medians = {}
        for impl, run in (("torch", run_plain), ("lightning", run_lightning)):
            ts = run(options, dm, batches)
            times[impl] += ts
            medians[impl] = statistics.median(ts)
            print(f"repeat {r} {impl}: median {medians[impl] * 1e3:.1f} ms/batch", flush=True)
        paired.append(medians["lightning"] / medians["torch"] - 1)

    cpu, isa = cpu_model(), vector_isa()
    base = statistics.median(times["torch"])
    params = {"batch_size": args.batch_size, "latent_dim": 32, "likelihood": "bernoulli",
              "timed_batches_per_run": batches - WARMUP, "repeats": repeats}
    records, rows = [], []
    for impl, ts in times.items():
        med = statistics.median(ts)
        extra = {"images_per_s": args.batch_size / med, "overhead_vs_torch": med / base - 1,
                 "paired_overheads": paired, "median_paired_overhead": statistics.median(paired),
                 "mean_s": statistics.fmean(ts), "cpu_model": cpu, "isa": isa}
        records.append(Record("vae_train", impl, "cpu", params, med, min(ts), max(ts), extra))
        rows.append({"impl": impl, "median_ms": med * 1e3, "min_ms": min(ts) * 1e3,
                     "images_per_s": extra["images_per_s"], "overhead": f"{100 * extra['overhead_vs_torch']:+.1f}%"})
    print({**machine_info("cpu"), "cpu_model": cpu, "isa": isa})
    print_table(rows, list(rows[0].keys()))
    print(f"overhead per repeat (back-to-back pairs): {', '.join(f'{100 * p:+.1f}%' for p in paired)}; "
          f"median {100 * statistics.median(paired):+.1f}%")
    write_json(args.json, records, "cpu")


if __name__ == "__main__":
    main()
