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
import os
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torchvision.utils import save_image

from lightning_genmodels.data import IDXFormatError
from lightning_genmodels.metrics import SampleQuality, dequantized_bits_per_dim, load_real_images
from lightning_genmodels.metrics.quality import KID_MIN_SUBSET, min_samples, sample_chunks
from lightning_genmodels.metrics.real import seeded_subset
from lightning_genmodels.ops.philox import check_seed

COLUMNS = (("fid", "FID ↓", "{:.3f}"), ("kid", "KID ↓", "{:.4g}"), ("kid_subset_size", "KID subset", "{}"),
           ("precision", "precision ↑", "{:.3f}"), ("recall", "recall ↑", "{:.3f}"),
           ("coverage", "mode coverage ↑", "{:.0%}"), ("missing_digits", "missing digits", "{}"),
           ("confidence", "confidence ↑", "{:.3f}"), ("nll_bits_per_dim", "NLL bits/dim ↓", "{:.3f}"),
           ("sample_s", "sampling s", "{:.1f}"))
NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")  # a model's name is part of its samples_<name>.png
SAMPLE_TOL = 1e-6  # sample values this far outside [0, 1] are float rounding, clamped


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


def checked_samples(images: object, name: str, n: int, seed: int) -> torch.Tensor:
    """``images`` from model ``name``'s ``sample_images(n, seed)`` as float [n, 1, 28, 28] in
    [0, 1], else ValueError saying what it returned (values within ``SAMPLE_TOL`` of [0, 1] are
    clamped: float rounding)."""
    call = f"model {name!r}: sample_images({n}, seed={seed}) returned"
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{call} a {type(images).__name__}, expected a tensor [{n}, 1, 28, 28] in [0, 1]")
    if tuple(images.shape) != (n, 1, 28, 28):
        got = f"{len(images)} images" if images.dim() == 4 and images.shape[1:] == (1, 28, 28) else "shape"
        raise ValueError(f"{call} {got} {list(images.shape)}, expected [{n}, 1, 28, 28]")
    images = images.float()
    if not torch.isfinite(images).all():
        raise ValueError(f"{call} {int((~torch.isfinite(images)).sum())} NaN or infinite values")
    lo, hi = images.min().item(), images.max().item()
    if lo < -SAMPLE_TOL or hi > 1 + SAMPLE_TOL:
        raise ValueError(f"{call} values in [{lo:.4g}, {hi:.4g}], expected [0, 1] (rescale images in "
                         "[0, 255] or [-1, 1] in its sample_images)")
    return images.clamp(0, 1)


@torch.no_grad()
def evaluate_model(model, quality: SampleQuality, num_samples: int, batch_size: int,
                   seed: int, name: str = "model") -> tuple[dict, torch.Tensor]:
    """Metrics of ``num_samples`` samples (chunks as FIDCallback) and the first 64 images; a
    chunk that is not [size, 1, 28, 28] in [0, 1] raises ValueError naming model ``name``."""
    start, first = time.perf_counter(), []
    for chunk_seed, size in sample_chunks(num_samples, batch_size, seed):
        images = checked_samples(model.sample_images(size, seed=chunk_seed), name, size, chunk_seed).cpu()
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
    if meta.get("failed"):
        lines[2:2] = [f"**Incomplete:** model {meta['failed']}; the models before it are below.", ""]
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


# Every option is checked, and every model loaded, before any heavy work (the floor, sampling);
# parser.error exits with status 2 and the message.


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
    chunks = len(sample_chunks(args.num_samples, args.batch_size, 0))
    try:  # chunk j of the samples has seed + j
        check_seed(args.seed), check_seed(args.seed + chunks - 1)
    except ValueError:
        parser.error(f"--seed must be an integer in [0, 2**64 - {chunks}] (chunk j of the {chunks} "
                     f"sample chunks has seed + j), got {args.seed}")


def _check_models(parser: argparse.ArgumentParser, specs: list[str]) -> list[tuple[str, str, Path]]:
    """Each ``--model``: its form, a name fit for a file name, its class (imported), its checkpoint file."""
    models = []
    for spec in specs:
        try:
            name, cls_path, ckpt = parse_model(spec)
        except ValueError as exc:
            parser.error(str(exc))
        if not NAME.fullmatch(name):
            parser.error(f"--model {spec!r}: the name {name!r} must be 1 to 100 letters, digits, '.', '_' "
                         "or '-' (it names the file samples_<name>.png)")
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
    """Each ``--log NAME=metrics.csv`` names an existing file with ``val/fid`` values."""
    logs = {}
    if specs:  # (without it the plot failed after all the sampling, and report.md was never written)
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            parser.error(f"--log draws the FID plot with matplotlib, which does not import ({exc}): "
                         "pip install matplotlib, or leave out --log")
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"--log {spec!r}: expected NAME=path/to/metrics.csv of an existing file")
        try:
            read_fid_log(Path(path))
        except (OSError, ValueError, csv.Error) as exc:  # ValueError: no val/fid, a non-number, not text
            parser.error(f"--log {spec!r}: {exc}")
        if name in logs:
            parser.error(f"--log {spec!r}: the name {name!r} is given twice")
        logs[name] = Path(path)
    return logs


