"""Test helpers shared across test modules."""
from __future__ import annotations

import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# Parametrise a test over devices: the CUDA twin skips without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]
