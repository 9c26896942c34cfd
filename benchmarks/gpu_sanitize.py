"""Every CUDA kernel of the extension once, on small inputs, for compute-sanitizer
(benchmarks/gpu_check.sh): the GMM E-step and log-probabilities for each covariance type and dtype
(K = 5: the per-row kernels; K = 70: the GEMM design of diag/spherical), several chunks, a row
stride above D; the fused diffusion step with and without noise; Philox normals; and a short
CUDA-graph sampling loop. Each result is checked against the CPU, so a wrong answer fails too.

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/gpu_sanitize.py
"""
from __future__ import annotations

import os

import torch

from lightning_genmodels import Diffusion
from lightning_genmodels.ops import diffusion_step, gmm_em_stats, gmm_log_prob, philox_normal
from lightning_genmodels.diffusion import samplers as S
from lightning_genmodels.diffusion.schedules import alphas_cumprod, make_betas

COVS = ("full", "tied", "diag", "spherical")


def params(k: int, d: int, cov: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(k * 100 + d)
    means = torch.randn(k, d, generator=g, dtype=torch.float64)
    log_weights = torch.log_softmax(torch.randn(k, generator=g, dtype=torch.float64), 0)
    shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[cov]
    if cov in ("full", "tied"):
        a = torch.randn(shape, generator=g, dtype=torch.float64)
        spd = a @ a.transpose(-1, -2) + d * torch.eye(d, dtype=torch.float64)
        prec_chol = torch.linalg.cholesky(spd).transpose(-1, -2)
    else:
        prec_chol = 0.5 + torch.rand(shape, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (log_weights, means, prec_chol)]


def check_gmm() -> None:
    os.environ["LGM_GMM_CUDA_CHUNK_ROWS"] = "96"  # 300 rows: several chunks
    for dtype in (torch.float32, torch.float64):
        tol = {"rtol": 1e-4, "atol": 1e-3} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-8}
        for cov in COVS:
            for k in (5, 70) if cov in ("diag", "spherical") else (5,):
                lw, mu, pc = params(k, 9, cov, dtype)
                wide = torch.randn(300, 12, dtype=torch.float64).to(dtype)
                x = wide[:, :9]  # row stride 12 > D
                w = torch.rand(300, dtype=torch.float64).to(dtype)
                cpu = gmm_em_stats(x, lw, mu, pc, cov, w, impl="ext")
                gpu = gmm_em_stats(x.cuda(), lw.cuda(), mu.cuda(), pc.cuda(), cov, w.cuda(), impl="ext")
                for a, b in zip(gpu, cpu):
                    torch.testing.assert_close(a.cpu(), b, **tol)
                lp = gmm_log_prob(x.cuda(), lw.cuda(), mu.cuda(), pc.cuda(), cov, impl="ext")
                torch.testing.assert_close(lp.cpu(), gmm_log_prob(x, lw, mu, pc, cov, impl="ext"), **tol)
                print(f"gmm {cov} K={k} {dtype}: ok", flush=True)
    del os.environ["LGM_GMM_CUDA_CHUNK_ROWS"]


def check_diffusion() -> None:
    for sampler, eta in (("ddpm", 0.0), ("ddim", 0.5), ("ddim", 0.0)):
        timesteps = S.inference_timesteps(1000, 20, "leading")
        abar = alphas_cumprod(make_betas("linear", 1000))
        table = S.step_coefficients(abar, timesteps, sampler, "epsilon", "fixed_small", eta).float()
        x, out = torch.randn(3, 1, 5, 7), torch.randn(3, 1, 5, 7)
        t = timesteps[:3].clone()
        so = S.seed_offset_tensor(7, 11, "cpu")
        cpu = diffusion_step(x, out, t, table, so, 1.0, impl="ext")
        gpu = diffusion_step(x.cuda(), out.cuda(), t.cuda(), table.cuda(), so.cuda(), 1.0, impl="ext")
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
        print(f"diffusion_step {sampler} eta={eta}: ok", flush=True)
    for n in (1, 1001):
        a = philox_normal(5, 3, [n], device="cpu", impl="ext")
        b = philox_normal(5, 3, [n], device="cuda", impl="ext")
        assert torch.equal(a, b.cpu()), "philox_normal differs between CPU and CUDA"
    print("philox_normal: ok", flush=True)
    torch.manual_seed(0)
    model = Diffusion(base_channels=8, channel_mults=(1, 2), groups=4, attention_heads=2, num_train_timesteps=100,
                      impl="ext").cuda().eval()
    graph = model.sample(3, steps=5, sampler="ddpm", seed=1, cuda_graph=True)
    eager = model.sample(3, steps=5, sampler="ddpm", seed=1, cuda_graph=False)
    torch.testing.assert_close(graph, eager, rtol=0, atol=1e-6)
    print("CUDA-graph sampling loop: ok", flush=True)


if __name__ == "__main__":
    import argparse
    import sys

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_sanitize.py: needs a CUDA GPU")
    check_gmm()
    check_diffusion()
    torch.cuda.synchronize()
    print("all kernels ran", flush=True)