def _check_folder(parser: argparse.ArgumentParser, flag: str, value: str) -> Path:
    """``flag``'s ``value`` (``--out``, ``--cache-dir``) is a folder or can be made one: its
    nearest existing path is a writable folder."""
    path = Path(value)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        parser.error(f"{flag} {value!r}: {existing} exists and is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        parser.error(f"{flag} {value!r}: the folder {existing} is not writable")
    return path


def _load_models(parser: argparse.ArgumentParser, models: list[tuple[str, str, Path]],
                 device: str) -> dict[str, tuple[str, Path, torch.nn.Module]]:
    """Every model loaded from its checkpoint before any sampling: name -> (class, checkpoint,
    model). A checkpoint that does not load (corrupt, of another class) is a parser error."""
    loaded = {}
    for name, cls_path, ckpt in models:
        try:
            loaded[name] = cls_path, ckpt, load_model(cls_path, ckpt, device)
        except Exception as exc:  # anything the checkpoint's bytes or hyperparameters can raise
            text = " ".join(str(exc).split())  # a missing-keys message lists every key: its start
            parser.error(f"--model {name}={cls_path}:{ckpt}: the checkpoint does not load as {cls_path} "
                         f"({type(exc).__name__}: {text[:300]}{' …' if len(text) > 300 else ''})")
    return loaded


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
    out = _check_folder(parser, "--out", args.out)
    if args.cache_dir is not None:
        _check_folder(parser, "--cache-dir", args.cache_dir)
    floor_images = _floor_images(parser, args.data_dir, args.floor_num)
    loaded = _load_models(parser, models, args.device)
    out.mkdir(parents=True, exist_ok=True)

    quality = SampleQuality(kid_subset_size=args.kid_subset_size, seed=args.seed)
    quality.set_real_from_data(args.data_dir, "test", cache_dir=args.cache_dir)
    floor = real_floor(quality, floor_images)
    print(f"real floor ({args.floor_num} train vs test): FID {floor['fid']:.4g}", flush=True)
    results, failed = {}, None
    try:  # a model failing midway still leaves the report of the models before it
        for name, (cls_path, ckpt, model) in loaded.items():
            row, grid = evaluate_model(model, quality, args.num_samples, args.batch_size, args.seed, name)
            row["nll_bits_per_dim"], row["nll_method"] = nll_bits_per_dim(model, args.data_dir, args.seed)
            row.update({"class": cls_path, "checkpoint": str(ckpt)})
            save_image(grid, out / f"samples_{name}.png", nrow=8, padding=2)
            results[name] = row
            print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)), flush=True)
    except (Exception, KeyboardInterrupt) as exc:
        failed = f"{name!r} failed ({type(exc).__name__}: {exc})"
        raise
    finally:
        _write_outputs(out, args, argv, quality, floor, results, logs, failed)


def _write_outputs(out: Path, args: argparse.Namespace, argv: list[str] | None, quality: SampleQuality,
                   floor: dict, results: dict, logs: dict[str, Path], failed: str | None) -> None:
    """report.md, results.json and the FID plot; ``failed``: the model that stopped the run, if any."""
    has_plot = bool(logs)
    if logs:
        try:  # the results must still be written
            plot_fid_logs(logs, out / "fid_over_training.png")
        except Exception as exc:  # (a log changed since it was checked)
            print(f"the FID plot failed ({type(exc).__name__}: {exc}); writing the report without it", file=sys.stderr)
            has_plot = False
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{_cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "command": "python -m lightning_genmodels.evaluate " + " ".join(argv if argv is not None else sys.argv[1:]),
            "num_samples": args.num_samples, "seed": args.seed, "weights": quality.extractor.sha256,
            "kid_subset_size": args.kid_subset_size, "floor_num": args.floor_num,
            "logs": {name: str(path) for name, path in logs.items()}, "failed": failed}
    write_report(out, results, floor, meta, has_plot)
    (out / "results.json").write_text(json.dumps({"meta": meta, "floor": floor, "models": results}, indent=1))
    print(f"wrote {out / 'report.md'}" + (f" (incomplete: model {failed})" if failed else ""),
          file=sys.stderr if failed else sys.stdout)


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
