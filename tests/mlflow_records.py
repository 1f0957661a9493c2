"""Fake studies logged straight into MLflow in the record layout of :mod:`ablate.tracking.layout`.

For tests of the readers (and of the writer, which can compare what it logs with what this logs):
known numbers go in, so the tests can assert what comes out.

Example::

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    log_study(client, "demo", [Invocation((FakeTrial(n=3, seed=0), FakeTrial(n=9, seed=0)))],
              artifact_root=tmp_path / "artifacts")
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from ablate.config import DataConfig, ModelSpec, TrainConfig, flatten, with_overrides
from ablate.metrics import GRAD_NORM_PREFIX
from ablate.tracking import layout
from ablate.tracking.writer import run_params

START = 1_700_000_000_000  # ms; run start times count up from here, so "latest" is well defined
ITERATIONS_PER_EPOCH = 100
# Exact counts for basic blocks, option A (docs/REFERENCE.md); other shapes get a made-up, distinct number.
PAPER_PARAMS = {3: 269_722, 5: 464_154, 7: 658_586, 9: 853_018, 18: 1_727_962}
PROJECTION_PARAMS = {"B": 1_000, "C": 3_000}  # made up: projections add parameters
MLFLOW_END_STATUS = layout.MLFLOW_STATUS  # runs end as the layout contract says


@functools.cache
def _empty_store() -> Path:
    """An SQLite file with MLflow's tables, created once per test process (creating one costs seconds)."""
    folder = Path(tempfile.mkdtemp(prefix="ablate-mlflow-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def new_tracking_uri(directory: Path) -> str:
    """A fresh, empty tracking store ``directory/mlflow.db``; its ``sqlite:///`` URI."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_empty_store(), directory / "mlflow.db")
    return f"sqlite:///{directory / 'mlflow.db'}"


@dataclass(frozen=True)
class FakeTrial:
    """One trial and the numbers it should record (errors as fractions)."""

    n: int = 3
    shortcut: str = "A"
    block: str = "basic"
    seed: int = 0
    status: str = "finished"  # running | interrupted | stopped | diverged: half the epochs; failed: none
    train_error: float = 0.10  # final values; the per-epoch curves fall linearly from 0.9 to them
    val_error: float | None = 0.12  # None: no validation split
    test_error: float = 0.12
    epochs: int = 4
    responses: tuple[float, ...] | None = (1.0, 0.8, 0.6)  # layer_responses.json std; None: no artifact
    # grad_norm/<part> at every logged epoch: part -> one value (the same at each epoch) or one per epoch
    grad_norms: tuple[tuple[str, float | tuple[float, ...]], ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()  # further config fields, e.g. (("trainer.warmup.policy", "paper"),)
    legacy: bool = False  # the layout before 2026-11: every field as a param ("None" too), model.depth, final/<metric>
    name: str = ""  # group and label; default: the model's name (a sampled point needs its own)

    @property
    def config(self) -> TrainConfig:
        model = ModelSpec(n=self.n, shortcut=self.shortcut, block=self.block)
        config = TrainConfig(model=model, data=DataConfig(name="synthetic"), seed=self.seed)
        return with_overrides(config, dict(self.overrides))

    @property
    def group(self) -> str:
        return self.name or self.config.model.name


@dataclass(frozen=True)
class Invocation:
    """One `ablate run` invocation: a parent run and its trials."""

    trials: Sequence[FakeTrial]
    status: str = "finished"  # running | finished | interrupted | failed
    study_yaml: dict = field(default_factory=dict)  # logged as study.yaml when not empty


def _curve(final: float, epochs: int) -> list[float]:
    """Linear from 0.9 at the first epoch to ``final`` at the last."""
    if epochs == 1:
        return [final]
    return [0.9 + (final - 0.9) * e / (epochs - 1) for e in range(epochs)]


def _log_trial(
    client: MlflowClient, experiment_id: str, study: str, parent_id: str, trial: FakeTrial, start: int
) -> str:
    config = trial.config
    count = PAPER_PARAMS.get(config.model.n, 10_000 * config.model.n) + PROJECTION_PARAMS.get(trial.shortcut, 0)
    model = {layout.PARAM_MODEL_NAME: config.model.name, layout.PARAM_MODEL_PARAMS: count,
             layout.PARAM_MODEL_MACS: 150 * count}
    if trial.legacy:
        params = {k: str(v) for k, v in {**flatten(config), **model, "model.depth": config.model.depth}.items()}
    else:
        params = run_params(config, {**model, layout.PARAM_DEPTH: config.model.depth})
    tags = {
        layout.TAG_STUDY: study,
        layout.TAG_ROLE: layout.ROLE_TRIAL,
        layout.TAG_STATUS: trial.status,
        layout.TAG_GROUP: trial.group,
        layout.TAG_LABEL: trial.group,
        layout.TAG_TRIAL: f"trial_{start}",
        layout.TAG_PARENT: parent_id,
    }
    run = client.create_run(experiment_id, start_time=start, tags=tags, run_name=f"{config.model.name}-s{trial.seed}")
    run_id = run.info.run_id

    metrics = []
    finals = {"train_error": trial.train_error, "test_error": trial.test_error}
    if trial.val_error is not None:
        finals["val_error"] = trial.val_error
    logged_epochs = {"finished": trial.epochs, "failed": 0}.get(trial.status, trial.epochs // 2)
    for key, final in finals.items():
        for epoch, value in enumerate(_curve(final, trial.epochs)[:logged_epochs]):
            metrics.append(Metric(key, value, start + epoch, (epoch + 1) * ITERATIONS_PER_EPOCH))
    for part, values in trial.grad_norms:
        per_epoch = values if isinstance(values, tuple) else (values,) * trial.epochs
        for epoch, value in enumerate(per_epoch[:logged_epochs]):
            metrics.append(Metric(GRAD_NORM_PREFIX + part, value, start + epoch, (epoch + 1) * ITERATIONS_PER_EPOCH))
    if trial.status == "finished" and trial.legacy:  # the final values again, at step 0 (where a bug once put them)
        metrics += [Metric(layout.LEGACY_FINAL_PREFIX + k, v, start + trial.epochs, 0) for k, v in finals.items()]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    if trial.status == "finished" and trial.responses is not None:
        names = [f"layer{i}" for i in range(len(trial.responses))]
        client.log_text(run_id, json.dumps({"names": names, "std": list(trial.responses)}), layout.ARTIFACT_RESPONSES)
    if trial.status != "running":
        client.set_terminated(run_id, MLFLOW_END_STATUS[trial.status], end_time=start + trial.epochs + 1)
    return run_id


def log_study(
    client: MlflowClient,
    name: str,
    invocations: Sequence[Invocation],
    *,
    artifact_root: Path,
    question: str = "Does it help?",
    metric: str = "test_error",
    mode: str = "min",
) -> list[str]:
    """Log ``invocations`` of study ``name`` (one parent run each, trials nested); returns the parent run ids."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = client.create_experiment(name, artifact_location=(artifact_root / name).as_uri())
    else:
        experiment_id = experiment.experiment_id
    parents = []
    for index, invocation in enumerate(invocations):
        start = START + 1_000_000 * index
        tags = {
            layout.TAG_STUDY: name,
            layout.TAG_ROLE: layout.ROLE_STUDY,
            layout.TAG_STATUS: invocation.status,
            layout.TAG_QUESTION: question,
            layout.TAG_METRIC: metric,
            layout.TAG_MODE: mode,
        }
        parent = client.create_run(experiment_id, start_time=start, tags=tags, run_name=f"{name}-{index}")
        parent_id = parent.info.run_id
        if invocation.study_yaml:
            client.log_text(parent_id, yaml.safe_dump(invocation.study_yaml), layout.ARTIFACT_STUDY)
        for offset, trial in enumerate(invocation.trials, start=1):
            _log_trial(client, experiment_id, name, parent_id, trial, start + 100 * offset)
        if invocation.status != "running":
            client.set_terminated(parent_id, MLFLOW_END_STATUS[invocation.status])
        parents.append(parent_id)
    return parents


def replicates(base: FakeTrial, *, train: Sequence[float], test: Sequence[float], **fields) -> list[FakeTrial]:
    """One trial per seed 0, 1, ... with the given final training and test errors."""
    return [
        replace(base, seed=seed, train_error=tr, test_error=te, **fields)
        for seed, (tr, te) in enumerate(zip(train, test, strict=True))
    ]
