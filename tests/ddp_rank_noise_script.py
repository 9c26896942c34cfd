"""One training batch of a tiny GAN, VAE and Diffusion on 2 CPU processes after
seed_everything(0), as the shipped configs run; run by tests/test_ddp_rank_noise.py. Each rank
writes OUT_DIR/rank{r}.pt: the GAN's training z, and for every model the state of torch's
generator when its training batch starts (the VAE's ε and the diffusion noise come from it)
and its weights after the fit. Usage: python ddp_rank_noise_script.py OUT_DIR."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from lightning_genmodels import GAN, VAE, Diffusion
from lightning_genmodels.vae import ConvDecoder, ConvEncoder


class RecordingGAN(GAN):
    def noise(self, n, generator=None):
        z = super().noise(n, generator)
        if generator is None and self._trainer is not None and self.trainer.training:
            self.drawn.append(z.clone())
        return z


class RngAtBatchStart(Callback):
    def __init__(self) -> None:
        self.states: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.states.append(torch.get_rng_state())


def main(out_dir: str) -> None:
    seed_everything(0)
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    gan = RecordingGAN(latent_dim=4, features=4)
    gan.drawn = []
    models = {"gan": (gan, images * 2 - 1),
              "vae": (VAE(latent_dim=4, encoder=ConvEncoder(4, channels=(4, 8)),
                          decoder=ConvDecoder(4, channels=(8, 4))), images),
              "diffusion": (Diffusion(base_channels=8, channel_mults=(1, 2), groups=4, attention_heads=2,
                                      num_train_timesteps=100), images * 2 - 1)}
    out = {}
    for name, (model, x) in models.items():
        record = RngAtBatchStart()
        trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_train_batches=1,
                          logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, callbacks=[record])
        trainer.fit(model, DataLoader(TensorDataset(x), batch_size=4))
        out[name] = {"rng": record.states, "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    out["gan"]["z"] = gan.drawn
    torch.save(out, Path(out_dir) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
