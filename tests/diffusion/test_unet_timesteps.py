"""UNet.forward names a bad t: another count than N (ATen's "expanded size" error), a string or
None (torch.as_tensor's), complex or bool timesteps (complex ones lost their imaginary part)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_genmodels.diffusion import UNet


@pytest.fixture(scope="module")
def unet() -> UNet:
    torch.manual_seed(0)
    return UNet(1, 8, 8, (1,), 1, 1, 0.0, 4)


@pytest.mark.parametrize("t, match", [
    (torch.tensor([1, 2, 3]), r"one timestep or \[N\] = \[2\] of them, got shape \(3,\)"),
    ("5", "a timestep number or a tensor of them, got '5'"),
    (None, "a timestep number or a tensor of them, got None"),
    (torch.tensor([1 + 1j, 2 + 0j]), "real timesteps, got dtype torch.complex64"),
    (torch.tensor([True, False]), "real timesteps, got dtype torch.bool"),
], ids=["count", "str", "none", "complex", "bool"])
def test_bad_timesteps_are_named(unet: UNet, t, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        unet(torch.randn(2, 1, 8, 8), t)


@pytest.mark.parametrize("t", [5, 5.0, np.int64(5), torch.tensor(5), torch.tensor([5, 5])])
def test_good_timesteps_agree(unet: UNet, t) -> None:
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t), unet(x, torch.tensor([5, 5])))
