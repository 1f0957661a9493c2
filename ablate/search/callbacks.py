"""Ray Tune callbacks that run in the driver: the MLflow records and the progress line.

:class:`Recorder` is how trials reach MLflow: every write goes through the driver's one
:class:`~ablate.tracking.writer.StudyWriter`, so concurrent trials never write themselves.
:class:`Progress` prints a compact line every few seconds and one line per trial that ends.

Tune pickles its callbacks with the experiment (``tuner.pkl``); neither keeps its live state in the
pickle, and ``ablate.search.runner`` hands Tune fresh ones on ``--resume``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.experiment import Trial

from ablate.config import TrainConfig
from ablate.data import data_source
from ablate.metrics import LAYER_RESPONSES, STATUS, TRAINER_END_STATUSES, Status
from ablate.models import count_macs, count_params
from ablate.tracking import layout
from ablate.tracking.writer import StudyWriter

__all__ = ["PROGRESS_EVERY", "Progress", "Recorder", "trial_name"]

PROGRESS_EVERY = 10.0  # seconds between progress lines
_ENDED = (Trial.TERMINATED, Trial.ERROR)


def trial_name(trial: Trial) -> str:
    """``resnet20 seed 0``: the trial's label and seed."""
    spec = trial.config["trial"]
    return f"{spec['label']} seed {spec['config']['seed']}"


def model_params(config: TrainConfig) -> dict[str, Any]:
    """``model.name``, ``depth``, ``model.params``, ``model.macs``, counted for the data set's shape."""
    facts = data_source(config.data)
    dims = dict(in_channels=facts.in_channels, num_classes=facts.num_classes)
    return {
        layout.PARAM_MODEL_NAME: config.model.name,
        layout.PARAM_DEPTH: config.model.depth,
        layout.PARAM_MODEL_PARAMS: count_params(config.model, **dims),
        layout.PARAM_MODEL_MACS: count_macs(config.model, **dims, image_size=facts.image_size),
    }


class Recorder(tune.Callback):
    """Records every trial of the invocation through ``writer`` and keeps how each one ended.

    Child status at the end: the trainer's last ``status`` (finished | diverged); ``stopped`` when the
    trial ended on a ``running`` report (ASHA stopped it); ``failed`` when Tune gave up on it (after
    ``FailureConfig.max_failures`` retries).
    """

    def __init__(self, writer: StudyWriter, *, expected: int, resumed: bool = False):
        self.writer = writer
        self.expected = expected  # trials the study runs in all
        self.resumed = resumed  # this invocation continues an earlier one (--resume)
        self.started: set[str] = set()  # trial ids started in this invocation
        self.ended: dict[str, str] = {}  # trial id -> status, for trials that ended in this invocation
        self.done_before = 0  # trials that had ended before this invocation (--resume)
        self._costs: dict[str, dict[str, Any]] = {}  # group -> model params

    def __getstate__(self) -> dict[str, Any]:
        return {"expected": self.expected}  # the live writer never goes into Tune's pickles

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(None, expected=state["expected"])

    @property
    def complete(self) -> bool:
        """Whether every trial of the study has ended (in this invocation or an earlier one)."""
        return self.done_before + len(self.ended) >= self.expected

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        spec = trial.config["trial"]
        config = TrainConfig.model_validate(spec["config"])
        if spec["group"] not in self._costs:
            self._costs[spec["group"]] = model_params(config)
        self.writer.start_trial(
            trial.trial_id, config, group=spec["group"], label=spec["label"], model=self._costs[spec["group"]]
        )
        self.started.add(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info) -> None:
        self.writer.log_metrics(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        result = trial.last_result or {}
        status = result.get(STATUS)
        status = status if status in TRAINER_END_STATUSES else Status.STOPPED
        responses = json.loads(result[LAYER_RESPONSES]) if LAYER_RESPONSES in result else None
        self.writer.end_trial(trial.trial_id, status, layer_responses=responses)
        self.ended[trial.trial_id] = status

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self.writer.end_trial(trial.trial_id, Status.FAILED, error=_error_text(trial))
        self.ended[trial.trial_id] = Status.FAILED

    def on_experiment_end(self, trials: list[Trial], **info) -> None:
        if self.resumed:  # a first invocation has no earlier runs, whatever state Tune leaves a trial in
            self.done_before = sum(t.trial_id not in self.started and t.status == Trial.TERMINATED for t in trials)


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

    Every :data:`PROGRESS_EVERY` seconds, with each running trial's epoch; and a line per trial that ends.
    """

    def __init__(self, *, metric: str, mode: str, total: int, restarts: int = 0, every: float = PROGRESS_EVERY):
        self.metric, self.mode, self.total, self.every = metric, mode, total, every
        self.restarts = restarts  # how many times Tune restarts a failed trial before it counts as failed
        self._start = time.monotonic()
        self._last = self._start

    def on_step_end(self, iteration: int, trials: list[Trial], **info) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            print(self.line(trials), flush=True)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        result = trial.last_result or {}
        status = result.get(STATUS) if result.get(STATUS) in TRAINER_END_STATUSES else "stopped early"
        value = result.get(self.metric)
        shown = f", {self.metric} {value:.4f}" if isinstance(value, float) and math.isfinite(value) else ""
        print(f"  {trial_name(trial)}: {status} at iteration {result.get('iteration', 0)}{shown}", flush=True)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        print(f"  {trial_name(trial)}: failed; the error is in {trial.error_file}", flush=True)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        failures = trial.run_metadata.num_failures
        print(f"  {trial_name(trial)}: {_failure(trial)}; it restarts from its last checkpoint "
              f"(restart {failures} of at most {self.restarts})", flush=True)

    def line(self, trials: list[Trial]) -> str:
        """The progress line for ``trials`` (those Tune has created so far)."""
        elapsed = time.strftime("%H:%M:%S", time.gmtime(time.monotonic() - self._start))
        done = sum(t.status in _ENDED for t in trials)
        running = [t for t in trials if t.status == Trial.RUNNING]
        parts = [f"[{elapsed}] {done}/{self.total} done, {len(running)} running, {self.total - done - len(running)} pending"]
        best = self._best(trials)
        if best is not None:
            parts.append(f"best {self.metric} {best[0]:.4f} ({trial_name(best[1])})")
        if running:
            epochs = (f"{trial_name(t)} ep {(t.last_result or {}).get('epoch', 0.0):.1f}" for t in running)
            parts.append("running: " + ", ".join(epochs))
        return " | ".join(parts)

    def _best(self, trials: list[Trial]) -> tuple[float, Trial] | None:
        """The best finite value of the metric among the trials' latest reports."""
        scored = [
            (value, trial)
            for trial in trials
            if isinstance(value := (trial.last_result or {}).get(self.metric), float) and math.isfinite(value)
        ]
        if not scored:
            return None
        pick = min if self.mode == "min" else max
        return pick(scored, key=lambda pair: pair[0])

