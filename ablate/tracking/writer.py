"""The driver-side MLflow writer: the one process that records a study, in the layout of :mod:`.layout`.

Only the process that drives Ray Tune writes (through the callbacks of :mod:`ablate.search`), so a
SQLite store never sees two writers at once ("database is locked") however many trials run.

Operation order of one invocation of ``ablate run``:
:meth:`StudyWriter.start_study` (the study's experiment, created on first use and tagged for ``mlflow
ui`` (:mod:`.ui`); a parent run with its tags, description, ``study.yaml`` and the study's outline and
overrides as params) -> per trial :meth:`~StudyWriter.start_trial` (the trial's child run: reused when
the trial id already has one, as after ``--resume``; else created with params, tags and
``config.json``) -> :meth:`~StudyWriter.log_metrics` at every report (step = training iteration) ->
:meth:`~StudyWriter.end_trial` (``layer_responses.json``, status) -> for a finished trial
:meth:`~StudyWriter.log_weights` (``weights.pt``, once its last checkpoint is in) -> :meth:`~StudyWriter.end_study`,
which also ends every child run still open, so that a crash or a Ctrl-C leaves no run marked RUNNING.
Later, ``ablate report`` writes the study's answer onto the parent run (:func:`record_answer`).

Example::

    >>> writer = StudyWriter("sqlite:///mlflow.db")                       # doctest: +SKIP
    >>> writer.start_study("demo", question="Does it help?", metric="test_error", mode="min",
    ...                    study_yaml="name: demo\\n", overrides={})     # doctest: +SKIP
    >>> writer.start_trial("a1b2c_00000", config, group="resnet20-3f2a9c1d", label="resnet20",
    ...                    model={"model.params": 272474})                # doctest: +SKIP
"""

from __future__ import annotations

import getpass
import json
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

from ablate.config import TrainConfig, flatten
from ablate.metrics import EVAL_METRICS, GRAD_NORM_PREFIX, ITERATION, LAYER_RESPONSES, STATUS, Status
from ablate.paths import project_root
from ablate.tracking import layout, ui
from ablate.tracking.store import close_abandoned_runs, driver_id, open_store

__all__ = [
    "RECORDED_OTHERWISE",
    "StudyWriter",
    "metric_key",
    "record_answer",
    "record_lesion",
    "reported_metrics",
    "run_params",
    "study_note",
]

# Keys of a trainer's report that are recorded, but not as metrics: the step, the status tag, an artifact.
# Every other key of a report is a metric (reported_metrics) or is dropped; tests/test_metrics.py checks
# that the trainer reports no key that would be dropped.
RECORDED_OTHERWISE = {ITERATION: "the step", STATUS: layout.TAG_STATUS, LAYER_RESPONSES: layout.ARTIFACT_RESPONSES}
TAG_GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own tag: the UI shows it
TAG_VERSION_PREFIX = "ablate.version."  # ablate.version.torch, ... on every child run
VERSIONED_PACKAGES = ("torch", "ray", "mlflow", "optuna", "ablate")
ARTIFACT_ERROR = "error.txt"  # child of a failed trial: the error as Ray Tune recorded it
ARTIFACT_DIR = "mlartifacts"  # beside a SQLite store: where its experiments keep their artifacts
DEFAULT_EXPERIMENT = "0"  # MLflow's "Default", created with every store
_BATCH = 1000  # MLflow's limit on metrics per log_batch request (params: 100)
_PARAM_BATCH = 100


def run_params(config: TrainConfig, model: Mapping[str, Any]) -> dict[str, str]:
    """A trial's params: the config fields that mean something for it, ``model``, and the short copies.

    Left out: ``None`` values (an unset option) and the ``data.synthetic_*`` fields unless the data set
    is synthetic; every field is still in the artifact ``config.json``.
    """
    flat = flatten(config)
    synthetic = config.data.name == "synthetic"
    kept = {
        key: value
        for key, value in flat.items()
        if value is not None and (synthetic or not key.startswith("data.synthetic_"))
    }
    short = {name: flat[key] for name, key in layout.SHORT_PARAMS.items()}
    return {key: str(value) for key, value in {**kept, **model, **short}.items()}


def study_note(question: str, answer: str | None = None, *, study: str | None = None) -> str:
    """The parent run's description (Markdown): the question, and the report's answer once there is one."""
    if answer is None:
        answer = f"not yet: run `ablate report --study {study}` when the trials have run."
    return f"**Question:** {question}\n\n**Answer:** {answer}"


