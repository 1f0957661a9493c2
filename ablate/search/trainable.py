"""The Ray Tune function trainable: a thin adapter that runs one trial through the shared trainer.

Operation order inside a trial (in a Ray worker): rebuild the :class:`~ablate.config.TrainConfig`
from the trial's params -> a local folder for the trainer's ``checkpoint.pt`` -> ``train(config,
report, checkpoint_dir=..., resume_from=<the trial's last Tune checkpoint, if any>)``. The trainer
writes ``checkpoint.pt`` before each report, so ``report`` hands Tune metrics and the matching state
together; a trial that Tune restarts (a failure retried, or ``--resume``) continues from it exactly.

Each report also carries :data:`OBJECTIVE`, the study's metric for the scheduler and the sampler, set
to the worst value where the metric is missing or not finite (a diverged run has no test error), so
ASHA and Optuna always have a number to rank. ``layer_responses`` travels as JSON text: Ray's result
loggers record only scalars and text.
"""

from __future__ import annotations

import json
import math
import tempfile
from contextlib import ExitStack
from typing import Any

from ray import tune

from ablate.config import TrainConfig
from ablate.metrics import LAYER_RESPONSES, STATUS, Status
from ablate.study import Trial
from ablate.study.schema import Metric
from ablate.trainer import train

__all__ = ["OBJECTIVE", "objective", "train_trial", "trial_params"]

OBJECTIVE = "objective"  # result key ASHA and Optuna rank by


def trial_params(trial: Trial, metric: Metric) -> dict[str, Any]:
    """What one Tune trial receives under ``config["trial"]``: the config as plain data, its group and label, the metric."""
    return {
        "config": trial.config.model_dump(mode="json"),
        "group": trial.group,
        "label": trial.label,
        "metric": metric.name,
        "mode": metric.mode,
    }


def objective(metrics: dict[str, Any], *, metric: str, mode: str) -> float:
    """``metrics[metric]``, or the worst value (inf for ``min``, -inf for ``max``) when missing, non-finite or diverged."""
    value = metrics.get(metric)
    usable = isinstance(value, (int, float)) and math.isfinite(value) and metrics.get(STATUS) != Status.DIVERGED
    if usable:
        return float(value)
    return math.inf if mode == "min" else -math.inf


def train_trial(params: dict[str, Any]) -> None:
    """Ray Tune function trainable: train ``params["trial"]`` (see :func:`trial_params`) and report every evaluation."""
    spec = params["trial"]
    config = TrainConfig.model_validate(spec["config"])
    with ExitStack() as stack:
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="ablate-trial-"))
        checkpoint = tune.get_checkpoint()
        resume_from = stack.enter_context(checkpoint.as_directory()) if checkpoint else None

        def report(metrics: dict[str, Any]) -> None:
            result = {key: value for key, value in metrics.items() if key != LAYER_RESPONSES}
            if LAYER_RESPONSES in metrics:  # as JSON text: Ray's result loggers take scalars and text
                result[LAYER_RESPONSES] = json.dumps(metrics[LAYER_RESPONSES])
            result[OBJECTIVE] = objective(metrics, metric=spec["metric"], mode=spec["mode"])
            # a diverged report comes without a new checkpoint.pt: nothing to persist
            saved = None if metrics.get(STATUS) == Status.DIVERGED else tune.Checkpoint.from_directory(directory)
            tune.report(result, checkpoint=saved)

        train(config, report, checkpoint_dir=directory, resume_from=resume_from)
