"""``python -m lightning_genmodels``: the LightningCLI entry point."""
from .cli import main

main()
