"""torchmetrics Metrics shared by the model families (their states sum across DDP ranks)."""
from .em import EMStatistics

__all__ = ["EMStatistics"]
