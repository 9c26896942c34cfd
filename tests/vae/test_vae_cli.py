"""The VAE through the CLI: the shipped config, networks swapped by class path, and the two
user subclasses of examples/my_vae.py (one swaps the networks, one changes the loss)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from examples.my_vae import FreeBitsVAE, MLPDecoder, MLPEncoder, MLPVAE
from lightning_genmodels import VAE
from lightning_genmodels.cli import main
from lightning_genmodels.vae import ConvDecoder, ConvEncoder

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "vae_mnist.yaml"


def fit_args(mnist_dir: Path, model: str | None = None) -> list[str]:
    """Two training steps of the shipped config; outputs land in the current folder."""
    args = ["fit", "--config", str(CONFIG)] + (["--model", model] if model else [])
    return args + [
        "--data.data_dir", str(mnist_dir), "--data.batch_size", "16",
        # fractions: jsonargparse reads "2" as 2.0 for an int | float option. 3438 training and 313
        # validation batches of 16: 2 and 1 of them.
        "--trainer.max_steps", "2", "--trainer.limit_train_batches", "0.0006", "--trainer.limit_val_batches", "0.004",
        "--trainer.accelerator", "cpu", "--trainer.enable_model_summary", "false",
        "--model.val_iwae_k", "2", "--model.kl_warmup_steps", "0",
    ]


def printed_metric(out: str, name: str) -> float:
    values = [line.split()[1] for line in out.splitlines() if line.split()[:1] == [name]]
    assert len(values) == 1, f"{name} not printed once in:\n{out}"
    return float(values[0])


def check_outputs(out: str) -> Path:
    for name in ("train/loss", "train/elbo", "val/elbo", "val/nll_iwae", "val/bpd"):
        assert math.isfinite(printed_metric(out, name)), name
    assert Path("outputs/vae_samples.png").is_file()
    ckpt = Path("outputs/vae_ckpt/vae.ckpt")
    assert ckpt.is_file()
    return ckpt


def test_config_with_networks_by_class_path(mnist_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    nets = {"latent_dim": 4, "channels": [4, 8]}
    args = fit_args(mnist_dir) + [
        "--model.latent_dim", "4",
        "--model.encoder", json.dumps({"class_path": "lightning_genmodels.vae.ConvEncoder", "init_args": nets}),
        "--model.decoder", json.dumps({"class_path": "lightning_genmodels.vae.ConvDecoder",
                                       "init_args": {**nets, "channels": [8, 4]}}),
    ]
    cli = main(args=args)
    ckpt = check_outputs(capsys.readouterr().out)
    assert type(cli.model) is VAE and cli.model.encoder.net[0].out_channels == 4
    # The checkpoint holds the networks' configuration: it loads with no arguments.
    loaded = VAE.load_from_checkpoint(ckpt)
    assert isinstance(loaded.encoder, ConvEncoder) and isinstance(loaded.decoder, ConvDecoder)
    torch.testing.assert_close(loaded.sample(8, seed=1), cli.model.sample(8, seed=1), rtol=0, atol=0)


def test_user_subclass_swaps_networks(mnist_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    cli = main(args=fit_args(mnist_dir, "examples.my_vae.MLPVAE") + ["--model.hidden", "32"])
    ckpt = check_outputs(capsys.readouterr().out)
    model = cli.model
    assert type(model) is MLPVAE and isinstance(model.encoder, MLPEncoder) and isinstance(model.decoder, MLPDecoder)
    assert model.encoder.net[1].out_features == 32 and model.hparams.likelihood == "bernoulli"
    loaded = MLPVAE.load_from_checkpoint(ckpt)
    assert loaded.encoder.net[1].out_features == 32
    torch.testing.assert_close(loaded.sample(8, seed=1), model.sample(8, seed=1), rtol=0, atol=0)


def test_user_subclass_changes_loss(mnist_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    cli = main(args=fit_args(mnist_dir, "examples.my_vae.FreeBitsVAE") + ["--model.free_bits", "0.5"])
    out = capsys.readouterr().out
    check_outputs(out)
    assert type(cli.model) is FreeBitsVAE and cli.model.free_bits == 0.5
    # Free bits only raise the KL term: the loss is at least the negative ELBO of the same step.
    assert printed_metric(out, "train/loss") >= -printed_metric(out, "train/elbo") - 1e-3


def test_free_bits_loss() -> None:
    model = FreeBitsVAE(free_bits=0.5, latent_dim=3)
    rec = torch.tensor([-10.0, -20.0])
    kl = torch.tensor([[0.1, 1.0, 0.2], [0.3, 2.0, 0.2]])  # batch means 0.2, 1.5, 0.2
    torch.testing.assert_close(model.training_loss(rec, kl, beta=2.0), torch.tensor(2.0 * (0.5 + 1.5 + 0.5) + 15.0))
    torch.testing.assert_close(VAE.training_loss(model, rec, kl, 2.0), torch.tensor(2.0 * (1.3 + 2.5) / 2 + 15.0))
    with pytest.raises(ValueError, match="free_bits=-1"):
        FreeBitsVAE(free_bits=-1)


@pytest.mark.parametrize("option, value", [("likelihood", "poisson"), ("beta", "-1.0")])
def test_bad_option_names_it(tmp_path: Path, monkeypatch, capsys, option: str, value: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises((SystemExit, ValueError)) as info:
        main(args=["fit", "--config", str(CONFIG), f"--model.{option}", value])
    message = str(info.value) if info.type is ValueError else capsys.readouterr().err
    assert option in message and value.rstrip("0").rstrip(".") in message
