"""``python -m lightning_genmodels``: the LightningCLI entry point."""
import sys

from .cli import main
from .gmm import NotFittedError

try:
    main()
except NotFittedError as exc:  # validate/test/predict without --ckpt_path: a usage error, no traceback
    sys.exit(f"error: {exc}")
