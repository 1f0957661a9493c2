"""The trainer's report, by name: the metric keys and run statuses every other part reads.

The trainer (:func:`ablate.trainer.train`) calls ``report(metrics)`` at every evaluation point with a
dict whose keys are declared here and nowhere else. The tracking writer records them
(:mod:`ablate.tracking.writer`), a study's ``metric.name`` is checked against them
(:mod:`ablate.study.schema`), and the reader and the report read them back. ``tests/test_metrics.py``
trains a tiny run and fails if the trainer reports a key the writer would drop, or stops reporting one
declared here. This module imports nothing, so every layer can use it.

One report holds:

- :data:`ITERATION`: training iterations done (the MLflow step);
- :data:`STATUS`: :attr:`Status.RUNNING`, and on the last report :attr:`Status.FINISHED` or
  :attr:`Status.DIVERGED` (a non-finite loss ended the run);
- :data:`EVAL_METRICS`: numbers; ``val_error`` only with a validation split (``data.val_size`` > 0),
  ``test_error`` only with a test set, and neither on a diverged report (no evaluation then);
- ``grad_norm/<part>`` (:data:`GRAD_NORM_PREFIX`): mean gradient norm of each part of the network;
- :data:`LAYER_RESPONSES`: on the finished report only, ``{"names": [...], "std": [...]}``.
"""

from __future__ import annotations

__all__ = [
    "ERROR_METRICS",
    "EVAL_METRICS",
    "GRAD_NORM_PREFIX",
    "ITERATION",
    "LAYER_RESPONSES",
    "STATUS",
    "Status",
    "TRAINER_END_STATUSES",
]

ITERATION = "iteration"  # int: training iterations done
STATUS = "status"  # a Status
LAYER_RESPONSES = "layer_responses"  # finished report only: Fig. 7 data, {"names": [...], "std": [...]}

# numbers logged at each evaluation point (step = iteration)
EVAL_METRICS = (
    "epoch",  # epochs done, fractional
    "train_loss",  # mean cross-entropy over the training batches since the last report
    "train_error",  # fraction in [0, 1], on the augmented training batches since the last report
    "val_error",  # fraction, held-out split of the training set (absent when data.val_size = 0)
    "test_error",  # fraction, the test set
    "lr",  # learning rate of the last step
    "images_per_s",  # training throughput since the last report
    "wall_time",  # seconds since the start of training
)
ERROR_METRICS = ("train_error", "val_error", "test_error")  # the error fractions: curves, means, diagnoses
GRAD_NORM_PREFIX = "grad_norm/"  # grad_norm/stem, grad_norm/stage1..K (3 CIFAR, 4 ImageNet), grad_norm/head


class Status:
    """How a run stands. Plain strings: they travel in reports, checkpoints, Ray results and MLflow tags."""

    RUNNING = "running"  # trainer: every report before the last; tracking: a run not ended yet
    FINISHED = "finished"  # trainer: the run reached its length; tracking: also a study that ran to its end
    DIVERGED = "diverged"  # trainer: a non-finite loss ended the run early
    STOPPED = "stopped"  # tracking: stopped early by the scheduler (ASHA)
    INTERRUPTED = "interrupted"  # tracking: Ctrl-C (or the driver died); --resume continues it
    FAILED = "failed"  # tracking: the trial raised after its retries, or the study's driver raised


TRAINER_END_STATUSES = (Status.FINISHED, Status.DIVERGED)  # how the trainer's last report ends a run
