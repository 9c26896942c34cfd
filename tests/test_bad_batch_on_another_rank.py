"""A NaN/inf batch on one DDP rank stops every rank: the VAE's and the GMM's checks of held-out
(and, for the VAE, training) batches take the decision over the ranks (one rank raising alone
left the others to fail in their next collective with gloo's "Connection reset by peer", or to
wait in it). Simulated with a strategy whose reduction reports another rank's bad batch."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightning_genmodels import VAE, GaussianMixture
from lightning_genmodels.vae import ConvDecoder, ConvEncoder

OTHER_RANK_BAD = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: False))


@pytest.mark.parametrize("stage", ["training_step", "validation_step"])
def test_vae_stops_for_another_ranks_bad_batch(stage: str) -> None:
    model = VAE(latent_dim=2, encoder=ConvEncoder(2, channels=(4, 8)), decoder=ConvDecoder(2, channels=(8, 4)))
    model._trainer = OTHER_RANK_BAD
    with pytest.raises(ValueError, match="batch contains NaN or inf on another rank"):
        getattr(model, stage)(torch.rand(2, 1, 28, 28), 0)


@pytest.mark.parametrize("stage", ["validation_step", "test_step"])
def test_gmm_stops_for_another_ranks_bad_batch(stage: str) -> None:
    model = GaussianMixture(2, random_state=0).fit(torch.randn(50, 2, generator=torch.Generator().manual_seed(0)))
    model._trainer = OTHER_RANK_BAD
    with pytest.raises(ValueError, match=r"not finite for 0 of 4 rows of a batch on another rank"):
        getattr(model, stage)(torch.randn(4, 2), 0)
