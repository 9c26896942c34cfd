"""torchmetrics Metrics for the model families: sample quality against real MNIST (FID, KID,
improved precision/recall, mode coverage) on the shipped MNIST feature network, and the NLL bound
for dequantised densities; and the GMM's EM statistics (em.py). States sum across DDP ranks."""
from .classes import ClassCoverage
from .em import EMStatistics
from .extractors import InceptionFeatures, MNISTFeatures, build_extractor
from .features import FeatureWeightsError, MNISTFeatureNet, load_feature_net
from .nll import dequantized_bits_per_dim
from .precision_recall import PrecisionRecall
from .quality import SampleQuality
from .real import load_real_images, real_features

__all__ = [
    "ClassCoverage",
    "EMStatistics",
    "FeatureWeightsError",
    "InceptionFeatures",
    "MNISTFeatureNet",
    "MNISTFeatures",
    "PrecisionRecall",
    "SampleQuality",
    "build_extractor",
    "dequantized_bits_per_dim",
    "load_feature_net",
    "load_real_images",
    "real_features",
]
