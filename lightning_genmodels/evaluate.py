"""Cross-family evaluation: sample quality (FID, KID, precision/recall, mode coverage) and NLL of
trained models from their checkpoints, written as a report folder.

    python -m lightning_genmodels.evaluate --data-dir ../shared/data/mnist --out docs/evaluation \
        --model gmm=lightning_genmodels.GaussianMixture:/work/ckpts/gmm.ckpt \
        [--model vae=lightning_genmodels.VAE:/work/ckpts/vae.ckpt ...] [--log gmm=metrics.csv ...]

Writes ``report.md`` (a Markdown table and the class histograms), ``results.json``,
``samples_<name>.png`` (an 8×8 grid per model) and, with ``--log NAME=CSV`` (Lightning CSVLogger
files holding ``val/fid``), ``fid_over_training.png``.

A model is evaluated through the protocol every family shares: ``sample_images(n, seed)`` ->
[n, 1, 28, 28] in [0, 1]. NLL in bits per dimension on the MNIST test set comes from the
model's optional ``nll_bits_per_dim(loader) -> float`` (``loader``: the test DataLoader of an
MNISTDataModule in the model's ``input_format``), else, for a density on dequantised pixels
(``input_format`` "dequantized*" and ``score_samples``), from
:func:`~lightning_genmodels.metrics.dequantized_bits_per_dim`; otherwise it is left blank.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torchvision.utils import save_image

from lightning_genmodels.data import IDXFormatError
from lightning_genmodels.metrics import SampleQuality, dequantized_bits_per_dim, load_real_images
from lightning_genmodels.metrics.quality import KID_MIN_SUBSET, min_samples, sample_chunks
from lightning_genmodels.metrics.real import seeded_subset

COLUMNS = (("fid", "FID ↓", "{:.3f}"), ("kid", "KID ↓", "{:.4g}"), ("kid_subset_size", "KID subset", "{}"),
           ("precision", "precision ↑", "{:.3f}"), ("recall", "recall ↑", "{:.3f}"),
           ("coverage", "mode coverage ↑", "{:.0%}"), ("missing_digits", "missing digits", "{}"),
           ("confidence", "confidence ↑", "{:.3f}"), ("nll_bits_per_dim", "NLL bits/dim ↓", "{:.3f}"),
           ("sample_s", "sampling s", "{:.1f}"))


def parse_model(spec: str) -> tuple[str, str, Path]:
    """``NAME=package.module.Class:/path/to.ckpt`` -> (name, class path, checkpoint)."""
    name, sep, rest = spec.partition("=")
    cls, sep2, ckpt = rest.partition(":")
    if not (sep and sep2 and name and "." in cls and ckpt):
        raise ValueError(f"--model {spec!r}: expected NAME=package.module.Class:/path/to.ckpt")
    return name, cls, Path(ckpt)


def resolve_class(cls_path: str) -> type:
    """``package.module.Class`` -> the class, which must have ``sample_images(n, seed)``."""
    module, _, cls_name = cls_path.rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name, None)
    if cls is None:
        raise ValueError(f"{module} has no class {cls_name!r}")
    if not hasattr(cls, "sample_images"):
        raise TypeError(f"{cls_path} has no sample_images(n, seed); it cannot be evaluated")
    return cls


def load_model(cls_path: str, ckpt: Path, device: str) -> torch.nn.Module:
    """``Class.load_from_checkpoint(ckpt)`` in eval mode on ``device``."""
    cls = resolve_class(cls_path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} not found")
    return cls.load_from_checkpoint(str(ckpt), map_location=device, weights_only=False).eval()


def nll_bits_per_dim(model: torch.nn.Module, data_dir: str, seed: int) -> tuple[float | None, str]:
    """(NLL bits/dim on the MNIST test set or None, how it was computed)."""
    from lightning_genmodels.data import MNISTDataModule

    fmt = getattr(model, "input_format", None)
    own = hasattr(model, "nll_bits_per_dim")
    if not own and not (str(fmt).startswith("dequantized") and hasattr(model, "score_samples")):
        return None, "not defined"
    dm = MNISTDataModule(data_dir=data_dir, input_format=fmt, batch_size=1000, val_split=0)
    dm.setup("test")
    torch.manual_seed(seed)  # dequantisation / binarisation noise
    device = next(model.buffers(), torch.empty(0)).device
    if own:
        return float(model.nll_bits_per_dim(dm.test_dataloader())), "model.nll_bits_per_dim"
    batches = (x.to(device) for x, _ in dm.test_dataloader())
    return dequantized_bits_per_dim(model.score_samples, batches), "exact density, dequantisation bound"


@torch.no_grad()
def evaluate_model(model, quality: SampleQuality, num_samples: int, batch_size: int,
                   seed: int) -> tuple[dict, torch.Tensor]:
    """Metrics of ``num_samples`` samples (chunks as FIDCallback) and the first 64 images."""
    start, first = time.perf_counter(), []
    for chunk_seed, size in sample_chunks(num_samples, batch_size, seed):
        images = model.sample_images(size, seed=chunk_seed).float().clamp(0, 1).cpu()
        quality.update(images)
        if sum(len(f) for f in first) < 64:
            first.append(images)
    sample_s = time.perf_counter() - start
    return {**_row(quality), "sample_s": sample_s}, torch.cat(first)[:64]


def _row(quality: SampleQuality) -> dict:
    """Compute and reset ``quality``: its metrics as plain numbers for the table, with the KID
    subset size this row used (the requested one capped by the row's image count)."""
    out = quality.compute()
    quality.reset()
    hist, min_share = out["histogram"].tolist(), quality.classes.min_share
    return {
        "fid": float(out["fid"]), "kid": float(out["kid"]), "kid_std": float(out["kid_std"]),
        "kid_subset_size": int(quality.kid.subset_size),
        "precision": float(out["precision"]), "recall": float(out["recall"]),
        "coverage": float(out["coverage"]), "confidence": float(out["confidence"]),
        "missing_digits": ",".join(str(d) for d, h in enumerate(hist) if h < min_share) or "none",
        "histogram": hist,
    }


def real_floor(quality: SampleQuality, images: torch.Tensor) -> dict:
    """Metrics of real training images uint8 [N, 28, 28] in place of samples, through the same
    path as samples: the best values a model can expect (the real-vs-real floor)."""
    for i in range(0, len(images), 1000):
        quality.update(images[i : i + 1000].float().div(255).unsqueeze(1))
    return _row(quality)


def read_fid_log(path: Path) -> tuple[list[float], list[float]]:
    """(epochs, val/fid) from a Lightning CSVLogger ``metrics.csv``."""
    xs, ys = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("val/fid"):
                xs.append(float(row.get("epoch") or len(xs)))
                ys.append(float(row["val/fid"]))
    if not ys:
        raise ValueError(f"{path} has no val/fid values (log them with FIDCallback and a CSVLogger)")
    return xs, ys


def plot_fid_logs(logs: dict[str, Path], out: Path) -> None:
    """FID over training epochs, one line per log, log-scale y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, path in logs.items():
        ax.plot(*read_fid_log(path), marker="o", label=name)
    ax.set(xlabel="epoch", ylabel="val/fid (MNIST features)", yscale="log", title="FID over training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def fmt_row(name: str, row: dict) -> str:
    cells = [fmt.format(row[key]) if row.get(key) is not None else "—" for key, _, fmt in COLUMNS]
    return f"| {name} | " + " | ".join(cells) + " |"


def write_report(out: Path, results: dict, floor: dict, meta: dict, has_plot: bool) -> None:
    lines = [
        "# Sample quality of the model families", "",
        f"Generated {meta['date']} on {meta['machine']} by:", "", f"```\n{meta['command']}\n```", "",
        f"{meta['num_samples']} samples per model (seeds {meta['seed']}…) against the MNIST test set "
        f"(10,000 images) in the 128 features of the shipped MNIST network (sha256 {meta['weights'][:12]}…). "
        "KID: polynomial-kernel MMD², mean over 100 subsets of the row's KID subset size (the requested "
        f"{meta['kid_subset_size']}, capped by the row's image count; our features are not "
        "normalised, so its scale differs from Inception KID). Precision/recall: Kynkäänniemi et al. 2019, k=3. "
        f"Mode coverage: digits the classifier assigns to at least 2% of the samples. Confidence: mean max "
        f"softmax probability. The floor row is {meta['floor_num']} real training images in place of samples.", "",
        "| model | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "| --- |" + " --- |" * len(COLUMNS),
        fmt_row(f"real floor (train {meta['floor_num']})", floor),
    ]
    lines += [fmt_row(name, r) for name, r in results.items()]
    lines += ["", "NLL (MNIST test set, bits per dimension, upper bounds): "
              + "; ".join(f"{n}: {r['nll_method']}" for n, r in results.items()) + ".", "",
              "Class histograms of the samples (share per digit 0–9):", "",
              "| model | " + " | ".join(str(d) for d in range(10)) + " |", "| --- |" + " --- |" * 10]
    for name, r in [("real floor", floor), *results.items()]:
        lines.append(f"| {name} | " + " | ".join(f"{h:.3f}" for h in r["histogram"]) + " |")
    lines += ["", "## Samples", ""]
    lines += [f"**{name}** ({r['class']})\n\n![{name} samples](samples_{name}.png)\n" for name, r in results.items()]
    if has_plot:
        lines += ["## FID over training", "", "From " + ", ".join(f"{n}: `{p}`" for n, p in meta["logs"].items()) + ".",
                  "", "![FID over training](fid_over_training.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


# Every option is checked before any heavy work; parser.error exits with status 2 and the message.


def _check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The counts, sizes and device."""
    least = min_samples()
    why = f"precision/recall's k = {least - 1} nearest neighbours need {least}"
    if args.num_samples < least:
        parser.error(f"--num-samples must be >= {least} ({why} generated samples), got {args.num_samples}")
    if args.floor_num < least:
        parser.error(f"--floor-num must be >= {least} ({why} real training images), got {args.floor_num}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.kid_subset_size < KID_MIN_SUBSET:
        parser.error(f"--kid-subset-size must be >= {KID_MIN_SUBSET}, got {args.kid_subset_size}")
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        parser.error(f"--device {args.device!r}: {exc}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device!r}: CUDA is not available")


def _check_models(parser: argparse.ArgumentParser, specs: list[str]) -> list[tuple[str, str, Path]]:
    """Each ``--model``: its form, its class (imported) and that its checkpoint file exists."""
    models = []
    for spec in specs:
        try:
            name, cls_path, ckpt = parse_model(spec)
        except ValueError as exc:
            parser.error(str(exc))
        try:
            resolve_class(cls_path)
        except (ImportError, ValueError, TypeError) as exc:
            parser.error(f"--model {spec!r}: {exc}")
        if not ckpt.is_file():
            parser.error(f"--model {spec!r}: checkpoint {ckpt} not found")
        if name in [m[0] for m in models]:
            parser.error(f"--model {spec!r}: the name {name!r} is given twice")
        models.append((name, cls_path, ckpt))
    return models


def _check_logs(parser: argparse.ArgumentParser, specs: list[str]) -> dict[str, Path]:
    """Each ``--log NAME=metrics.csv`` names an existing file."""
    logs = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"--log {spec!r}: expected NAME=path/to/metrics.csv of an existing file")
        logs[name] = Path(path)
    return logs


def _floor_images(parser: argparse.ArgumentParser, data_dir: str | None, num: int) -> torch.Tensor:
    """The floor row's ``num`` real training images, uint8 [num, 28, 28] (a seeded subset)."""
    try:
        train = load_real_images(data_dir, "train")
    except IDXFormatError as exc:
        parser.error(f"--data-dir: {exc}")
    if num > len(train):
        parser.error(f"--floor-num must be at most {len(train)} (the real training images), got {num}")
    return seeded_subset(train, num)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_genmodels.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=pkg.Class:CKPT")
    parser.add_argument("--log", action="append", default=[], metavar="NAME=metrics.csv")
    parser.add_argument("--data-dir", default=None, help="MNIST IDX folder (default $LGM_DATA_DIR)")
    parser.add_argument("--out", default="docs/evaluation", help="report folder")
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--floor-num", type=int, default=10_000, help="real training images of the floor row")
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", default=None,
                        help="real-feature cache (default ~/.cache/lightning_genmodels/fid)")
    args = parser.parse_args(argv)
    _check_numbers(parser, args)
    models = _check_models(parser, args.model)
    logs = _check_logs(parser, args.log)
    floor_images = _floor_images(parser, args.data_dir, args.floor_num)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    quality = SampleQuality(kid_subset_size=args.kid_subset_size, seed=args.seed)
    quality.set_real_from_data(args.data_dir, "test", cache_dir=args.cache_dir)
    floor = real_floor(quality, floor_images)
    print(f"real floor ({args.floor_num} train vs test): FID {floor['fid']:.4g}", flush=True)
    results = {}
    for name, cls_path, ckpt in models:
        model = load_model(cls_path, ckpt, args.device)
        row, grid = evaluate_model(model, quality, args.num_samples, args.batch_size, args.seed)
        row["nll_bits_per_dim"], row["nll_method"] = nll_bits_per_dim(model, args.data_dir, args.seed)
        row.update({"class": cls_path, "checkpoint": str(ckpt)})
        save_image(grid, out / f"samples_{name}.png", nrow=8, padding=2)
        results[name] = row
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)), flush=True)
    if logs:
        plot_fid_logs(logs, out / "fid_over_training.png")
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{_cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "command": "python -m lightning_genmodels.evaluate "
                       + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
            "num_samples": args.num_samples, "seed": args.seed, "weights": quality.extractor.sha256,
            "kid_subset_size": args.kid_subset_size, "floor_num": args.floor_num,
            "logs": {name: str(path) for name, path in logs.items()}}
    write_report(out, results, floor, meta, bool(logs))
    (out / "results.json").write_text(json.dumps({"meta": meta, "floor": floor, "models": results}, indent=1))
    print(f"wrote {out / 'report.md'}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