def metric_key(text: str) -> str:
    """``text`` with the characters MLflow refuses in metric names (anything but letters, digits, ``_ - . / : ``
    and spaces) replaced by ``_``: ``"resnet8 lr=0.1"`` -> ``"resnet8 lr_0.1"``."""
    return re.sub(r"[^\w.\-/: ]", "_", text)


def record_answer(
    tracking_uri: str, run_id: str, *, note: str, metrics: Mapping[str, float], step: int = 0
) -> None:
    """Write a report's answer onto the study's parent run: ``note`` as its description, ``metrics`` logged.

    Metric names go through :func:`metric_key`; a later report logs the same names again (MLflow
    shows the latest value).
    """
    client = MlflowClient(tracking_uri)
    client.set_tag(run_id, MLFLOW_RUN_NOTE, note)
    now = int(time.time() * 1000)
    batch = [Metric(metric_key(key), float(value), now, step) for key, value in metrics.items()]
    for start in range(0, len(batch), _BATCH):
        client.log_batch(run_id, metrics=batch[start:start + _BATCH])


def record_lesion(tracking_uri: str, run_id: str, *, lesion: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    """Write a trial's lesion sweep onto its (ended) child run: ``lesion`` as ``lesion.json``, ``metrics`` at
    step 0 (:data:`~.layout.METRIC_LESION_BASE`, ...). A later sweep replaces the file; MLflow shows its metrics."""
    client = MlflowClient(tracking_uri)
    client.log_text(run_id, json.dumps(dict(lesion)), layout.ARTIFACT_LESION)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()])


