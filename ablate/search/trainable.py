"""The Ray Tune function trainable: a thin adapter that runs one trial through the shared trainer.

Operation order inside a trial (in a Ray worker): rebuild the :class:`~ablate.config.TrainConfig`
from the trial's params -> a local folder for the trainer's ``checkpoint.pt`` -> ``train(config,
report, checkpoint_dir=..., resume_from=<the trial's last Tune checkpoint, if any>)``. The trainer
writes ``checkpoint.pt`` before each report, so ``report`` hands Tune metrics and the matching state
together; a trial that Tune restarts (a failure retried, or ``--resume``) continues from it exactly.

Each report also carries :data:`OBJECTIVE`, the study's metric for the scheduler and the sampler, set
to the worst value where the metric is missing or not finite (a diverged run has no test error), so
ASHA and Optuna always have a number to rank; in a study with several objectives, also the trial's
costs (``params``, ``macs``, ``train_flops``: :data:`~ablate.study.costs.COST_OBJECTIVES`, counted by the
driver before the trial starts), so that every result the scheduler and the sampler see holds every
objective. Tracking records neither (they are not trainer metrics); the costs are the child run's params. ``layer_responses`` travels as JSON text: Ray's result
loggers record only scalars and text.

A fused Ray trial (a study's ``fuse``, params ``{"pack": [trial params, ...]}``) trains its members
with :func:`ablate.fused.train_fused` and reports once per report point: ``{"iteration": ...,
"members": {"0": <member 0's latest report>, ...}}``, each member's report encoded as a plain trial's,
with the checkpoint folder of every member. :func:`trial_runs` reads either kind back as runs.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

from ray import tune

from ablate.config import TrainConfig
from ablate.metrics import ITERATION, LAYER_RESPONSES, STATUS, Status
from ablate.study import Trial
from ablate.study.schema import Metric
from ablate.trainer import train

__all__ = ["COSTS", "DESIGN_SPACE", "MEMBERS", "OBJECTIVE", "PACK", "objective", "train_trial", "trial_params", "trial_runs"]

OBJECTIVE = "objective"  # result key ASHA and Optuna rank by
COSTS = "costs"  # trial params: cost objective -> value, added to every report
DESIGN_SPACE = "design_space"  # trial params: the design space the trial's point was drawn from
PACK = "pack"  # params of a fused Ray trial: the trial params of each member
MEMBERS = "members"  # result of a fused Ray trial: member number (text) -> that member's latest report


def trial_params(
    trial: Trial, metric: Metric, *, costs: Mapping[str, int] | None = None, design_space: str | None = None
) -> dict[str, Any]:
    """What one Tune trial receives under ``config["trial"]``: the config as plain data, its group and label,
    the metric; ``costs`` (added to every report) and ``design_space`` (the child run's tag) when given."""
    params = {
        "config": trial.config.model_dump(mode="json"),
        "group": trial.group,
        "label": trial.label,
        "metric": metric.name,
        "mode": metric.mode,
    }
    if costs is not None:
        params[COSTS] = dict(costs)
    if design_space is not None:
        params[DESIGN_SPACE] = design_space
    return params


def objective(metrics: dict[str, Any], *, metric: str, mode: str) -> float:
    """``metrics[metric]``, or the worst value (inf for ``min``, -inf for ``max``) when missing, non-finite or diverged."""
    value = metrics.get(metric)
    usable = isinstance(value, (int, float)) and math.isfinite(value) and metrics.get(STATUS) != Status.DIVERGED
    if usable:
        return float(value)
    return math.inf if mode == "min" else -math.inf


def trial_runs(trial_id: str, params: dict[str, Any], result: dict[str, Any] | None) -> list[tuple[str, dict, dict]]:
    """The training runs of one Ray trial as ``(run id, trial params, latest report)``, one per MLflow child run.

    A plain trial is one run under its own id; member ``k`` of a fused trial is ``<trial id>.<k>``.
    """
    result = result or {}
    if PACK not in params:
        return [(trial_id, params["trial"], result)]
    members = result.get(MEMBERS, {})
    return [(f"{trial_id}.{k}", spec, members.get(str(k), {})) for k, spec in enumerate(params[PACK])]


def train_trial(params: dict[str, Any]) -> None:
    """Ray Tune function trainable: train ``params["trial"]`` (see :func:`trial_params`) and report every
    evaluation; a fused trial (``params["pack"]``) goes to :func:`_train_pack`."""
    if PACK in params:
        _train_pack(params[PACK])
        return
    spec = params["trial"]
    config = TrainConfig.model_validate(spec["config"])
    with _checkpoints() as (directory, resume_from):

        def report(metrics: dict[str, Any]) -> None:
            # a diverged report comes without a new checkpoint.pt: nothing to persist
            saved = None if metrics.get(STATUS) == Status.DIVERGED else tune.Checkpoint.from_directory(directory)
            tune.report(_result(metrics, spec), checkpoint=saved)

        train(config, report, checkpoint_dir=directory, resume_from=resume_from)


def _train_pack(specs: list[dict[str, Any]]) -> None:
    """The members trained fused; one Tune report per report point with every member's latest report."""
    from ablate.fused import train_fused  # torch.func: only in fused trials

    configs = [TrainConfig.model_validate(spec["config"]) for spec in specs]
    latest: dict[str, dict[str, Any]] = {}  # member number -> its latest report, encoded

    def member(k: int) -> Callable[[dict[str, Any]], None]:
        return lambda metrics: latest.__setitem__(str(k), _result(metrics, specs[k]))

    with _checkpoints() as (directory, resume_from):

        def report_point() -> None:  # every member's checkpoint of this point is written
            result = {ITERATION: max(m[ITERATION] for m in latest.values()), MEMBERS: dict(latest)}
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(directory))

        train_fused(configs, [member(k) for k in range(len(specs))], checkpoint_dir=directory,
                    resume_from=resume_from, after_reports=report_point)


@contextmanager
def _checkpoints() -> Iterator[tuple[str, str | None]]:
    """A local folder for the trainer's checkpoints, and the trial's last Tune checkpoint as a folder (or None)."""
    with ExitStack() as stack:
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="ablate-trial-"))
        checkpoint = tune.get_checkpoint()
        yield directory, stack.enter_context(checkpoint.as_directory()) if checkpoint else None


def _result(metrics: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A trainer's report as Tune takes it: layer responses as JSON text, and the study's objective."""
    result = {key: value for key, value in metrics.items() if key != LAYER_RESPONSES}
    if LAYER_RESPONSES in metrics:  # as JSON text: Ray's result loggers take scalars and text
        result[LAYER_RESPONSES] = json.dumps(metrics[LAYER_RESPONSES])
    result[OBJECTIVE] = objective(metrics, metric=spec["metric"], mode=spec["mode"])
    result.update(spec.get(COSTS, {}))
    return result
