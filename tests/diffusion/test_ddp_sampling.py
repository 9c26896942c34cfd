"""Diffusion.sample under 2-process CPU DDP (gloo): the gathered shares equal one process's batch."""
from __future__ import annotations

import os
import socket
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_genmodels import Diffusion
from tests.diffusion.test_module import TINY, tiny


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, path: str) -> None:
    warnings.filterwarnings("ignore", category=UserWarning)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = Diffusion(**TINY)
        model.load_state_dict(torch.load(path)["state"])
        images = model.eval().sample(5, steps=3, sampler="ddpm", seed=21)
        torch.save(images, f"{path}.rank{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_sample_equals_single_process(tmp_path):
    model = tiny()
    path = str(tmp_path / "model.pt")
    torch.save({"state": model.state_dict()}, path)
    mp.spawn(_worker, args=(2, _free_port(), path), nprocs=2, join=True)
    single = model.sample(5, steps=3, sampler="ddpm", seed=21)
    for rank in (0, 1):
        gathered = torch.load(f"{path}.rank{rank}")
        assert gathered.shape == (5, 1, 28, 28)
        torch.testing.assert_close(gathered, single, rtol=1e-4, atol=1e-4)
