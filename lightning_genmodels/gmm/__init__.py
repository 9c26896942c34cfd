"""Gaussian mixture fitted by streamed EM (see :mod:`.module`)."""
from .estimator import ConvergenceWarning, NotFittedError
from .module import GaussianMixture
from .strategy import EMDDPStrategy, EMStep

__all__ = ["ConvergenceWarning", "EMDDPStrategy", "EMStep", "GaussianMixture", "NotFittedError"]
