"""ablate: architecture search and ablation studies of CIFAR-style residual networks."""

from ablate.config import DataConfig, ModelSpec, TrainConfig, TrainerConfig, WarmupConfig

__version__ = "0.1.0"

__all__ = ["DataConfig", "ModelSpec", "TrainConfig", "TrainerConfig", "WarmupConfig", "__version__"]
