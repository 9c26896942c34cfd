"""A --ckpt_path file that does not load as a checkpoint is a usage error naming it (torch.load's
traceback named no file, and advised weights_only=False), before any data is read."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lightning_genmodels.cli import main


@pytest.mark.parametrize("content, match", [
    (b"", r"not a checkpoint that loads \(EOFError\)"),
    (b"garbage\n", r"not a checkpoint that loads \(UnpicklingError: Unsupported operand"),
    ([1, 2], r"not a Lightning checkpoint \(it holds a list, not a dict\)"),
], ids=["empty", "text", "list"])
def test_a_corrupt_checkpoint_is_a_usage_error_naming_it(content, match: str, tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "bad.ckpt"
    if isinstance(content, bytes):
        ckpt.write_bytes(content)
    else:
        torch.save(content, ckpt)
    with pytest.raises(SystemExit) as exc:
        main(args=["test", "--model", "GaussianMixture", "--data.data_dir", str(tmp_path / "no_data"),
                   "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(ckpt)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"error: --ckpt_path {ckpt}: " in err and re.search(match, err), err[-2000:]
