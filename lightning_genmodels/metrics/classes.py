"""Mode coverage of generated digits: the MNIST classifier's class histogram over generated
samples and its mean confidence (maximum softmax probability). A GAN that stopped drawing some
digits shows them as missing classes; blurry or ambiguous samples show as low confidence.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from ..module_utils import check_integer
from .features import check_images

__all__ = ["ClassCoverage"]


class ClassCoverage(Metric):
    """Class histogram, mode coverage and mean confidence of a classifier on generated images.

    ``compute()`` returns ``histogram`` [C] (share of samples per predicted class), ``coverage``
    (fraction of classes with a share of at least ``min_share``), ``missing`` (number of classes
    below it) and ``confidence`` (mean max softmax probability).

    Args:
        classifier: images [B, 1, 28, 28] in [0, 1] -> logits [B, C]; eval mode, frozen.
        num_classes: C.
        min_share: share below which a class counts as missing; the default 0.02 is a fifth of
            the uniform share of 10 digits.
    """

    full_state_update = False

    def __init__(self, classifier: nn.Module, num_classes: int = 10, min_share: float = 0.02, **kwargs) -> None:
        super().__init__(**kwargs)
        num_classes = check_integer("num_classes", num_classes, 1)
        if not 0.0 <= min_share <= 1.0:
            raise ValueError(f"min_share must be in [0, 1], got {min_share}")
        self.classifier = classifier
        self.num_classes = num_classes
        self.min_share = min_share
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("confidence_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def train(self, mode: bool = True) -> "ClassCoverage":
        """The metric's mode; the classifier stays in eval mode (see ``MNISTFeatures.train``)."""
        super().train(mode)
        self.classifier.eval()
        return self

    @torch.no_grad()
    def update(self, imgs: Tensor) -> None:
        """Classify generated images [B, 1, 28, 28] in [0, 1]."""
        check_images(imgs)
        logits = self.classifier(imgs.float())
        if logits.shape != (imgs.shape[0], self.num_classes):  # (another width: wrong shares, or an ATen error)
            raise ValueError(f"the classifier returned logits of shape {tuple(logits.shape)}, expected "
                             f"[B, num_classes] = [{imgs.shape[0]}, {self.num_classes}]")
        probs = torch.softmax(logits.double(), dim=1)
        confidence, label = probs.max(dim=1)
        self.counts += torch.bincount(label, minlength=self.num_classes)
        self.confidence_sum += confidence.sum()

    def compute(self) -> dict[str, Tensor]:
        n = self.counts.sum()
        if n == 0:
            raise RuntimeError("ClassCoverage.compute() called before any update()")
        histogram = self.counts.double() / n
        covered = (histogram >= self.min_share).sum()
        return {
            "histogram": histogram,
            "coverage": covered.double() / self.num_classes,
            "missing": self.num_classes - covered,
            "confidence": self.confidence_sum / n,
        }
