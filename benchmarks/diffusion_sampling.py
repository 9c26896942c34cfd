"""Diffusion sampling speed: the fused step op alone, and whole DDIM-50 / DDPM-1000 sampling.

    python benchmarks/diffusion_sampling.py --quick
    python benchmarks/diffusion_sampling.py --json benchmarks/results/diffusion_sampling_cpu.json
    # the AVX2 path on an AVX-512 machine: our kernels for x86-64-v3, torch's kernels capped at AVX2
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/diffusion_sampling.py --march x86-64-v3

1. ``step``: one sampler step on [B, 1, 28, 28], B = 64, 256, 1024, for DDPM (noise drawn: σ > 0)
   and DDIM η = 0 (no noise): ``ext`` (the fused op), ``ref`` (the eager reference, Philox noise
   included), ``ref_compiled`` (the reference's tensor math under ``torch.compile``; for DDPM
   with the same Philox noise passed in, drawn outside and untimed, so a lower bound: with the
   Philox reference inside, inductor had not finished compiling after 400 s here). Compiled per
   batch size (``dynamic=False``): with ``ATEN_CPU_CAPABILITY=avx2`` a dynamic-shape kernel had
   returned wrong values (up to 9e25 off) at batch 64, which the check here caught; the likelier
   cause, found later, is inductor's cache shared across capabilities (``separate_inductor_cache``).
   All three skip the host check of the timesteps (``check_timesteps=False``, as the sampling loop
   calls the op). On a GPU each timed sample is 50 back-to-back calls (launch rate, no round trip).
2. ``sampling``: images per second of whole sampling with the UNet of configs/diffusion_mnist.yaml
   (its weights from --ckpt, else a seeded random init; the speed does not depend on them):
   ``ours`` = ``Diffusion.sample`` as it runs by default (fused op, inference mode; on the CPU
   the images split over threads of one intra-op thread each; on CUDA the UNet compiled by
   ``torch.compile`` and each step a CUDA-graph replay), ``ours_no_compile`` and
   ``diffusers_compiled`` (CUDA) = ours with the UNet not compiled, diffusers' loop with it
   compiled (the share of the UNet's compilation and of the sampler loop in the ratio),
   ``ours_compiled`` (CPU, ``--compile-unet``) = ours with ``compile_unet=True``, ``ours_one_team`` (CPU) = the same
   with ``threads=1`` (one batch, torch's intra-op threads), ``ours_eager`` = the default loop on
   the reference step, ``diffusers`` = diffusers' scheduler
   (``DDIMScheduler`` / ``DDPMScheduler`` with the same config) driving the same UNet in the loop
   of its pipelines (``torch.no_grad``). DDIM-50 starts all from the same noise, so the records
   also give the largest difference between our images and diffusers'. They run in interleaved
   rounds (one call of each per round, the order rotated), so a change of machine load hits all alike;
   ``paired`` is the median over rounds of diffusers' time over ours in the same round. Default
   cases: DDIM-50 with 64 images and DDPM-1000 with 8 (CPU); ``--cases ddpm:1000:64 ...`` others.
   ``--variant ddim:50:1024 channels_last`` (repeatable) also times ours in a variant that is not
   the default (``VARIANTS``) in the same rounds, with its largest difference from ours' images.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable


def separate_inductor_cache() -> None:
    """One torch.compile cache per ATEN_CPU_CAPABILITY. Inductor's cache key leaves that variable
    out (torch 2.14): kernels compiled under ATEN_CPU_CAPABILITY=avx2 were loaded by a later
    AVX-512 run, which then returned wrong values and corrupted the heap (seen here, 2026-11-26;
    a fresh cache folder fixed it)."""
    cap = os.environ.get("ATEN_CPU_CAPABILITY", "native")
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"torchinductor_lgm_{cap}")


separate_inductor_cache()  # before torch reads its inductor settings

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Record, base_parser, cpu_model, print_table, time_fn, time_interleaved, vector_isa, write_json  # noqa: E402

from lightning_genmodels import Diffusion  # noqa: E402
from lightning_genmodels.diffusion import samplers as S  # noqa: E402
from lightning_genmodels.ops import diffusion_step, philox_normal  # noqa: E402
from lightning_genmodels.ops.build import CPU_FLAGS  # noqa: E402
from lightning_genmodels.ops.diffusion import _step_math  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG_UNET = dict(base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1, attention_heads=4)


def load_march_build(march: str) -> str:
    """Compile the CPU diffusion, Philox and UNet ops with ``-march=<march>`` (e.g. x86-64-v3 =
    AVX2 + FMA) instead of the package's -march=native, and make the ops use that library.
    Only the ops this benchmark calls are built; returns the ISA label for the records."""
    from torch.utils import cpp_extension

    from lightning_genmodels.ops import build

    root = build.source_dir()
    name = f"lgm_diffusion_{march.replace('-', '_')}"
    folder = Path(build.cache_dir()) / name
    folder.mkdir(parents=True, exist_ok=True)
    sources = [root / "ops.cpp", *(root / "cpu" / f for f in ("diffusion.cpp", "philox.cpp", "unet.cpp"))]
    flags = [f for f in CPU_FLAGS if not f.startswith("-march")] + [f"-march={march}"]
    cpp_extension.load(name=name, sources=[str(p) for p in sources], extra_cflags=flags,
                       extra_ldflags=["-fopenmp"], extra_include_paths=[str(root)], build_directory=str(folder),
                       is_python_module=False)
    build._info = build.BuildInfo(folder / f"{name}.so", with_cuda=False)
    for fn in build._on_load:
        fn()
    return f"-march={march}"


def cpu_info() -> dict[str, str]:
    """CPU model and the widest x86 vector ISA the kernels' -march=native build can use."""
    isa = {"avx512f": "avx512", "avx2": "avx2"}.get(vector_isa(), "sse")
    return {"cpu_model": cpu_model(), "isa": isa}


