"""Python face of the C++/CUDA ops: each op has a pure-PyTorch reference and ``impl``."""
from .build import BuildInfo, ExtensionBuildError, load_library, resolve_cuda_home, use_ext
from .diffusion import diffusion_step
from .gmm import GMMStats, gmm_em_stats, gmm_log_prob, gmm_m_step
from .philox import philox_normal
from .rows_dot import rows_dot, seeding_distances, sq_norms
from .unet import unet_sample_forward

__all__ = [
    "BuildInfo",
    "ExtensionBuildError",
    "diffusion_step",
    "GMMStats",
    "gmm_em_stats",
    "gmm_log_prob",
    "gmm_m_step",
    "load_library",
    "philox_normal",
    "resolve_cuda_home",
    "rows_dot",
    "seeding_distances",
    "sq_norms",
    "unet_sample_forward",
    "use_ext",
]
