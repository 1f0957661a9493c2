"""Ray Tune callbacks that run in the driver: the MLflow records and the progress line.

:class:`Recorder` is how trials reach MLflow: every write goes through the driver's one
:class:`~ablate.tracking.writer.StudyWriter`, so concurrent trials never write themselves.
:class:`Progress` prints a compact line every few seconds and one line per trial that ends.

Both work on training runs (:func:`~ablate.search.trainable.trial_runs`): a plain Ray trial is one run,
a fused one (a study's ``fuse``) holds several, each recorded and reported as if it had run alone. A run
ends at its trainer's last report (finished | diverged), so a fused member that diverges ends while
its trial goes on.

Tune pickles its callbacks with the experiment (``tuner.pkl``); neither keeps its live state in the
pickle, and ``ablate.search.runner`` hands Tune fresh ones on ``--resume``.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from ray import tune
from ray.tune.experiment import Trial

from ablate.config import TrainConfig
from ablate.metrics import LAYER_RESPONSES, STATUS, TRAINER_END_STATUSES, Status
from ablate.search.trainable import DESIGN_SPACE, PACK, trial_runs
from ablate.study.costs import trial_costs
from ablate.tracking import layout
from ablate.tracking.writer import StudyWriter
from ablate.trainer import CHECKPOINT_FILE
from ablate.weights import WeightsError, save_weights, weights_from_checkpoint

__all__ = ["PROGRESS_EVERY", "Progress", "Recorder", "trial_name"]

PROGRESS_EVERY = 10.0  # seconds between progress lines
_ENDED = (Trial.TERMINATED, Trial.ERROR)


def run_name(spec: dict[str, Any]) -> str:
    """``resnet20 seed 0``: a run's label and seed (``spec``: its trial params)."""
    return f"{spec['label']} seed {spec['config']['seed']}"


def trial_name(trial: Trial) -> str:
    """``resnet20 seed 0``: the trial's run; a fused trial's runs joined by `` + ``."""
    return " + ".join(run_name(spec) for _, spec, _ in runs(trial))


def runs(trial: Trial, result: dict[str, Any] | None = None) -> list[tuple[str, dict, dict]]:
    """The trial's runs as ``(run id, trial params, report)``, from ``result`` or else its latest result."""
    return trial_runs(trial.trial_id, trial.config, trial.last_result if result is None else result)


def _ended(metrics: dict[str, Any]) -> bool:
    """Whether a report is its run's last: the trainer ended it (finished | diverged)."""
    return metrics.get(STATUS) in TRAINER_END_STATUSES


def model_params(config: TrainConfig) -> dict[str, Any]:
    """``model.name``, ``depth``, ``model.params``, ``model.macs``, ``model.train_flops``, counted for the data
    set's shape (:func:`~ablate.study.costs.trial_costs`, as ``ablate plan`` counts them)."""
    costs = trial_costs(config)
    return {
        layout.PARAM_MODEL_NAME: config.model.name,
        layout.PARAM_DEPTH: config.model.depth,
        layout.PARAM_MODEL_PARAMS: costs["params"],
        layout.PARAM_MODEL_MACS: costs["macs"],
        layout.PARAM_TRAIN_FLOPS: costs["train_flops"],
    }


