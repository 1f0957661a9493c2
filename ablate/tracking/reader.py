"""Reading studies back from the MLflow tracking store, in the record layout of :mod:`ablate.tracking.layout`.

Everything comes through the MLflow client API, so a study recorded on another machine (a copied
``mlflow.db``, or a tracking server) reads the same as a local one, and so does a study that is
still running: its trials are returned with the values logged so far and marked as partial.

Operation order of :func:`load_study_records`: find the study's experiment (named after the study)
-> its parent runs (one per ``ablate run`` invocation) -> all their trial runs -> keep the latest
run per (configuration group, seed), so a resumed study's re-run trial replaces the interrupted one
-> per kept trial: parsed params, the latest value of each metric (a run's final value), the histories of
the error metrics and of the ``grad_norm/<part>`` family, layer responses.

Records written before the current names read the same: ``final/<metric>`` copies are skipped and a
``model.depth`` param reads as ``depth`` (:data:`~ablate.tracking.layout.LEGACY_PARAMS`).

Example::

    >>> from ablate.tracking.reader import list_studies, load_study_records
    >>> [row["name"] for row in list_studies("sqlite:///mlflow.db")]  # doctest: +SKIP
    ['shortcuts']
    >>> load_study_records("shortcuts", "sqlite:///mlflow.db").trials[0].value("test_error")  # doctest: +SKIP
    0.0751
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from ablate.errors import UserError
from ablate.metrics import ERROR_METRICS, GRAD_NORM_PREFIX, Status
from ablate.tracking import layout
from ablate.tracking.store import close_abandoned_runs, open_store

__all__ = [
    "History",
    "LayerResponses",
    "LesionRecord",
    "PARTIAL_STATUSES",
    "ParentRecord",
    "StudyRecords",
    "TrialRecord",
    "UnknownStudyError",
    "has_history",
    "list_studies",
    "load_study_records",
    "trial_artifact",
]

# Metrics whose whole history is read back (Fig. 6 curves), with every grad_norm/<part> (the gradient-norm
# figure and ratio); the others only as latest values. One history request per metric and trial.
HISTORY_METRICS = ERROR_METRICS


def has_history(metric: str) -> bool:
    """Whether the reader reads ``metric``'s whole history: :data:`HISTORY_METRICS` and ``grad_norm/<part>``."""
    return metric in HISTORY_METRICS or metric.startswith(GRAD_NORM_PREFIX)


# Trial statuses whose values are not final yet: still running, or stopped by Ctrl-C to go on after --resume.
PARTIAL_STATUSES = (Status.RUNNING, Status.INTERRUPTED)

# MLflow's own run status, for runs that lack the ablate.status tag (a writer that died before tagging).
_STATUS_FROM_MLFLOW = {
    "RUNNING": Status.RUNNING, "SCHEDULED": Status.RUNNING, "FINISHED": Status.FINISHED, "KILLED": Status.INTERRUPTED,
}

_PAGE = 1000  # runs per search request
_PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class UnknownStudyError(UserError):
    """No study of that name is recorded in the tracking store; the message lists the ones that are."""


