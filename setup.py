"""Install lightning_genmodels; the C++/CUDA sources in csrc/ ship inside the package and are
compiled just in time on first use (see lightning_genmodels/ops/build.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CSRC_PATTERNS = ("*.cpp", "*.cu", "*.cuh", "*.h")


class BuildPyWithSources(build_py):
    """Copy the top-level csrc/ into the built package as lightning_genmodels/csrc/."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "lightning_genmodels" / "csrc"
        for pattern in CSRC_PATTERNS:
            for source in (ROOT / "csrc").rglob(pattern):
                destination = target / source.relative_to(ROOT / "csrc")
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)


setup(
    name="lightning_genmodels",
    version="0.1.0",
    description="GMM, VAE, GAN and diffusion models on PyTorch Lightning with C++/CUDA kernels",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lightning_genmodels", "lightning_genmodels.*"]),
    cmdclass={"build_py": BuildPyWithSources},
    package_data={"lightning_genmodels.metrics": ["weights/*.pt"]},  # the FID feature network
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        # 2.2 and 2.3 also run our tests with torch 2.14, but import pkg_resources, which
        # current setuptools no longer ships: 2.4 is the oldest that installs and imports as is.
        "lightning>=2.4,<3",
        "torchmetrics>=1.3",
        "ninja>=1.11",
        "jsonargparse[signatures]>=4.27",
        "numpy>=1.24",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "scikit-learn>=1.3", "scipy>=1.10", "diffusers>=0.30"],
        "bench": ["scikit-learn>=1.3", "matplotlib>=3.7", "diffusers>=0.30"],
    },
    entry_points={"console_scripts": ["lightning-genmodels=lightning_genmodels.cli:main"]},
)