class Recorder(tune.Callback):
    """Records every run of the invocation through ``writer`` (a child run each) and keeps how each one ended.

    Child status at the end: the trainer's last ``status`` (finished | diverged); ``stopped`` when the
    trial ended on a ``running`` report (ASHA stopped it); ``failed`` when Tune gave up on it (after
    ``FailureConfig.max_failures`` retries).

    A finished run's final weights: Tune registers the checkpoint of a report after passing the report
    on (:meth:`on_trial_result`, which ends the run), then calls :meth:`on_checkpoint` with it; there the
    ``"model"`` entry of the run's ``checkpoint.pt`` (member ``k``'s folder in a fused trial) is logged as
    ``weights.pt`` (:mod:`ablate.weights`).
    """

    def __init__(self, writer: StudyWriter, *, expected: int, resumed: bool = False):
        self.writer = writer
        self.expected = expected  # runs (the study's trials) in all
        self.resumed = resumed  # this invocation continues an earlier one (--resume)
        self.started: set[str] = set()  # run ids started in this invocation
        self.ended: dict[str, str] = {}  # run id -> status, for runs that ended in this invocation
        self.done_before = 0  # runs that had ended before this invocation (--resume)
        self._costs: dict[str, dict[str, Any]] = {}  # group -> model params
        self.weighed: set[str] = set()  # run ids whose final weights were logged in this invocation

    def __getstate__(self) -> dict[str, Any]:
        return {"expected": self.expected}  # the live writer never goes into Tune's pickles

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(None, expected=state["expected"])

    @property
    def complete(self) -> bool:
        """Whether every trial of the study has ended (in this invocation or an earlier one)."""
        return self.done_before + len(self.ended) >= self.expected

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        for run_id, spec, latest in runs(trial):
            if run_id in self.ended or _ended(latest):  # a fused member that ended before its trial restarted
                continue
            config = TrainConfig.model_validate(spec["config"])
            if spec["group"] not in self._costs:
                self._costs[spec["group"]] = model_params(config)
            self.writer.start_trial(
                run_id, config, group=spec["group"], label=spec["label"], model=self._costs[spec["group"]],
                design_space=spec.get(DESIGN_SPACE),
            )
            self.started.add(run_id)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info) -> None:
        open_runs = set(self.writer.open_trials)
        for run_id, _, metrics in runs(trial, result):
            if run_id in open_runs and metrics:
                self.writer.log_metrics(run_id, metrics)
                if _ended(metrics):
                    self._end(run_id, metrics)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        open_runs = set(self.writer.open_trials)
        for run_id, _, metrics in runs(trial):
            if run_id in open_runs:  # ended on a ``running`` report: ASHA stopped it
                self._end(run_id, metrics)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        open_runs = set(self.writer.open_trials)
        for run_id, _, _ in runs(trial):
            if run_id in open_runs:
                self.writer.end_trial(run_id, Status.FAILED, error=_error_text(trial))
                self.ended[run_id] = Status.FAILED

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial, checkpoint, **info) -> None:
        finished = [
            (k, run_id) for k, (run_id, _, metrics) in enumerate(runs(trial))
            if metrics.get(STATUS) == Status.FINISHED and run_id in self.started and run_id not in self.weighed
        ]
        if not finished:
            return
        with checkpoint.as_directory() as folder, tempfile.TemporaryDirectory(prefix="ablate-weights-") as tmp:
            for k, run_id in finished:
                source = Path(folder) / CHECKPOINT_FILE
                if PACK in trial.config:  # a fused trial: member k's folder
                    from ablate.fused import member_dir

                    source = member_dir(folder, k) / CHECKPOINT_FILE
                self.weighed.add(run_id)
                try:
                    path = save_weights(weights_from_checkpoint(source), Path(tmp) / layout.ARTIFACT_WEIGHTS)
                    self.writer.log_weights(run_id, path)
                except (WeightsError, OSError, MlflowException) as err:  # the study goes on without them
                    print(f"  {run_id}: its final weights were not kept ({err})", flush=True)

    def on_experiment_end(self, trials: list[Trial], **info) -> None:
        if self.resumed:  # a first invocation has no earlier runs, whatever state Tune leaves a trial in
            self.done_before = sum(
                run_id not in self.started and (trial.status == Trial.TERMINATED or _ended(latest))
                for trial in trials for run_id, _, latest in runs(trial)
            )

    def _end(self, run_id: str, metrics: dict[str, Any]) -> None:
        """End the run with its trainer's status, or ``stopped`` when its last report was a ``running`` one."""
        status = metrics[STATUS] if _ended(metrics) else Status.STOPPED
        responses = json.loads(metrics[LAYER_RESPONSES]) if LAYER_RESPONSES in metrics else None
        self.writer.end_trial(run_id, status, layer_responses=responses)
        self.ended[run_id] = status


def _error_text(trial: Trial) -> str | None:
    """The trial's failures as Tune wrote them, in the driver's copy of the trial folder (synced to storage later)."""
    path = trial.error_file
    return Path(path).read_text() if path and Path(path).exists() else None


