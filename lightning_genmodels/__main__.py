"""``python -m lightning_genmodels``: the LightningCLI entry point."""
import sys

from .cli import main
from .data import IDXFormatError
from .gmm import NotFittedError

try:
    main()
except NotFittedError as exc:  # validate/test/predict without --ckpt_path: a usage error, no traceback
    sys.exit(f"error: {exc}")
except IDXFormatError as exc:  # missing or corrupt MNIST files: the message names them and the fix
    sys.exit(f"error: {exc}")
