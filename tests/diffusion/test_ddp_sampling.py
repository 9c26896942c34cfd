"""Diffusion.sample under 2-process CPU DDP (gloo): the gathered shares equal one process's batch;
FIDCallback and SampleGrid in a 2-process fit."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import pytest

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
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        torch.set_num_threads(1)
        model = Diffusion(**TINY)
        model.load_state_dict(torch.load(path)["state"])
        images = model.eval().sample(5, steps=3, sampler="ddpm", seed=21, distributed=True)
        one = model.sample(1, steps=3, sampler="ddpm", seed=21, distributed=True)  # rank 1's share is empty
        torch.save({"five": images, "one": one}, f"{path}.rank{rank}")
        if rank == 0:  # no Trainer running: a process group alone does not make sampling collective
            torch.save(model.sample(2, steps=3, sampler="ddpm", seed=21), f"{path}.alone")
        dist.barrier()
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
        assert gathered["five"].shape == (5, 1, 28, 28)
        torch.testing.assert_close(gathered["five"], single, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(gathered["one"], single[:1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.load(f"{path}.alone"), single[:2], rtol=1e-4, atol=1e-4)


def test_fid_and_grids_in_a_two_process_fit(mnist_dir, tmp_path):
    """FIDCallback gives one process's values (each rank's chunks drawn alone: Diffusion.sample
    used to split every chunk over the ranks, so both drew the same images, and unequal chunk
    counts deadlocked); a grid of 1 image over 2 ranks; rank 0 samples alone after fit."""
    script = Path(__file__).with_name("ddp_fit_script.py")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    cache = tmp_path / "cache"
    for devices in (1, 2):
        out = tmp_path / f"d{devices}"
        out.mkdir()
        try:
            proc = subprocess.run([sys.executable, str(script), str(mnist_dir), str(cache), str(out), str(devices)],
                                  env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{devices}-process fit hung:\n{exc.stdout}\n{exc.stderr}")
        assert proc.returncode == 0, proc.stderr[-4000:]
    one = json.loads((tmp_path / "d1" / "rank0.json").read_text())["fid"]
    two = [json.loads((tmp_path / "d2" / f"rank{r}.json").read_text())["fid"] for r in (0, 1)]
    assert two[0] == two[1]
    for name in ("fid", "precision", "recall", "mode_coverage", "confidence"):
        assert two[0][name] == pytest.approx(one[name], rel=1e-5, abs=1e-9), name
    assert (tmp_path / "d1" / "grid1.png").is_file() and (tmp_path / "d2" / "grid2.png").is_file()
    torch.testing.assert_close(torch.load(tmp_path / "d2" / "after2.pt"), torch.load(tmp_path / "d1" / "after1.pt"),
                               rtol=1e-4, atol=1e-4)
