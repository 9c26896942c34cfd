"""Trainer.validate and Trainer.test of a tiny VAE, GaussianMixture, Diffusion and GAN on 5 images,
on 1 or 2 CPU processes; run by tests/test_ddp_eval.py in a subprocess. On 2 ranks
DistributedSampler pads the 5 images to 6 (image 0 twice). Usage: python ddp_eval_script.py
DEVICES OUT_DIR; rank 0 writes OUT_DIR/metrics.pt, each model's logged metrics."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels import GAN, VAE, Diffusion, GaussianMixture
from lightning_genmodels.vae import ConvDecoder, ConvEncoder


class ZeroNoiseGAN(GAN):
    """The same fake for every z: the losses then depend on the real images only."""

    def noise(self, n, generator=None):
        return torch.zeros(n, self.latent_dim, device=self.device)


def main(devices: int, out_dir: str) -> None:
    torch.manual_seed(0)
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    gmm = GaussianMixture(n_components=2, random_state=0).fit(images.flatten(1)[:, :3].double().numpy())
    runs = {
        "vae": (VAE(latent_dim=4, encoder=ConvEncoder(4, channels=(4, 8)), decoder=ConvDecoder(4, channels=(8, 4)),
                    iwae_k=2, val_iwae_k=2), images, "ddp"),
        "gmm": (gmm, images.flatten(1)[:, :3], "ddp_em"),
        "diffusion": (Diffusion(base_channels=8, channel_mults=(1, 2), groups=4, attention_heads=2,
                                num_train_timesteps=100), images * 2 - 1, "ddp"),
        "gan": (ZeroNoiseGAN(latent_dim=4, features=4), images * 2 - 1, "ddp"),
    }
    metrics = {}
    for name, (model, x, strategy) in runs.items():
        loader = DataLoader(TensorDataset(x), batch_size=2)  # rank 1's second batch: image 3 and padding
        trainer = Trainer(accelerator="cpu", devices=devices, strategy=strategy if devices > 1 else "auto",
                          logger=False, enable_progress_bar=False, enable_model_summary=False)
        metrics[name] = {**trainer.validate(model, loader, verbose=False)[0],
                         **trainer.test(model, loader, verbose=False)[0]}
    if trainer.is_global_zero:
        torch.save(metrics, Path(out_dir) / "metrics.pt")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
