"""A grid callback's path must end in an image suffix PIL writes: checked when the callback is
built (save_image had failed with "unknown file extension" only when fit ended)."""
from __future__ import annotations

import pytest

from lightning_genmodels import LatentInterpolation, SampleGrid


@pytest.mark.parametrize("cls", [SampleGrid, LatentInterpolation])
@pytest.mark.parametrize("path, shown", [("out/grid.xyz", ".xyz"), ("out/grid_{epoch}", "none")])
def test_a_path_without_an_image_suffix_is_refused_when_built(cls, path: str, shown: str) -> None:
    with pytest.raises(ValueError, match=rf"needs an image file suffix such as \.png \(got {shown}\)"):
        cls(path=path)


@pytest.mark.parametrize("path", ["out/grid.PNG", "out/g_{epoch:03d}.jpg", "out/grid.pdf"])
def test_image_suffixes_pass(path: str) -> None:
    SampleGrid(path=path)