@dataclass(frozen=True)
class History:
    """One metric over a run: ``values[i]`` was logged at training iteration ``steps[i]``."""

    steps: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class LayerResponses:
    """Fig. 7 data of one trial: the std of each 3x3 layer's response, in network order."""

    names: tuple[str, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class LesionRecord:
    """The lesion sweep of one trained net (``lesion.json``, written by ``ablate lesion``); test error fractions.

    ``unit_names``, ``stages`` (1-based), ``transitions`` (first unit of a stage after the first) and
    ``single`` (the error with that one unit deleted; None where it cannot be: a plain unit that changes
    shape) are per unit in network order; ``draws[i]`` holds the error of each random draw of ``k[i]``
    deleted units.
    """

    base_error: float
    unit_names: tuple[str, ...]
    stages: tuple[int, ...]
    transitions: tuple[bool, ...]
    single: tuple[float | None, ...]
    k: tuple[int, ...]
    draws: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class TrialRecord:
    """One trial run (a child run) as recorded."""

    run_id: str
    parent_run_id: str | None
    group: str  # configuration key without the seed: replicates share it
    label: str  # short human label, e.g. "resnet56-B"
    seed: int | None
    status: str  # running | finished | diverged | failed; the writer also ends runs as stopped (ASHA) | interrupted
    start_time: int  # ms since the epoch
    params: dict[str, Any]  # the run's params (see layout), values parsed back from strings; no None values
    tags: dict[str, str]
    metrics: dict[str, float]  # the latest value of every metric: the final one once the trial has ended
    history: dict[str, History]  # the metrics with has_history() that were logged
    layer_responses: LayerResponses | None  # None when the artifact is absent or unreadable
    lesion: LesionRecord | None = None  # None until `ablate lesion` has run on it (or when unreadable)

    def value(self, metric: str) -> float | None:
        """The latest value of ``metric``: final once the trial ended (at the stop for a stopped trial)."""
        return self.metrics.get(metric)

    @property
    def last_step(self) -> int | None:
        """The training iteration of the latest evaluation logged (where a stopped trial stopped)."""
        steps = [h.steps[-1] for h in self.history.values() if h.steps]
        return max(steps) if steps else None


@dataclass(frozen=True)
class ParentRecord:
    """One invocation of ``ablate run`` for the study (a parent run)."""

    run_id: str
    status: str  # running | finished | interrupted | failed
    start_time: int  # ms since the epoch
    tags: dict[str, str]


@dataclass(frozen=True)
class StudyRecords:
    """Everything recorded for one study, with replicates already resolved to the latest run per seed."""

    name: str
    tracking_uri: str
    experiment_id: str
    question: str | None
    metric: str | None
    mode: str | None
    study: dict[str, Any] | None  # the resolved study.yaml of the latest invocation that logged one
    parents: tuple[ParentRecord, ...]  # oldest first
    trials: tuple[TrialRecord, ...]  # latest run per (group, seed), ordered by group then seed
    superseded: int  # older runs of a (group, seed) that a later invocation re-ran

    @property
    def latest_parent(self) -> ParentRecord:
        return self.parents[-1]

    @property
    def status(self) -> str:
        """The status of the latest invocation: a finished resume completes an interrupted study."""
        return self.latest_parent.status

    @property
    def partial(self) -> bool:
        """True while the study runs, after it was interrupted, or while any kept trial has no final values yet."""
        return self.status in PARTIAL_STATUSES or any(t.status in PARTIAL_STATUSES for t in self.trials)


# -- public entry points ------------------------------------------------------------------------


def list_studies(tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """One row per recorded study: ``name``, ``parent_runs``, ``trials`` (count by status), ``last_start``, ``status``.

    ``trials`` counts the latest run per (group, seed), as the report does; ``last_start`` is the
    start of the latest invocation (a timezone-aware ``datetime``); rows are sorted by name. Runs left
    RUNNING by a driver that died are closed first, as interrupted
    (:func:`~ablate.tracking.store.close_abandoned_runs`).
    """
    uri = tracking_uri or layout.default_tracking_uri()
    if _missing_sqlite_file(uri):
        return []
    client = open_store(uri)
    rows = []
    for experiment, parents in _study_experiments(client):
        if close_abandoned_runs(client, experiment.experiment_id):
            parents = _search(client, experiment.experiment_id, layout.ROLE_STUDY)
        trial_runs = _search(client, experiment.experiment_id, layout.ROLE_TRIAL)
        kept, _ = _latest_per_replicate(trial_runs)
        latest = max(parents, key=lambda run: run.info.start_time)
        rows.append(
            {
                "name": experiment.name,
                "parent_runs": len(parents),
                "trials": dict(Counter(_status(run) for run in kept)),
                "last_start": _datetime(latest.info.start_time),
                "status": _status(latest),
            }
        )
    return sorted(rows, key=lambda row: row["name"])


def load_study_records(name: str, tracking_uri: str | None = None) -> StudyRecords:
    """All records of study ``name``; :class:`UnknownStudyError` (listing the recorded studies) if there is none."""
    uri = tracking_uri or layout.default_tracking_uri()
    missing = _missing_sqlite_file(uri)
    if missing:
        raise UnknownStudyError(
            f"no study named {name!r}: there is no tracking store at {missing} ({uri}); "
            "name the store that holds it with --tracking-uri or MLFLOW_TRACKING_URI"
        )
    client = open_store(uri)
    experiment = client.get_experiment_by_name(name)
    parent_runs = []
    if experiment is not None and experiment.lifecycle_stage == "active":
        parent_runs = sorted(_search(client, experiment.experiment_id, layout.ROLE_STUDY), key=_start_order)
    if not parent_runs:
        recorded = sorted(exp.name for exp, _ in _study_experiments(client))
        known = ", ".join(recorded) if recorded else "none yet (record one with `ablate run STUDY.yaml`)"
        raise UnknownStudyError(f"no study named {name!r} in the tracking store {uri}; recorded studies: {known}")

    kept, superseded = _latest_per_replicate(_search(client, experiment.experiment_id, layout.ROLE_TRIAL))
    with tempfile.TemporaryDirectory(prefix="ablate-read-") as scratch, _no_progress_bars():
        trials = [_trial_record(client, run, Path(scratch), uri) for run in kept]
        study = _study_yaml(parent_runs, Path(scratch), uri)
    tags = _merged_tags(parent_runs)
    return StudyRecords(
        name=name,
        tracking_uri=uri,
        experiment_id=experiment.experiment_id,
        question=tags.get(layout.TAG_QUESTION),
        metric=tags.get(layout.TAG_METRIC),
        mode=tags.get(layout.TAG_MODE),
        study=study,
        parents=tuple(_parent_record(run) for run in parent_runs),
        trials=tuple(sorted(trials, key=lambda t: (t.group, t.seed is None, t.seed or 0, t.run_id))),
        superseded=superseded,
    )


# -- the store ----------------------------------------------------------------------------------


def _missing_sqlite_file(uri: str) -> Path | None:
    """The database file a ``sqlite:///PATH`` URI names when it does not exist (MLflow would create an empty one)."""
    path = layout.sqlite_path(uri)
    return None if path is None or path.exists() else path


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence MLflow's per-download progress bars (one per trial otherwise) unless the user asked for them."""
    if _PROGRESS_BAR_ENV in os.environ:
        yield
        return
    os.environ[_PROGRESS_BAR_ENV] = "false"
    try:
        yield
    finally:
        os.environ.pop(_PROGRESS_BAR_ENV, None)


# -- searching ----------------------------------------------------------------------------------


def _search(client: MlflowClient, experiment_id: str, role: str) -> list[Run]:
    """Every active run of the experiment tagged with ``ablate.role = role``, all pages."""
    query = f"tags.`{layout.TAG_ROLE}` = '{role}'"
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], query, max_results=_PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _study_experiments(client: MlflowClient) -> Iterator[tuple[Any, list[Run]]]:
    """(experiment, its parent runs) for every active experiment holding at least one study parent run."""
    token = None
    while True:
        page = client.search_experiments(max_results=_PAGE, page_token=token)
        for experiment in page:
            parents = _search(client, experiment.experiment_id, layout.ROLE_STUDY)
            if parents:
                yield experiment, parents
        token = page.token
        if not token:
            return


def _start_order(run: Run) -> tuple[int, str]:
    return run.info.start_time or 0, run.info.run_id


def _latest_per_replicate(runs: list[Run]) -> tuple[list[Run], int]:
    """The latest-started run of each (group, seed), and how many older ones it replaced."""
    latest: dict[tuple[str, str], Run] = {}
    for run in sorted(runs, key=_start_order):
        group = run.data.tags.get(layout.TAG_GROUP, run.info.run_id)
        seed = run.data.params.get("seed", run.info.run_id)
        latest[(group, seed)] = run
    return list(latest.values()), len(runs) - len(latest)


# -- one run ------------------------------------------------------------------------------------


def _status(run: Run) -> str:
    """The ``ablate.status`` tag; MLflow's run status when the tag is missing."""
    return run.data.tags.get(layout.TAG_STATUS) or _STATUS_FROM_MLFLOW.get(run.info.status, Status.FAILED)


def _parse_param(text: str) -> Any:
    """MLflow stores params as ``str(value)``: ``"3"`` -> 3, ``"[0.5, 0.75]"`` -> [0.5, 0.75], ``"A"`` stays ``"A"``."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def _trial_record(client: MlflowClient, run: Run, scratch: Path, tracking_uri: str) -> TrialRecord:
    """Parsed params, metrics (final, latest, histories) and layer responses of one trial run."""
    params = {}
    for key, text in run.data.params.items():
        value = _parse_param(text)
        if value is not None:  # older records logged unset options as "None"
            params[layout.LEGACY_PARAMS.get(key, key)] = value
    metrics = {k: v for k, v in run.data.metrics.items() if not k.startswith(layout.LEGACY_FINAL_PREFIX)}
    history = {}
    for key in sorted(metrics):
        if has_history(key):
            points = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
            history[key] = History(tuple(m.step for m in points), tuple(m.value for m in points))
    responses = _read_artifact(run, layout.ARTIFACT_RESPONSES, scratch, tracking_uri)
    lesion = _read_artifact(run, layout.ARTIFACT_LESION, scratch, tracking_uri)
    tags = run.data.tags
    seed = params.get("seed")
    return TrialRecord(
        run_id=run.info.run_id,
        parent_run_id=tags.get(layout.TAG_PARENT),
        group=tags.get(layout.TAG_GROUP, run.info.run_id),
        label=tags.get(layout.TAG_LABEL) or str(params.get(layout.PARAM_MODEL_NAME, run.info.run_name)),
        seed=seed if isinstance(seed, int) else None,
        status=_status(run),
        start_time=run.info.start_time or 0,
        params=params,
        tags=dict(tags),
        metrics=metrics,
        history=history,
        layer_responses=None if responses is None else _layer_responses(responses),
        lesion=None if lesion is None else _lesion(lesion),
    )


def _layer_responses(text: str) -> LayerResponses | None:
    try:
        data = json.loads(text)
        return LayerResponses(tuple(str(n) for n in data["names"]), tuple(float(s) for s in data["std"]))
    except (ValueError, KeyError, TypeError):
        return None


def _lesion(text: str) -> LesionRecord | None:
    """``lesion.json`` (layout) as a record; None when it is not of that shape."""
    try:
        data = json.loads(text)
        units = data["units"]
        k = tuple(int(value) for value in data["k"])
        draws = tuple(tuple(float(e) for e in row) for row in data["draws"])
        if len(draws) != len(k):
            return None
        return LesionRecord(
            base_error=float(data["base_error"]),
            unit_names=tuple(str(u["name"]) for u in units),
            stages=tuple(int(u["stage"]) for u in units),
            transitions=tuple(bool(u["transition"]) for u in units),
            single=tuple(None if u["error"] is None else float(u["error"]) for u in units),
            k=k,
            draws=draws,
        )
    except (ValueError, KeyError, TypeError):
        return None


def trial_artifact(trial: TrialRecord, name: str, directory: str | os.PathLike, *, tracking_uri: str) -> Path | None:
    """Download the trial's top-level artifact ``name`` into ``directory``; its path, or None when it was not
    logged or cannot be reached (a store copied without its artifact folder)."""
    try:
        with _no_progress_bars():
            local = MlflowClient(tracking_uri).download_artifacts(trial.run_id, name, dst_path=str(directory))
    except (MlflowException, OSError):
        return None
    path = Path(local)
    return path if path.is_file() else None


def _read_artifact(run: Run, name: str, scratch: Path, tracking_uri: str) -> str | None:
    """The text of a top-level artifact, or None when it was not logged or cannot be reached.

    Unreachable happens for a store copied from another machine without its artifact folder; the
    records stay readable without it.
    """
    try:
        local = download_artifacts(
            artifact_uri=f"{run.info.artifact_uri}/{name}",
            dst_path=str(scratch / run.info.run_id),
            tracking_uri=tracking_uri,
        )
        return Path(local).read_text(encoding="utf-8")
    except (MlflowException, OSError):
        return None


def _study_yaml(parents: list[Run], scratch: Path, tracking_uri: str) -> dict[str, Any] | None:
    """The resolved study file of the latest invocation that logged one."""
    for run in reversed(parents):
        text = _read_artifact(run, layout.ARTIFACT_STUDY, scratch, tracking_uri)
        if text is not None:
            try:
                loaded = yaml.safe_load(text)
            except yaml.YAMLError:
                return None
            return loaded if isinstance(loaded, dict) else None
    return None


def _merged_tags(parents: list[Run]) -> dict[str, str]:
    """Parent tags, later invocations overriding earlier ones."""
    merged: dict[str, str] = {}
    for run in parents:
        merged.update(run.data.tags)
    return merged


def _parent_record(run: Run) -> ParentRecord:
    return ParentRecord(run.info.run_id, _status(run), run.info.start_time or 0, dict(run.data.tags))


def _datetime(ms: int | None) -> datetime:
    return datetime.fromtimestamp((ms or 0) / 1000, tz=timezone.utc)
