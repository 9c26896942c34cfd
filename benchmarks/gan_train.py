"""GAN training throughput: ``Trainer.fit`` on :class:`lightning_genmodels.GAN` against a plain
PyTorch loop over the same networks, MNIST batches, batch size and update schedule (one
discriminator step, one generator step, the EMA update and the finite-loss check per batch).

Both sides start from the same weights and time every steady-state batch on its own (start of
one batch to start of the next, after a few warm-up batches, setup excluded); runs alternate
between the two to share machine noise, and the median over all timed batches is the statistic,
beside the median of the per-repeat ratios of back-to-back runs.

    python benchmarks/gan_train.py --data-dir /path/to/mnist [--quick] [--json PATH]
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

from lightning_genmodels import GAN  # noqa: E402
from lightning_genmodels.data import MNISTDataModule  # noqa: E402
from lightning_genmodels.gan import losses  # noqa: E402



def make_model(options: dict) -> GAN:
    torch.manual_seed(0)
    return GAN(**options)


def datamodule(data_dir: str, batch_size: int) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=data_dir, input_format="symmetric", batch_size=batch_size)
    dm.setup("fit")
    return dm


def run_lightning(options: dict, dm: MNISTDataModule, batches: int) -> list[float]:
    """Seconds of each steady-state batch of Trainer.fit."""
    return lightning_batch_times(make_model(options), dm.train_dataloader(), batches)


def run_plain(options: dict, dm: MNISTDataModule, batches: int) -> list[float]:
    """Seconds of each steady-state batch of the same schedule written as a plain PyTorch loop."""
    model = make_model(options)
    gen, disc, ema, loss = model.generator, model.discriminator, model.generator_ema, options["loss"]
    opt_g = torch.optim.Adam(gen.parameters(), lr=model.hparams.lr_g, betas=model.hparams.betas_g)
    opt_d = torch.optim.Adam(disc.parameters(), lr=model.hparams.lr_d, betas=model.hparams.betas_d)
    model.train()
    torch.manual_seed(1)
    stamps = []
    for i, (real, _) in enumerate(dm.train_dataloader()):
        stamps.append(time.perf_counter())
        if i == batches:
            break
        n = real.shape[0]
        # discriminator step
        disc.requires_grad_(True)
        gen.requires_grad_(False)
        with torch.no_grad():
            fake = gen(torch.randn(n, model.latent_dim))
        d_loss = losses.discriminator_loss(loss, disc(real), disc(fake))
        if not torch.isfinite(d_loss).item():
            raise FloatingPointError("d_loss")
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        # generator step
        gen.requires_grad_(True)
        disc.requires_grad_(False)
        g_loss = losses.generator_loss(loss, disc(gen(torch.randn(n, model.latent_dim))))
        if not torch.isfinite(g_loss).item():
            raise FloatingPointError("g_loss")
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        ema.update_parameters(gen)
    return per_batch(stamps)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder of the MNIST IDX files")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--batches", type=int, default=150, help="batches per run (first 5 untimed)")
    args = parser.parse_args()
    if args.device != "cpu":
        parser.error("this benchmark runs on the CPU only")
    batches, repeats = (40, 2) if args.quick else (args.batches, args.repeats)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    options = {"latent_dim": 64, "features": args.features, "loss": "non_saturating", "ema_decay": 0.995}
    dm = datamodule(args.data_dir, args.batch_size)
    times: dict[str, list[float]] = {"lightning": [], "torch": []}
    paired = []  # per repeat: Lightning's median batch over the plain loop's, run back to back
    for _ in range(repeats):  # alternate, so both see the same machine load
        plain, light = run_plain(options, dm, batches), run_lightning(options, dm, batches)
        times["torch"] += plain
        times["lightning"] += light
        paired.append(statistics.median(light) / statistics.median(plain) - 1)

    cpu, isa = cpu_model(), vector_isa()
    base = statistics.median(times["torch"])
    params = {"batch_size": args.batch_size, "features": args.features, "timed_batches": batches - WARMUP,
              "loss": options["loss"], "repeats": repeats}
    records, rows = [], []
    for impl, ts in times.items():  # median over every timed batch of every run
        med = statistics.median(ts)
        extra = {"images_per_s": args.batch_size / med, "overhead_vs_torch": med / base - 1,
                 "paired_overheads": paired, "median_paired_overhead": statistics.median(paired),
                 "mean_s": statistics.fmean(ts), "cpu_model": cpu, "isa": isa}
        records.append(Record("gan_train", impl, "cpu", params, med, min(ts), max(ts), extra))
        rows.append({"impl": impl, "ms_per_batch": 1e3 * med, "min_ms": 1e3 * min(ts), "max_ms": 1e3 * max(ts),
                     "images_per_s": args.batch_size / med, "overhead_%": 100 * (med / base - 1)})
    info = machine_info("cpu")
    print(f"CPU: {cpu} ({isa}), {info['threads']} threads, torch {info['torch']}")
    print(f"GAN features={args.features}, batch {args.batch_size}, {batches - WARMUP} timed batches x {repeats} runs")
    print_table(rows, ["impl", "ms_per_batch", "min_ms", "max_ms", "images_per_s", "overhead_%"])
    print(f"overhead per repeat (back-to-back pairs): {', '.join(f'{100 * p:+.1f}%' for p in paired)}; "
          f"median {100 * statistics.median(paired):+.1f}%")
    write_json(args.json, records, "cpu")


if __name__ == "__main__":
    main()