def _failure(trial: Trial) -> str:
    """The trial's latest failure in a few words: its worker died, or the exception's last line."""
    text = _error_text(trial) or ""
    latest = text.rsplit("Failure # ", 1)[-1]
    if "ActorDiedError" in latest or "actor died" in latest.lower() or "worker died" in latest.lower():
        return "its worker process died"
    lines = [line.strip() for line in latest.splitlines()[1:] if line.strip()]
    return f"it failed ({lines[-1][:160]})" if lines else "it failed"


class Progress(tune.Callback):
    """Prints ``[0:01:23] 3/8 done, 2 running, 3 pending | best test_error 0.1234 (resnet20 seed 1) | ...``.

    Every :data:`PROGRESS_EVERY` seconds, with each running run's epoch; and a line per run that ends.
    """

    def __init__(self, *, metric: str, mode: str, total: int, restarts: int = 0, every: float = PROGRESS_EVERY):
        self.metric, self.mode, self.total, self.every = metric, mode, total, every
        self.restarts = restarts  # how many times Tune restarts a failed trial before it counts as failed
        self._start = time.monotonic()
        self._last = self._start
        self._told: set[str] = set()  # run ids whose end has been printed

    def on_step_end(self, iteration: int, trials: list[Trial], **info) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            print(self.line(trials), flush=True)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info) -> None:
        for run_id, spec, metrics in runs(trial, result):
            if _ended(metrics) and run_id not in self._told:
                self._tell(run_id, spec, metrics)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        for run_id, spec, metrics in runs(trial):
            if metrics and run_id not in self._told:
                self._tell(run_id, spec, metrics)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        for run_id, spec, _ in runs(trial):
            if run_id not in self._told:
                self._told.add(run_id)
                print(f"  {run_name(spec)}: failed; the error is in {trial.error_file}", flush=True)

    def _tell(self, run_id: str, spec: dict[str, Any], metrics: dict[str, Any]) -> None:
        """The line of a run that ended: its status, iteration and metric."""
        self._told.add(run_id)
        status = metrics[STATUS] if _ended(metrics) else "stopped early"
        value = metrics.get(self.metric)
        shown = f", {self.metric} {value:.4f}" if isinstance(value, float) and math.isfinite(value) else ""
        print(f"  {run_name(spec)}: {status} at iteration {metrics.get('iteration', 0)}{shown}", flush=True)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        failures = trial.run_metadata.num_failures
        print(f"  {trial_name(trial)}: {_failure(trial)}; it restarts from its last checkpoint "
              f"(restart {failures} of at most {self.restarts})", flush=True)

    def line(self, trials: list[Trial]) -> str:
        """The progress line for ``trials`` (those Tune has created so far), counting runs."""
        elapsed = time.strftime("%H:%M:%S", time.gmtime(time.monotonic() - self._start))
        done, running = 0, []
        for trial in trials:
            for _, spec, metrics in runs(trial):
                if trial.status in _ENDED or _ended(metrics):
                    done += 1
                elif trial.status == Trial.RUNNING:
                    running.append(f"{run_name(spec)} ep {metrics.get('epoch', 0.0):.1f}")
        pending = self.total - done - len(running)
        parts = [f"[{elapsed}] {done}/{self.total} done, {len(running)} running, {pending} pending"]
        best = self._best(trials)
        if best is not None:
            parts.append(f"best {self.metric} {best[0]:.4f} ({run_name(best[1])})")
        if running:
            parts.append("running: " + ", ".join(running))
        return " | ".join(parts)

    def _best(self, trials: list[Trial]) -> tuple[float, dict[str, Any]] | None:
        """The best finite value of the metric among the runs' latest reports, with the run's trial params."""
        scored = [
            (value, spec)
            for trial in trials
            for _, spec, metrics in runs(trial)
            if isinstance(value := metrics.get(self.metric), float) and math.isfinite(value)
        ]
        if not scored:
            return None
        pick = min if self.mode == "min" else max
        return pick(scored, key=lambda pair: pair[0])