def _step_given_noise(x: torch.Tensor, out: torch.Tensor, t: torch.Tensor, table: torch.Tensor,
                      noise: torch.Tensor) -> torch.Tensor:
    """The reference's step math with the noise passed in (clip range 1)."""
    mean = _step_math(x, out, t, table, 0, 0, 1.0, False)
    return mean + table[t, -1].view(-1, *([1] * (x.dim() - 1))) * noise


def bench_step(batches: list[int], device: str, repeats: int) -> list[Record]:
    records = []
    inner = 50 if device == "cuda" else 1  # GPU: back-to-back calls, as in a sampling loop
    for sampler in ("ddpm", "ddim"):
        model = Diffusion(**CONFIG_UNET)
        timesteps, table = model.coefficient_table(50 if sampler == "ddim" else 1000, sampler, 0.0)
        table = table.to(device)
        t_value = int(timesteps[len(timesteps) // 2])
        compiled = torch.compile(_step_math, dynamic=False)
        compiled_given = torch.compile(_step_given_noise, dynamic=False)
        for b in batches:
            gen = torch.Generator().manual_seed(b)
            x = torch.randn(b, 1, 28, 28, generator=gen).to(device)
            out = torch.randn(b, 1, 28, 28, generator=gen).to(device)
            t = torch.full((b,), t_value, dtype=torch.int64, device=device)
            so = S.seed_offset_tensor(7, 1 << 40, device)
            # check_timesteps=False, as the sampling loop calls it: the default host check of t
            # is one GPU synchronisation per call, which would time the round trip, not the step
            fns = {
                "ext": lambda: diffusion_step(x, out, t, table, so, 1.0, impl="ext", check_timesteps=False),
                "ref": lambda: diffusion_step(x, out, t, table, so, 1.0, impl="ref", check_timesteps=False),
            }
            if sampler == "ddim":  # σ = 0: the compiled reference without the noise term
                fns["ref_compiled"] = lambda: compiled(x, out, t, table, 7, 1 << 40, 1.0, False)
            else:  # the compiled reference given the same noise, drawn outside (untimed): a lower bound
                noise = philox_normal(7, 1 << 40, [b, 1, 28, 28], device=device)
                fns["ref_compiled"] = lambda: compiled_given(x, out, t, table, noise)
            expected = fns["ref"]()
            for impl, fn in fns.items():
                torch.testing.assert_close(fn(), expected, rtol=1e-5, atol=1e-4)
                med, lo, hi = time_fn(fn, device, repeats=max(repeats, 20), warmup=3, inner=inner)
                params = {"sampler": sampler, "batch": b}
                records.append(Record("diffusion_step", impl, device, params, med, lo, hi))
    return records


def diffusers_loop(model: Diffusion, n: int, steps: int, sampler: str, x: torch.Tensor,
                   compiled: bool = False) -> torch.Tensor:
    """diffusers' scheduler driving our UNet, as its DDPM/DDIM pipelines do; ``compiled``: the
    UNet under ``torch.compile`` (as ``Diffusion.sample`` runs it on CUDA)."""
    import diffusers

    hp = model.hparams
    common = dict(num_train_timesteps=hp.num_train_timesteps, beta_schedule="linear", beta_start=hp.beta_start,
                  beta_end=hp.beta_end, prediction_type=hp.prediction_type, clip_sample=hp.clip_sample,
                  clip_sample_range=hp.clip_sample_range, timestep_spacing=hp.timestep_spacing)
    if sampler == "ddim":
        sched = diffusers.DDIMScheduler(**common, set_alpha_to_one=hp.set_alpha_to_one)
    else:
        sched = diffusers.DDPMScheduler(**common, variance_type=hp.variance_type)
    sched.set_timesteps(steps)
    gen = torch.Generator(device=x.device).manual_seed(0)
    unet = torch.compile(model.unet, dynamic=False) if compiled else model.unet
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(x, t.to(x.device).expand(n))
            x = sched.step(out, t, x, generator=gen).prev_sample if sampler == "ddpm" else \
                sched.step(out, t, x, eta=0.0, generator=gen).prev_sample
    return ((x + 1) / 2).clamp(0, 1)


# variant -> torch.compile arguments of the UNet, for the variants that compile it differently
COMPILE_VARIANTS = {"max_autotune": {"mode": "max-autotune-no-cudagraphs"},
                    "coordinate_descent": {"options": {"coordinate_descent_tuning": True}}}
VARIANTS = ("channels_last", "cudnn_benchmark", *COMPILE_VARIANTS)


def variant_fn(model: Diffusion, variant: str, draw: Callable[[Diffusion], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``ours`` in a variant that might make the UNet faster (not the default, so not in ``sample``'s
    API): ``channels_last``, a copy of the module with its UNet's weights, and so the convolutions'
    activations, in channels-last layout; ``cudnn_benchmark``, cuDNN's per-shape algorithm search;
    ``max_autotune``, the UNet compiled with ``mode="max-autotune-no-cudagraphs"`` (inductor times
    Triton templates against cuDNN for each convolution and matmul); ``coordinate_descent``, inductor's
    tuning of its own kernels' launch configs (``coordinate_descent_tuning``)."""
    if variant == "cudnn_benchmark":
        def call() -> torch.Tensor:
            with torch.backends.cudnn.flags(enabled=True, benchmark=True):
                return draw(model)
        return call
    other = copy.deepcopy(model)
    if variant == "channels_last":
        other.unet.to(memory_format=torch.channels_last)
    else:  # the module's own compile call, with the variant's arguments
        other._compiled_unet = lambda: torch.compile(other.unet, dynamic=False, **COMPILE_VARIANTS[variant])
    return lambda: draw(other)


def bench_sampling(cases: list[tuple[str, int, int]], device: str, repeats: int, ckpt: Path | None,
                   compiled_on_cpu: bool = False, long_rounds: int = 2,
                   variants: dict[tuple[str, int, int], list[str]] | None = None) -> list[Record]:
    torch.manual_seed(0)
    model = Diffusion.load_from_checkpoint(ckpt, map_location=device) if ckpt else Diffusion(**CONFIG_UNET)
    model = model.to(device).eval()
    records = []
    for sampler, steps, n in cases:
        x_start = philox_normal(0, 0, [n, 1, 28, 28], device=device)  # our slot-0 noise for seed 0

        def ours(impl: str, threads: int | None = None, compile_unet: bool | None = None,
                 module: Diffusion = model) -> torch.Tensor:
            module.hparams.impl = impl
            return module.sample(n, steps=steps, sampler=sampler, eta=0.0, seed=0, threads=threads,
                                 compile_unet=compile_unet)

        fns = {"ours": lambda: ours("ext"), "ours_eager": lambda: ours("ref"),
               "diffusers": lambda: diffusers_loop(model, n, steps, sampler, x_start.clone())}
        if device == "cpu" and S.cpu_threads(n, None) > 1:
            fns["ours_one_team"] = lambda: ours("ext", threads=1)
        if device == "cuda":  # what the default compiled UNet gives, and what the sampler loop does alone
            fns["ours_no_compile"] = lambda: ours("ext", compile_unet=False)
            fns["diffusers_compiled"] = lambda: diffusers_loop(model, n, steps, sampler, x_start.clone(), True)
        elif compiled_on_cpu:  # not the CPU default (tens of seconds of compiling, in the warm-up round)
            fns["ours_compiled"] = lambda: ours("ext", compile_unet=True)
        for variant in (variants or {}).get((sampler, steps, n), []):
            fns[f"ours_{variant}"] = variant_fn(model, variant, lambda m: ours("ext", module=m))
        extra: dict[str, Any] = {}
        if sampler == "ddim":
            first = fns["ours"]()
            extra["max_abs_diff_vs_diffusers"] = (first - fns["diffusers"]()).abs().max().item()
            for name in [k for k in fns if k.removeprefix("ours_") in VARIANTS]:
                extra[f"max_abs_diff_{name}_vs_ours"] = (fns[name]() - first).abs().max().item()
        long_run = steps > 100  # DDPM-1000: one warm round is warm enough, and long_rounds rounds
        if long_run and ("ours_compiled" in fns or device == "cuda"):  # compile this batch size untimed
            model.sample(n, steps=2, sampler=sampler, seed=0, compile_unet=True)
            if device == "cuda":
                diffusers_loop(model, n, 2, sampler, x_start.clone(), True)
        # Rotated rounds: right after ours_one_team (one intra-op team) the first split call ran
        # 4-10% slower (2-core Xeon), which a fixed order charged to ours every round.
        times = time_interleaved(fns, device, repeats=min(repeats, long_rounds) if long_run else repeats,
                                 warmup=0 if long_run else 1, rotate=True)
        extra["paired_ours_vs_diffusers"] = [d / o for o, d in zip(times["ours"], times["diffusers"])]
        for impl, ts in times.items():
            params = {"sampler": sampler, "steps": steps, "n": n}
            med = statistics.median(ts)
            records.append(Record("diffusion_sampling", impl, device, params, med, min(ts), max(ts),
                                  {"images_per_s": n / med, "all_s": ts, **extra}))
        model.hparams.impl = "auto"
    return records


def ratio_rows(records: list[Record]) -> list[dict[str, Any]]:
    rows = []
    by = {(r.bench, r.impl, tuple(r.params.items())): r for r in records}
    for r in records:
        key = tuple(r.params.items())
        if r.bench == "diffusion_step" and r.impl == "ext":
            ref, comp = by[(r.bench, "ref", key)], by.get((r.bench, "ref_compiled", key))
            rows.append({"bench": "step", **r.params, "ext_ms": 1e3 * r.median_s, "ref_ms": 1e3 * ref.median_s,
                         "compiled_ms": 1e3 * comp.median_s if comp else "n/a",
                         "ext_vs_ref": ref.median_s / r.median_s,
                         "ext_vs_compiled": comp.median_s / r.median_s if comp else "n/a"})
        if r.bench == "diffusion_sampling" and r.impl == "ours":
            dif, eag = by[(r.bench, "diffusers", key)], by[(r.bench, "ours_eager", key)]
            team = by.get((r.bench, "ours_one_team", key))
            plain, dif_c = by.get((r.bench, "ours_no_compile", key)), by.get((r.bench, "diffusers_compiled", key))
            comp = by.get((r.bench, "ours_compiled", key))
            for variant in VARIANTS:
                var = by.get((r.bench, f"ours_{variant}", key))
                if var:
                    rows.append({"bench": "variant", **r.params, "variant": variant, "img_s": var.extra["images_per_s"],
                                 "vs_ours": r.median_s / var.median_s, "vs_diffusers": dif.median_s / var.median_s})
            rows.append({"bench": "sampling", **r.params, "ours_img_s": r.extra["images_per_s"],
                         "split_gain": team.median_s / r.median_s if team else "n/a",
                         "diffusers_img_s": dif.extra["images_per_s"], "eager_img_s": eag.extra["images_per_s"],
                         "ours_vs_diffusers": dif.median_s / r.median_s, "ours_vs_eager": eag.median_s / r.median_s,
                         "paired": statistics.median(r.extra.get("paired_ours_vs_diffusers", [float("nan")])),
                         "no_compile_vs_diffusers": dif.median_s / plain.median_s if plain else "n/a",
                         "ours_vs_diffusers_compiled": dif_c.median_s / r.median_s if dif_c else "n/a",
                         "compiled_vs_diffusers": dif.median_s / comp.median_s if comp else "n/a"})
    return rows


def sampling_case(text: str) -> tuple[str, int, int]:
    """``ddpm:1000:64`` -> ("ddpm", 1000, 64)."""
    try:
        sampler, steps, n = text.split(":")
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(sampler)
        return sampler, int(steps), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SAMPLER:STEPS:N with SAMPLER ddpm or ddim, got {text!r}") from None


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="a Diffusion checkpoint for the sampling UNet")
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--skip-step", action="store_true", help="only the whole-sampling cases")
    parser.add_argument("--march", help="build the CPU kernels with -march=MARCH (x86-64-v3: AVX2) instead of native")
    parser.add_argument("--compile-unet", action="store_true",
                        help="CPU: also time sample(compile_unet=True) (ours_compiled; on CUDA it is the default)")
    parser.add_argument("--long-rounds", type=int, default=2, metavar="R",
                        help="rounds (at most --repeats) of cases over 100 steps, e.g. DDPM-1000 (default 2)")
    parser.add_argument("--variant", nargs=2, action="append", metavar=("SAMPLER:STEPS:N", "VARIANT"), default=[],
                        help=f"also time ours in a variant ({', '.join(VARIANTS)}) for a case; repeatable")
    parser.add_argument("--cases", nargs="+", metavar="SAMPLER:STEPS:N", type=sampling_case,
                        help="whole-sampling cases instead of the default ones, e.g. ddpm:1000:64")
    args = parser.parse_args()
    info = cpu_info()
    if args.march:
        info["isa"] = load_march_build(args.march)
    print(f"device {args.device}; CPU {info['cpu_model']}, ISA {info['isa']}, threads {torch.get_num_threads()}")
    batches = [256] if args.quick else [64, 256, 1024]
    records = [] if args.skip_step else bench_step(batches, args.device, args.repeats)
    if not args.skip_sampling:
        cases = [("ddim", 50, 16), ("ddpm", 1000, 4)] if args.quick else [("ddim", 50, 64), ("ddpm", 1000, 8)]
        if args.device == "cuda":  # a GPU: a launch-bound batch and a compute-bound one
            cases = [("ddim", 50, 64), ("ddim", 50, 1024), ("ddpm", 1000, 64)]
        cases = args.cases or cases
        variants: dict[tuple[str, int, int], list[str]] = {}
        for case, variant in args.variant:
            if variant not in VARIANTS:
                parser.error(f"--variant: unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
            variants.setdefault(sampling_case(case), []).append(variant)
        records += bench_sampling(cases, args.device, 1 if args.quick else args.repeats, args.ckpt, args.compile_unet,
                                  args.long_rounds, variants)
    for r in records:
        r.extra.update(info)
    rows = ratio_rows(records)
    print_table([r for r in rows if r["bench"] == "step"],
                ["sampler", "batch", "ext_ms", "ref_ms", "compiled_ms", "ext_vs_ref", "ext_vs_compiled"])
    print()
    print_table([r for r in rows if r["bench"] == "sampling"],
                ["sampler", "steps", "n", "ours_img_s", "diffusers_img_s", "eager_img_s", "ours_vs_diffusers", "paired",
                 "ours_vs_eager", "split_gain", "no_compile_vs_diffusers", "ours_vs_diffusers_compiled",
                 "compiled_vs_diffusers"])
    variant_rows = [r for r in rows if r["bench"] == "variant"]
    if variant_rows:
        print()
        print_table(variant_rows, ["sampler", "steps", "n", "variant", "img_s", "vs_ours", "vs_diffusers"])
    write_json(args.json, records, args.device)


if __name__ == "__main__":
    main()