def reported_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a report that the layout records: :data:`ablate.metrics.EVAL_METRICS` and ``grad_norm/*``.

    Non-finite values are kept: MLflow stores NaN as NaN and clamps infinities to the largest float,
    so a diverged trial's last loss reads back as it was.
    """
    return {
        key: float(value)
        for key, value in metrics.items()
        if (key in EVAL_METRICS or key.startswith(GRAD_NORM_PREFIX))
        and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


class StudyWriter:
    """Writes one invocation of a study: a parent run and one nested child run per trial.

    Keyword-only arguments after the first; trial ids are Ray Tune's (stable across ``--resume``).
    """

    def __init__(self, tracking_uri: str | None = None):
        self.tracking_uri = tracking_uri or layout.default_tracking_uri()
        self.client: MlflowClient = open_store(self.tracking_uri)  # TrackingError when it cannot be used
        self.study: str | None = None
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self._open: dict[str, str] = {}  # trial id -> child run id, for runs opened here and not ended
        self._runs: dict[str, str] = {}  # trial id -> child run id, for every run opened here (ended ones too)
        self._last_step: dict[str, int] = {}  # trial id -> last step logged
        self._provenance: dict[str, str] | None = None
        self.abandoned: list[str] = []  # parent runs of earlier invocations, left RUNNING by a dead driver, closed
        self.source: str | None = None  # the study file, shown as the runs' source

    # -- the study ------------------------------------------------------------------------------------

    def start_study(
        self,
        name: str,
        *,
        question: str,
        metric: str,
        mode: str,
        study_yaml: str,
        overrides: Mapping[str, Any],
        outline: Mapping[str, Any] | None = None,
        compared: Sequence[str] = (),
        source: str | None = None,
    ) -> str:
        """Open the parent run of this invocation; returns its run id.

        Runs that an earlier invocation left RUNNING when its driver died are closed first (see
        :func:`~ablate.tracking.store.close_abandoned_runs`); their ids are kept in ``abandoned``.
        ``outline``: the study's outline as params (file, method, seeds, trials, ``space.<key>``);
        ``overrides`` are logged as ``set.<key>``; ``compared``: the study's axis keys, the runs
        table's first columns (:func:`.ui.experiment_tags`); ``source``: the study file.
        """
        self.study = name
        self.source = source
        self.experiment_id = self._experiment(name)
        self.abandoned = close_abandoned_runs(self.client, self.experiment_id)
        for key, value in ui.experiment_tags(question=question, compared=compared, metric=metric, mode=mode).items():
            self.client.set_experiment_tag(self.experiment_id, key, value)
        tags = {
            layout.TAG_STUDY: name,
            layout.TAG_ROLE: layout.ROLE_STUDY,
            layout.TAG_STATUS: Status.RUNNING,
            layout.TAG_QUESTION: question,
            layout.TAG_METRIC: metric,
            layout.TAG_MODE: mode,
            layout.TAG_DRIVER: driver_id(),
            MLFLOW_RUN_NOTE: study_note(question, study=name),
            **self._provenance_tags(),
        }
        run_name = f"{name} {time.strftime('%Y-%m-%d %H:%M')}"
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name)
        self.parent_id = run.info.run_id
        self.client.log_text(self.parent_id, study_yaml, layout.ARTIFACT_STUDY)
        values = {**(outline or {}), **{f"set.{key}": value for key, value in overrides.items()}}
        params = [Param(key, str(value)) for key, value in values.items()]
        for start in range(0, len(params), _PARAM_BATCH):
            self.client.log_batch(self.parent_id, params=params[start:start + _PARAM_BATCH])
        return self.parent_id

    def where_to_look(self) -> str:
        """The terminal line with the study's runs in ``mlflow ui`` (:func:`.ui.where_to_look`); after start_study."""
        return ui.where_to_look(self.experiment_id, self.tracking_uri)

    def end_study(self, status: str) -> None:
        """End the parent run as ``status`` (finished | interrupted | failed) and every child run still open.

        Open children end as ``interrupted`` (MLflow KILLED), or ``failed`` when the study failed.
        """
        for trial_id in list(self._open):
            self.end_trial(trial_id, Status.FAILED if status == Status.FAILED else Status.INTERRUPTED)
        if self.parent_id is not None:
            self.client.set_tag(self.parent_id, layout.TAG_STATUS, status)
            self.client.set_terminated(self.parent_id, layout.MLFLOW_STATUS[status])

    # -- trials -----------------------------------------------------------------------------------------

    def start_trial(
        self, trial_id: str, config: TrainConfig, *, group: str, label: str, model: Mapping[str, Any],
        design_space: str | None = None,
    ) -> str:
        """The trial's child run, marked running: the one it already has (by trial id), else a new one.

        ``model``: the params added beside the flattened config (``model.name``, ``depth``,
        ``model.params``, ``model.macs``, ``model.train_flops``); ``design_space``: the tag
        :data:`~ablate.tracking.layout.TAG_DESIGN_SPACE`, when given. A reused run keeps its params and history.
        """
        if trial_id in self._open:  # restarted after a failure, in this invocation
            return self._open[trial_id]
        run_id = self._existing_trial(trial_id)
        if run_id is None:
            run_id = self._new_trial(trial_id, config, group=group, label=label, model=model, design_space=design_space)
        else:
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, layout.TAG_STATUS, Status.RUNNING)
            self.client.set_tag(run_id, layout.TAG_DRIVER, driver_id())
            self._last_step[trial_id] = self._logged_up_to(run_id)
        self._open[trial_id] = run_id
        self._runs[trial_id] = run_id
        return run_id

    def log_metrics(self, trial_id: str, metrics: Mapping[str, Any]) -> None:
        """Log a report's metrics (:func:`reported_metrics`) at ``step = metrics["iteration"]``.

        A report at a step already logged is skipped: Ray Tune registers a trial's checkpoint a moment
        after passing on its report, so a trial interrupted in between continues from the checkpoint
        before and reports that step again (with the same numbers: the trainer resumes exactly).
        """
        step = int(metrics[ITERATION])
        values = reported_metrics(metrics)
        if values and step > self._last_step.get(trial_id, -1):
            self._log(self._open[trial_id], values, step=step)
            self._last_step[trial_id] = step

    def end_trial(
        self,
        trial_id: str,
        status: str,
        *,
        layer_responses: Mapping[str, list] | None = None,
        error: str | None = None,
    ) -> None:
        """End the trial's child run as ``status`` (finished | diverged | stopped | interrupted | failed).

        The run's final values are the last ones :meth:`log_metrics` logged. ``layer_responses``:
        logged as ``layer_responses.json``; ``error``: the failure as text, logged as ``error.txt``.
        """
        run_id = self._open.pop(trial_id)
        if layer_responses is not None:
            self.client.log_text(run_id, json.dumps(dict(layer_responses)), layout.ARTIFACT_RESPONSES)
        if error:
            self.client.log_text(run_id, error, ARTIFACT_ERROR)
        self.client.set_tag(run_id, layout.TAG_STATUS, status)
        self.client.set_terminated(run_id, layout.MLFLOW_STATUS[status])

    def log_weights(self, trial_id: str, path: str | Path) -> None:
        """Log the file ``path`` (named :data:`~.layout.ARTIFACT_WEIGHTS`) as the trial's final weights.

        The run may have ended already: Ray Tune registers a trial's last checkpoint after its last report.
        """
        path = Path(path)
        if path.name != layout.ARTIFACT_WEIGHTS:
            raise ValueError(f"weights are logged as {layout.ARTIFACT_WEIGHTS}, not {path.name}")
        self.client.log_artifact(self._runs[trial_id], str(path))

    @property
    def open_trials(self) -> list[str]:
        """Trial ids whose child runs this writer opened and has not ended."""
        return list(self._open)

    # -- helpers ------------------------------------------------------------------------------------------

    def _experiment(self, name: str) -> str:
        """The study's experiment id: created on first use (artifacts beside a SQLite store), restored if deleted."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            self._retire_empty_default()
            return self.client.create_experiment(name, artifact_location=_artifact_location(self.tracking_uri, name))
        if experiment.lifecycle_stage != "active":
            self.client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def _retire_empty_default(self) -> None:
        """Delete MLflow's "Default" experiment when it holds no run (``mlflow experiments restore
        --experiment-id 0`` brings it back): created with every store, with an artifact folder relative to
        wherever the store was first opened, it would be the first, empty, entry of ``mlflow ui``."""
        try:
            default = self.client.get_experiment(DEFAULT_EXPERIMENT)
        except MlflowException:
            return
        if default.lifecycle_stage != "active" or self.client.search_runs([DEFAULT_EXPERIMENT], max_results=1):
            return
        self.client.delete_experiment(DEFAULT_EXPERIMENT)

    def _existing_trial(self, trial_id: str) -> str | None:
        query = f"tags.`{layout.TAG_ROLE}` = '{layout.ROLE_TRIAL}' and tags.`{layout.TAG_TRIAL}` = '{trial_id}'"
        runs = self.client.search_runs([self.experiment_id], query, max_results=1)
        return runs[0].info.run_id if runs else None

    def _logged_up_to(self, run_id: str) -> int:
        """The last step at which the run logged a per-evaluation metric; -1 when none."""
        keys = [k for k in self.client.get_run(run_id).data.metrics if not k.startswith(layout.LEGACY_FINAL_PREFIX)]
        return max((m.step for key in keys for m in self.client.get_metric_history(run_id, key)), default=-1)

    def _new_trial(
        self, trial_id: str, config: TrainConfig, *, group: str, label: str, model: Mapping[str, Any],
        design_space: str | None,
    ) -> str:
        tags = {
            layout.TAG_STUDY: self.study,
            layout.TAG_ROLE: layout.ROLE_TRIAL,
            layout.TAG_STATUS: Status.RUNNING,
            layout.TAG_GROUP: group,
            layout.TAG_LABEL: label,
            layout.TAG_TRIAL: trial_id,
            layout.TAG_PARENT: self.parent_id,
            layout.TAG_DRIVER: driver_id(),
            **self._provenance_tags(),
            **({layout.TAG_DESIGN_SPACE: design_space} if design_space is not None else {}),
        }
        run_id = self.client.create_run(
            self.experiment_id, tags=tags, run_name=f"{label} seed {config.seed}"
        ).info.run_id
        params = [Param(key, value) for key, value in run_params(config, model).items()]
        for start in range(0, len(params), _PARAM_BATCH):
            self.client.log_batch(run_id, params=params[start:start + _PARAM_BATCH])
        self.client.log_text(run_id, config.model_dump_json(indent=2), layout.ARTIFACT_CONFIG)
        return run_id

    def _log(self, run_id: str, values: Mapping[str, float], *, step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        for start in range(0, len(metrics), _BATCH):
            self.client.log_batch(run_id, metrics=metrics[start:start + _BATCH])

    def _provenance_tags(self) -> dict[str, str]:
        """User, source (the study file), the git commit of the project (when it is a checkout) and the
        versions of the libraries; worked out once."""
        if self._provenance is None:
            tags = {MLFLOW_USER: _user(), MLFLOW_SOURCE_TYPE: "LOCAL"}
            if self.source:
                tags[MLFLOW_SOURCE_NAME] = self.source
            for package in VERSIONED_PACKAGES:
                try:
                    tags[TAG_VERSION_PREFIX + package] = metadata.version(package)
                except metadata.PackageNotFoundError:
                    continue
            commit = _git_commit(project_root())
            if commit:
                tags[TAG_GIT_COMMIT] = commit
            self._provenance = tags
        return self._provenance


def _artifact_location(tracking_uri: str, name: str) -> str | None:
    """``<folder of the .db>/mlartifacts/<name>`` for a SQLite store; None (the server's choice) otherwise.

    MLflow's own default for a SQLite store is ``./mlruns`` relative to the current directory, which
    would scatter a study's artifacts over wherever ``ablate`` happened to be started.
    """
    database = layout.sqlite_path(tracking_uri)
    if database is None:
        return None
    return (database.resolve().parent / ARTIFACT_DIR / name).as_uri()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return "unknown"


def _git_commit(root: Path) -> str | None:
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None

