"""How close one UNet forward of the sampler runs to the machine's matrix-multiply rate.

    python benchmarks/diffusion_unet_rate.py --json benchmarks/results/diffusion_unet_rate_cpu.json

A sampling step is the UNet plus the fused update; when the UNet's convolutions already run at
the rate of a large matrix multiply, no sampler loop (ours or diffusers') can make a step much
faster than the UNet itself. For the UNet of configs/diffusion_mnist.yaml at each batch: its
floating-point work (torch.utils.flop_counter), the time of one forward under inference mode
with the timestep shared by the batch (as the sampler calls it), the share of that time spent in
convolutions (torch.profiler), and the rates: the whole forward's, the convolutions' alone, and a
2048x2048 float32 matrix multiply's.
"""
from __future__ import annotations

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


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    args = parser.parse_args()
    unet = UNet(**CONFIG_UNET).eval()
    a = torch.randn(2048, 2048)
    records, rows = [], []
    with torch.inference_mode():
        gemm_s = time_fn(lambda: a @ a, "cpu", repeats=args.repeats)[0]
        gemm_rate = 2.0 * 2048**3 / gemm_s
        for n in args.batches:
            x = torch.randn(n, 1, 28, 28)
            t = torch.tensor(500).expand(n)  # one timestep for the batch, stride 0, as the sampler passes it
            with FlopCounterMode(display=False) as counter:
                unet(x, t)
            flops = counter.get_total_flops()
            conv_flops = sum(v for op, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(op))
            timing = time_fn(lambda: unet(x, t), "cpu", repeats=args.repeats, warmup=2)
            fwd_s = timing[0]
            share = conv_share(unet, x, t)
            extra = {"flops": flops, "conv_flops": conv_flops, "conv_time_share": share, "gemm_flop_s": gemm_rate,
                     "forward_flop_s": flops / fwd_s, "conv_flop_s": conv_flops / (share * fwd_s)}
            records.append(Record("diffusion_unet_rate", "unet", "cpu", {"batch": n, **CONFIG_UNET}, *timing, extra))
            rows.append({"batch": n, "gflop": flops / 1e9, "forward_ms": 1e3 * fwd_s, "conv_share": share,
                         "forward_gflop_s": flops / fwd_s / 1e9, "conv_gflop_s": extra["conv_flop_s"] / 1e9,
                         "gemm_gflop_s": gemm_rate / 1e9, "conv_x_gemm": extra["conv_flop_s"] / gemm_rate})
    info = machine_info("cpu")
    print(info)
    print_table(rows, ["batch", "gflop", "forward_ms", "conv_share", "forward_gflop_s", "conv_gflop_s",
                       "gemm_gflop_s", "conv_x_gemm"])
    for r in records:
        r.extra.update(info)
    write_json(args.json, records, "cpu")


if __name__ == "__main__":
    main()
