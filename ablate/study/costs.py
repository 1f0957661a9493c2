"""What a trial costs, known from its config before it trains: run length, parameters, MACs, FLOPs.

Training cost of one trial: ``train_flops = 6 * macs * iterations * batch_size`` (2 FLOPs per
multiply-accumulate, forward + backward ~ 3x forward). ResNet-110 with the paper's recipe (64k
iterations of 128 images) comes to about 12 PFLOP, ResNet-1202 to about 139 (docs/REFERENCE.md).

These are the *cost objectives* a study may name (:data:`COST_OBJECTIVES`) and the numbers its budget
(``constraints.max_params`` / ``max_macs`` / ``max_train_flops``) bounds: :func:`trial_costs` counts them
on the meta device (no weights, no training), for the data set's image shape and classes.
"""

from __future__ import annotations

from ablate.config import DataConfig, TrainConfig
from ablate.data.catalog import data_source

__all__ = ["COST_OBJECTIVES", "eval_images", "train_iterations", "trial_costs", "training_images"]

COST_OBJECTIVES = ("params", "macs", "train_flops")  # known before a trial starts; see trial_costs


def training_images(data: DataConfig) -> int:
    """Images one epoch trains on: the declared training set less ``val_size``, capped at ``train_size``."""
    remaining = data_source(data).train_images - data.val_size
    return min(remaining, data.train_size) if data.train_size else remaining


def eval_images(data: DataConfig) -> int:
    """Images one evaluation passes forward: the validation split and the test set (capped at ``test_size``)."""
    test = data_source(data).test_images
    return data.val_size + (min(test, data.test_size) if data.test_size else test)


def train_iterations(config: TrainConfig) -> int:
    """Run length in iterations, by the trainer's rule (:meth:`TrainerConfig.run_length`), full batches per epoch."""
    trainer = config.trainer
    return trainer.run_length(training_images(config.data) // trainer.batch_size)


def trial_costs(config: TrainConfig) -> dict[str, int]:
    """``{"params", "macs", "train_flops"}`` of one trial: trainable parameters, MACs of one image's forward
    pass, and the training FLOPs of the module docstring; counted on the meta device (cached per net)."""
    from ablate.models import count_macs, count_params  # torch: only when counting

    facts = data_source(config.data)
    dims = dict(in_channels=facts.in_channels, num_classes=facts.num_classes)
    macs = count_macs(config.model, **dims, image_size=facts.image_size)
    return {
        "params": count_params(config.model, **dims),
        "macs": macs,
        "train_flops": 6 * macs * train_iterations(config) * config.trainer.batch_size,
    }
