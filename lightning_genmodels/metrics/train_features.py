"""Train the MNIST feature network and write its weights (seeded, CPU, a few minutes).

    python -m lightning_genmodels.metrics.train_features --data-dir ../shared/data/mnist \
        --out lightning_genmodels/metrics/weights/mnist_features.pt

Recipe: the 60,000 training images, random shifts of up to 2 pixels, AdamW (weight decay 1e-4),
one-cycle learning rate peaking at 3e-3, batch 128, 5 epochs, seed 0, 1 CPU thread. It prints
the test accuracy after every epoch and the SHA-256 of the written file, which goes into
``features.WEIGHTS_SHA256``. The same seed and thread count on the same machine give the same
bytes; other CPUs may round differently and give weights of the same accuracy but another hash.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_genmodels.data import MNISTDataModule
from lightning_genmodels.metrics.features import DEFAULT_WEIGHTS, MNISTFeatureNet, file_sha256


def load_split(data_dir: str, split: str) -> tuple[Tensor, Tensor]:
    """uint8 images [N, 28, 28] and int64 labels [N] of MNIST's "train" or "test" file."""
    dm = MNISTDataModule(data_dir=data_dir, input_format="unit", val_split=0)
    dm.setup("fit" if split == "train" else "test")
    data = dm.data_train if split == "train" else dm.data_test
    return data.images, data.labels


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Shift each image [B, 1, H, W] by its own random offset in [-max_shift, max_shift]^2 (zero fill)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    oy, ox = torch.randint(0, 2 * max_shift + 1, (2, b, 1), generator=generator)
    rows = (oy + torch.arange(h))[:, :, None]  # [B, H, 1]
    cols = (ox + torch.arange(w))[:, None, :]  # [B, 1, W]
    return padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)


@torch.no_grad()
def accuracy(net: MNISTFeatureNet, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Fraction of uint8 images [N, 28, 28] the network classifies as ``labels`` [N]."""
    net.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].float().div(255).unsqueeze(1)
        correct += (net(x).argmax(1) == labels[i : i + batch_size]).sum().item()
    return correct / len(images)


def train(data_dir: str, epochs: int = 5, batch_size: int = 128, lr: float = 3e-3, seed: int = 0) -> MNISTFeatureNet:
    """Train the feature network on MNIST's training set; prints test accuracy per epoch."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = load_split(data_dir, "train")
    x_test, y_test = load_split(data_dir, "test")
    net = MNISTFeatureNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x_train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        net.train()
        start = time.perf_counter()
        perm = torch.randperm(len(x_train), generator=generator)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            x = random_shift(x_train[idx].float().div(255).unsqueeze(1), 2, generator)
            loss = F.cross_entropy(net(x), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(net, x_test, y_test)
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}, test accuracy {acc:.4%} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return net.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files")
    parser.add_argument("--out", default=str(DEFAULT_WEIGHTS), help="weights file to write")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (part of the recipe)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = train(args.data_dir, epochs=args.epochs, seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in net.state_dict().items()}, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB), sha256 {file_sha256(out)}")


if __name__ == "__main__":
    main()
