"""How close one UNet forward of the sampler runs to the machine's matrix-multiply rate.

    python benchmarks/diffusion_unet_rate.py --json benchmarks/results/diffusion_unet_rate_cpu.json

A sampling step is the UNet plus the fused update; when the UNet's convolutions already run at
the rate of a large matrix multiply, no sampler loop (ours or diffusers') can make a step much
faster than the UNet itself. For the UNet of configs/diffusion_mnist.yaml at each batch: its
floating-point work (torch.utils.flop_counter), the time of one forward under inference mode
with the timestep shared by the batch (as the sampler calls it), the share of that time spent in
convolutions (torch.profiler, CPU only), and the rates: the whole forward's, the convolutions' alone, and a
2048x2048 (CUDA: 4096x4096) float32 matrix multiply's. On CUDA each batch also runs with channels-last
tensors and under bfloat16 autocast: how much a faster UNet, not a faster sampler loop, could give.

    python benchmarks/diffusion_unet_rate.py --device cuda --json benchmarks/results/diffusion_unet_rate_cuda.json
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diffusion_sampling import CONFIG_UNET  # noqa: E402
from harness import Record, base_parser, machine_info, print_table, time_fn, write_json  # noqa: E402

from lightning_genmodels.diffusion.unet import UNet  # noqa: E402


def conv_share(unet: UNet, x: torch.Tensor, t: torch.Tensor, calls: int = 5) -> float:
    """Fraction of the forward's CPU time inside convolution kernels (self time of aten ops)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            unet(x, t)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    return conv / total if total else float("nan")


VARIANTS = ("fp32", "channels_last", "bf16", "compiled")  # default on CUDA; the CPU runs fp32 only
# the same, compiled by torch.compile (as Diffusion.sample runs it on CUDA), and what might make it faster
ALL_VARIANTS = VARIANTS + ("compiled_bf16", "compiled_channels_last", "compiled_cudnn_benchmark")


def forward_fn(unet: UNet, x: torch.Tensor, t: torch.Tensor, variant: str):
    """One sampler-shaped forward in a variant: fp32 as the sampler runs it (cuDNN's default TF32
    convolutions on a GPU), the same with channels-last tensors, or under bfloat16 autocast;
    ``compiled*``: the UNet under ``torch.compile(dynamic=False)`` (compiled in the warm-up),
    alone or with one of those, or with cuDNN's per-shape algorithm search."""
    base = variant.removeprefix("compiled").removeprefix("_") or "fp32"
    if base == "channels_last":
        unet = unet.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(unet, dynamic=False) if variant.startswith("compiled") else unet
    if base == "bf16":
        def call():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return net(x, t)
        return call
    if base == "cudnn_benchmark":
        def call():
            with torch.backends.cudnn.flags(enabled=True, benchmark=True):
                return net(x, t)
        return call
    return lambda: net(x, t)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="default: 16 64 256 (CPU), 64 256 1024 (CUDA)")
    parser.add_argument("--variants", nargs="+", choices=ALL_VARIANTS, default=None,
                        help=f"default: {' '.join(VARIANTS)} (CUDA), fp32 (CPU)")
    args = parser.parse_args()
    dev = torch.device(args.device)
    batches = args.batches or ([64, 256, 1024] if dev.type == "cuda" else [16, 64, 256])
    variants = args.variants or (VARIANTS if dev.type == "cuda" else ("fp32",))
    size = 4096 if dev.type == "cuda" else 2048
    a = torch.randn(size, size, device=dev)
    records, rows = [], []
    with torch.inference_mode():
        gemm_rate = 2.0 * size**3 / time_fn(lambda: a @ a, dev, repeats=args.repeats, warmup=2)[0]
        for n in batches:
            x = torch.randn(n, 1, 28, 28, device=dev)
            t = torch.tensor(500, device=dev).expand(n)  # one timestep for the batch, stride 0, as the sampler passes it
            unet = UNet(**CONFIG_UNET).eval().to(dev)
            with FlopCounterMode(display=False) as counter:
                unet(x, t)
            flops = counter.get_total_flops()
            conv_flops = sum(v for op, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(op))
            for variant in variants:
                fn = forward_fn(copy.deepcopy(unet) if "channels_last" in variant else unet, x, t, variant)
                timing = time_fn(fn, dev, repeats=args.repeats, warmup=3)
                fwd_s = timing[0]
                share = conv_share(unet, x, t) if dev.type == "cpu" else float("nan")
                extra = {"flops": flops, "conv_flops": conv_flops, "conv_time_share": share, "gemm_flop_s": gemm_rate,
                         "forward_flop_s": flops / fwd_s, "conv_flop_s": conv_flops / (share * fwd_s), "variant": variant}
                records.append(Record("diffusion_unet_rate", "unet", dev.type, {"batch": n, "variant": variant, **CONFIG_UNET},
                                      *timing, extra))
                rows.append({"batch": n, "variant": variant, "gflop": flops / 1e9, "forward_ms": 1e3 * fwd_s,
                             "conv_share": share, "forward_gflop_s": flops / fwd_s / 1e9,
                             "conv_gflop_s": extra["conv_flop_s"] / 1e9, "gemm_gflop_s": gemm_rate / 1e9,
                             "forward_x_gemm": flops / fwd_s / gemm_rate})
    info = machine_info(dev.type)
    print(info)
    print_table(rows, ["batch", "variant", "gflop", "forward_ms", "conv_share", "forward_gflop_s", "conv_gflop_s",
                       "gemm_gflop_s", "forward_x_gemm"])
    for r in records:
        r.extra.update(info)
    write_json(args.json, records, dev.type)


if __name__ == "__main__":
    main()
