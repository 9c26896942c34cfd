"""A user's Diffusion subclass that overrides forward: training calls self(x, t), and sampling
called self.unet, so the subclass's forward (here a learnt scale outside the network) was left
out of its samples, silently."""
from __future__ import annotations

import torch
from torch import nn

from lightning_genmodels import Diffusion

from tests.utils import Denoiser

TINY = {"base_channels": 8, "channel_mults": (1,), "groups": 4, "num_train_timesteps": 20, "sample_steps": 3}


class Zeros(nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


class Scaled(Diffusion):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.unet = Denoiser()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.scale * self.unet(x, t)


class ZeroUNet(Diffusion):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.unet = Zeros()


def test_sampling_calls_the_subclass_forward() -> None:
    model = Scaled(**TINY)
    scaled = model.sample(4, seed=0)
    with torch.no_grad():
        model.scale.zero_()  # its forward now predicts zeros, as ZeroUNet's network does
    assert not torch.equal(model.sample(4, seed=0), scaled)
    torch.testing.assert_close(model.sample(4, seed=0), ZeroUNet(**TINY).sample(4, seed=0), rtol=0, atol=0)
    assert model.training and model.unet.training  # eval mode only while sampling


def test_the_package_unet_wrapped_by_forward() -> None:
    class Halved(Diffusion):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return 0.5 * super().forward(x, t)

    torch.manual_seed(0)
    plain = Diffusion(**TINY)
    halved = Halved(**TINY)
    halved.load_state_dict(plain.state_dict())
    assert not torch.equal(halved.sample(2, seed=0), plain.sample(2, seed=0))
