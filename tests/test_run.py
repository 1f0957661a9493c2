"""Studies through Ray Tune into MLflow, on CPU with tiny synthetic data (8-layer, width-8 nets, 16x16 images).

The end-to-end tests share one local Ray (``ray_session`` in conftest.py) and each writes its own SQLite
store and Ray Tune storage under ``tmp_path``. The first tests need no Ray: the writer, the sampler
and the adapter's objective, on their own.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from ablate.config import TrainConfig, flatten
from ablate.models import count_params
from ablate.search import run_study
from ablate.search import runner
from ablate.search.runner import EXIT_FAILED_TRIALS, EXIT_INTERRUPTED, EXIT_USAGE
from ablate.search.sampling import StudySearcher
from ablate.search.trainable import OBJECTIVE, objective
from ablate.study import load_study
from ablate.tracking import layout
from ablate.tracking.writer import ARTIFACT_ERROR, StudyWriter, run_params

TINY = {
    "data": {"name": "synthetic", "synthetic_shape": [3, 16, 16], "synthetic_train": 320, "synthetic_test": 64,
             "val_size": 64},
    "model": {"n": 1, "base_width": 8},
    "trainer": {"iterations": 20, "batch_size": 32, "eval_every": 10, "device": "cpu"},
}


def study_file(tmp_path: Path, name: str, **fields) -> Path:
    """A study file of tiny runs (two evaluations each); ``fields`` replace top-level keys."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "question": f"What does {name} show?", **TINY, **fields}))
    return path


def runs(uri: str, study: str, role: str) -> list:
    """The study's runs of one role (study: parents, trial: children), oldest first."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study)
    query = f"tags.`{layout.TAG_ROLE}` = '{role}'"
    return client.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time ASC"])


def artifact(uri: str, run, name: str, tmp_path: Path) -> str:
    local = MlflowClient(uri).download_artifacts(run.info.run_id, name, dst_path=str(tmp_path / run.info.run_id))
    return Path(local).read_text()


def steps(uri: str, run, metric: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, metric))


class Store:
    """One test's MLflow store and Ray Tune storage."""

    def __init__(self, tmp_path: Path):
        self.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        self.storage = tmp_path / "ray_results"

    def run(self, study, **kwargs) -> int:
        return run_study(study, tracking_uri=self.uri, storage_path=self.storage, **kwargs)


@pytest.fixture
def store(tmp_path, ray_session) -> Store:
    return Store(tmp_path)


# -- without Ray ---------------------------------------------------------------------------------------


def test_writer_reuses_a_trials_child_run_and_ends_open_runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = TrainConfig.model_validate(TINY)
    model = {layout.PARAM_MODEL_NAME: config.model.name}

    first = StudyWriter(uri)
    first.start_study("w", question="q?", metric="test_error", mode="min", study_yaml="name: w\n", overrides={})
    child = first.start_trial("abc_00000", config, group="g", label="resnet8-w8", model=model)
    first.log_metrics("abc_00000", {"iteration": 10, "test_error": 0.5, "status": "running", "trial_id": "x"})
    first.end_study("interrupted")  # a Ctrl-C with the trial still open

    parent, = runs(uri, "w", layout.ROLE_STUDY)
    run = MlflowClient(uri).get_run(child)
    assert (parent.info.status, parent.data.tags[layout.TAG_STATUS]) == ("KILLED", "interrupted")
    assert (run.info.status, run.data.tags[layout.TAG_STATUS]) == ("KILLED", "interrupted")
    assert set(run.data.metrics) == {"test_error"}  # the layout's metrics only, not Tune's bookkeeping

    second = StudyWriter(uri)  # --resume: a new process, a new parent run
    second.start_study("w", question="q?", metric="test_error", mode="min", study_yaml="name: w\n", overrides={})
    assert second.start_trial("abc_00000", config, group="g", label="resnet8-w8", model=model) == child
    assert MlflowClient(uri).get_run(child).info.status == "RUNNING"
    second.log_metrics("abc_00000", {"iteration": 10, "test_error": 0.5})  # resumed from an older checkpoint
    second.log_metrics("abc_00000", {"iteration": 20, "test_error": 0.25})
    second.end_trial("abc_00000", "finished")
    second.end_study("finished")

    assert len(runs(uri, "w", layout.ROLE_TRIAL)) == 1
    run = MlflowClient(uri).get_run(child)
    assert (run.info.status, run.data.tags[layout.TAG_STATUS]) == ("FINISHED", "finished")
    assert run.data.metrics == {"test_error": 0.25}  # the final value is the latest one, under one name
    assert steps(uri, run, "test_error") == [10, 20]  # each step once


def test_writer_tags_the_experiment_for_the_runs_view_and_describes_the_parent(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    writer = StudyWriter(uri)
    writer.start_study(
        "v", question="Does depth hurt plain nets?", metric="val_error", mode="min", study_yaml="name: v\n",
        overrides={"trainer.lr": 0.05}, outline={"search.method": "grid", "space.model.n": "{1, 5}"},
        compared=["model.n", "model.shortcut", "trainer.lr"], source="studies/v.yaml",
    )
    writer.end_study("finished")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("v")
    tags = experiment.tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"] == "Does depth hurt plain nets?"
    view = json.loads(tags["mlflow.sharedViewState.ablate"])
    assert view["orderByKey"] == "metrics.`val_error`" and view["orderByAsc"] is True
    assert view["chartsSearchFilter"] == "error"
    assert view["selectedColumns"] == [
        "params.`depth`", "params.`shortcut`", "params.`trainer.lr`", "params.`seed`",
        "metrics.`val_error`", "metrics.`train_error`", "metrics.`test_error`", "tags.`ablate.status`",
    ]
    assert writer.where_to_look().startswith(
        f"runs in MLflow: http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?"
        "workflowType=machine_learning&viewStateShareKey=ablate"
    )
    parent, = runs(uri, "v", layout.ROLE_STUDY)
    assert parent.data.tags["mlflow.note.content"].startswith("**Question:** Does depth hurt plain nets?")
    assert "ablate report --study v" in parent.data.tags["mlflow.note.content"]
    assert parent.data.tags["mlflow.source.name"] == "studies/v.yaml" and parent.data.tags["mlflow.user"]
    assert parent.data.params == {"search.method": "grid", "space.model.n": "{1, 5}", "set.trainer.lr": "0.05"}
    assert client.get_experiment("0").lifecycle_stage == "deleted"  # no empty "Default" in the experiment list


def test_trial_params_are_the_ones_that_matter_with_short_columns():
    config = TrainConfig.model_validate({"data": {"name": "fashion-mnist"}, "model": {"n": 5, "shortcut": "none"},
                                         "trainer": {"warmup": {"policy": "paper"}}, "seed": 3})
    params = run_params(config, {layout.PARAM_DEPTH: 32})
    assert not any(key.startswith("data.synthetic_") for key in params)  # real data
    assert "None" not in params.values() and "data.root" not in params and "trainer.epochs" not in params
    assert {k: params[k] for k in ("depth", "block", "shortcut", "warmup", "seed")} == {
        "depth": "32", "block": "basic", "shortcut": "none", "warmup": "paper", "seed": "3"}
    synthetic = run_params(TrainConfig.model_validate(TINY), {})
    assert synthetic["data.synthetic_shape"] == "[3, 16, 16]"


def test_objective_is_the_metric_or_the_worst_value():
    assert objective({"test_error": 0.25, "status": "finished"}, metric="test_error", mode="min") == 0.25
    assert objective({"train_loss": math.nan, "status": "diverged"}, metric="test_error", mode="min") == math.inf
    assert objective({"test_error": 0.25, "status": "diverged"}, metric="test_error", mode="max") == -math.inf
    assert objective({"val_error": math.nan}, metric="val_error", mode="min") == math.inf


def test_searcher_runs_each_kept_point_once_per_seed_and_never_an_excluded_one(tmp_path, capsys):
    path = study_file(
        tmp_path, "sampled", seeds=[0, 1],
        search={"method": "tpe", "num_samples": 3, "seed": 1},
        space={"trainer.lr": {"low": 0.01, "high": 0.2, "log": True}, "model.shortcut": ["A", "B", "C", "none"]},
        constraints={"exclude": [{"model.shortcut": ["C", "none"]}]},
    )
    study = load_study(path)
    searcher = StudySearcher(study, metric=OBJECTIVE, mode="min")

    suggested = [searcher.suggest(f"t{i}")["trial"] for i in range(study.num_trials)]
    assert searcher.suggest("one more") == "FINISHED"
    configs = [TrainConfig.model_validate(s["config"]) for s in suggested]
    assert {c.model.shortcut for c in configs} <= {"A", "B"}
    assert [c.seed for c in configs] == [0, 1] * 3  # replicates of a point one after another
    assert all(0.01 <= c.trainer.lr <= 0.2 for c in configs)
    for first, second in zip(suggested[::2], suggested[1::2]):
        assert first["group"] == second["group"] and first["config"]["trainer"] == second["config"]["trainer"]
    assert len({s["group"] for s in suggested}) == 3
    assert searcher.excluded > 0 and capsys.readouterr().out.count("excluded by constraints") == searcher.excluded

    for i, value in enumerate([0.2, 0.4, 0.5, 0.7, 0.1, math.inf]):
        searcher.on_trial_complete(f"t{i}", {OBJECTIVE: value})
    told = searcher.sources[0]._ot_study.trials  # noqa: SLF001  Optuna's own record of what it was told
    states = Counter(trial.state.name for trial in told)
    assert states == {"COMPLETE": 3, "PRUNED": searcher.excluded}
    assert [t.value for t in told if t.state.name == "COMPLETE"] == [pytest.approx(0.3), pytest.approx(0.6), math.inf]


def test_resume_with_nothing_to_resume_is_a_usage_error(tmp_path, capsys):
    study = load_study(study_file(tmp_path, "never_ran"))
    assert Store(tmp_path).run(study, resume=True) == EXIT_USAGE
    assert "nothing to resume" in capsys.readouterr().err


# -- through Ray Tune ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_grid_study_is_recorded_with_a_diverging_trial_beside_a_concurrent_one(store, tmp_path, capfd):
    path = study_file(tmp_path, "grid", space={"trainer.lr": [0.05, 1.0e20]}, max_concurrent=2)
    study = load_study(path, ["trainer.momentum=0.0", "trainer.weight_decay=0.0"])
    assert store.run(study) == 0

    parent, = runs(store.uri, "grid", layout.ROLE_STUDY)
    tags = parent.data.tags
    assert parent.info.status == "FINISHED" and tags[layout.TAG_STATUS] == "finished"
    assert (tags[layout.TAG_QUESTION], tags[layout.TAG_METRIC], tags[layout.TAG_MODE]) == (study.question, "test_error", "min")
    assert parent.data.params == {
        "study.file": str(path), "search.method": "grid", "seeds": "0", "trials": "2",
        "space.trainer.lr": "{0.05, 1e+20}", "set.trainer.momentum": "0.0", "set.trainer.weight_decay": "0.0",
    }
    assert yaml.safe_load(artifact(store.uri, parent, layout.ARTIFACT_STUDY, tmp_path))["trainer"]["momentum"] == 0.0

    children = runs(store.uri, "grid", layout.ROLE_TRIAL)
    expected = {trial.config.trainer.lr: trial for trial in study.trials()}
    assert len(children) == 2 and len({run.data.tags[layout.TAG_TRIAL] for run in children}) == 2
    for run in children:
        tags, params = run.data.tags, run.data.params
        trial = expected[float(params["trainer.lr"])]
        assert tags[layout.TAG_PARENT] == parent.info.run_id and tags[layout.TAG_ROLE] == layout.ROLE_TRIAL
        assert (tags[layout.TAG_GROUP], tags[layout.TAG_LABEL]) == (trial.group, trial.label)
        assert {f"ablate.version.{name}" for name in ("torch", "ray", "mlflow", "optuna", "ablate")} <= set(tags)
        assert all(params[key] == str(value) for key, value in flatten(trial.config).items() if value is not None)
        assert "None" not in params.values() and "data.root" not in params  # unset options are left out
        assert (params[layout.PARAM_MODEL_NAME], params[layout.PARAM_DEPTH]) == (trial.config.model.name, "8")
        assert (params["block"], params["shortcut"], params["warmup"], params["seed"]) == ("basic", "A", "none", "0")
        assert params[layout.PARAM_MODEL_PARAMS] == str(count_params(trial.config.model, in_channels=3, num_classes=10))
        assert int(params[layout.PARAM_MODEL_MACS]) > 0
        saved = TrainConfig.model_validate_json(artifact(store.uri, run, layout.ARTIFACT_CONFIG, tmp_path))
        assert saved == trial.config

    calm, wild = sorted(children, key=lambda run: float(run.data.params["trainer.lr"]))
    assert (calm.info.status, calm.data.tags[layout.TAG_STATUS]) == ("FINISHED", "finished")
    for metric in ("train_error", "test_error", "val_error", "lr", "grad_norm/stage1"):
        assert steps(store.uri, calm, metric) == [10, 20]
    assert not any(key.startswith("final/") for run in children for key in run.data.metrics)  # one name per metric
    responses = json.loads(artifact(store.uri, calm, layout.ARTIFACT_RESPONSES, tmp_path))
    assert len(responses["names"]) == len(responses["std"]) == 7  # stem + 2 per unit x 3 stages

    assert (wild.info.status, wild.data.tags[layout.TAG_STATUS]) == ("FINISHED", "diverged")
    assert not math.isfinite(wild.data.metrics["train_loss"])  # the last report's loss
    assert layout.ARTIFACT_RESPONSES not in {a.path for a in MlflowClient(store.uri).list_artifacts(wild.info.run_id)}

    # the two trials ran at once, and the driver alone wrote both
    assert calm.info.start_time < wild.info.end_time and wild.info.start_time < calm.info.end_time
    captured = capfd.readouterr()
    assert "database is locked" not in captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err


@pytest.mark.slow
def test_tpe_study_trains_kept_points_once_per_seed(store, tmp_path, capfd):
    path = study_file(
        tmp_path, "tpe", seeds=[0, 1], max_concurrent=2,
        search={"method": "tpe", "num_samples": 2, "seed": 0},
        space={"trainer.lr": {"low": 0.01, "high": 0.2, "log": True}, "model.shortcut": ["A", "B", "C", "none"]},
        constraints={"exclude": [{"model.shortcut": ["B", "C", "none"]}]},
    )
    assert store.run(load_study(path)) == 0

    children = runs(store.uri, "tpe", layout.ROLE_TRIAL)
    assert len(children) == 4 and all(run.data.tags[layout.TAG_STATUS] == "finished" for run in children)
    assert {run.data.params["model.shortcut"] for run in children} == {"A"}
    by_group: dict[str, list] = {}
    for run in children:
        by_group.setdefault(run.data.tags[layout.TAG_GROUP], []).append(run.data.params)
    assert len(by_group) == 2
    for replicates in by_group.values():
        assert sorted(p["seed"] for p in replicates) == ["0", "1"]
        assert len({p["trainer.lr"] for p in replicates}) == 1 and 0.01 <= float(replicates[0]["trainer.lr"]) <= 0.2
    assert "excluded by constraints" in capfd.readouterr().out


@pytest.mark.slow
def test_asha_stops_a_weak_trial_and_a_failing_trial_is_retried_then_recorded_failed(store, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "MAX_FAILURES", 1)  # one restart, to keep the test short
    path = study_file(
        tmp_path, "asha", space={"trainer.lr": [0.1, 0.05, 0.02]}, max_concurrent=1,
        metric={"name": "lr", "mode": "max"},  # known in advance: at every rung the lower lr is the weaker trial
        early_stopping={"grace_period": 10, "reduction_factor": 2},
        constraints={"set": [{"when": {"trainer.lr": 0.02}, "then": {"data.train_size": 8}}]},  # < 1 batch: fails
    )
    assert store.run(load_study(path, ["trainer.iterations=40"])) == EXIT_FAILED_TRIALS

    children = {float(run.data.params["trainer.lr"]): run for run in runs(store.uri, "asha", layout.ROLE_TRIAL)}
    assert sorted(children) == [0.02, 0.05, 0.1]  # the failing trial kept one child run through its restart
    strong, weak, broken = children[0.1], children[0.05], children[0.02]
    assert (strong.info.status, strong.data.tags[layout.TAG_STATUS]) == ("FINISHED", "finished")
    assert steps(store.uri, strong, "test_error") == [10, 20, 30, 40]
    assert (weak.info.status, weak.data.tags[layout.TAG_STATUS]) == ("FINISHED", "stopped")
    assert steps(store.uri, weak, "test_error") == [10]  # stopped at the first rung
    assert (broken.info.status, broken.data.tags[layout.TAG_STATUS]) == ("FAILED", "failed")
    error = artifact(store.uri, broken, ARTIFACT_ERROR, tmp_path)
    assert "ConfigError" in error and "fewer than one batch" in error  # the trainer refused the data


def _interrupt_when(condition, timeout: float = 120.0) -> None:
    """Send this process a SIGINT (a Ctrl-C) once ``condition()`` holds; give up silently after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            os.kill(os.getpid(), signal.SIGINT)
            return
        time.sleep(0.05)


def _reported_trials(experiment: Path) -> int:
    """Trials of a Ray Tune experiment that have reported at least once."""
    return sum(path.stat().st_size > 0 for path in experiment.glob("*/result.json"))


@pytest.mark.slow
def test_interrupted_study_resumes_without_rerunning_ended_trials(store, tmp_path):
    path = study_file(tmp_path, "resume", space={"model.shortcut": ["A", "B", "none"]}, max_concurrent=1)
    study = load_study(path, ["trainer.iterations=40"])  # four evaluations per trial
    experiment = store.storage / "resume"
    threading.Thread(target=_interrupt_when, args=(lambda: _reported_trials(experiment) >= 2,), daemon=True).start()
    assert store.run(study) == EXIT_INTERRUPTED

    parent, = runs(store.uri, "resume", layout.ROLE_STUDY)
    assert (parent.info.status, parent.data.tags[layout.TAG_STATUS]) == ("KILLED", "interrupted")
    before = {run.data.tags[layout.TAG_TRIAL]: run for run in runs(store.uri, "resume", layout.ROLE_TRIAL)}
    assert all(run.info.status != "RUNNING" for run in before.values())
    ended = {tid: run for tid, run in before.items() if run.data.tags[layout.TAG_STATUS] == "finished"}
    assert 1 <= len(ended) < 3

    assert store.run(study, resume=True) == 0
    parents = runs(store.uri, "resume", layout.ROLE_STUDY)
    assert [p.data.tags[layout.TAG_STATUS] for p in parents] == ["interrupted", "finished"]
    after = {run.data.tags[layout.TAG_TRIAL]: run for run in runs(store.uri, "resume", layout.ROLE_TRIAL)}
    assert len(after) == 3 and set(before) <= set(after)
    assert all(after[tid].info.run_id == run.info.run_id for tid, run in before.items())  # child runs reused
    for tid, run in ended.items():  # not trained again
        assert after[tid].info.end_time == run.info.end_time
    for run in after.values():
        assert (run.info.status, run.data.tags[layout.TAG_STATUS]) == ("FINISHED", "finished")
        # every evaluation logged once: the interrupted trial continued from its checkpoint
        assert steps(store.uri, run, "test_error") == [10, 20, 30, 40]


@pytest.mark.slow
@pytest.mark.parametrize(
    "crash,status,mlflow_status",
    [(KeyboardInterrupt, "interrupted", "KILLED"), (RuntimeError, "failed", "FAILED")],  # a 2nd Ctrl-C; a bug
)
def test_a_crash_of_the_driver_leaves_no_run_running(store, tmp_path, monkeypatch, crash, status, mlflow_status):
    log_metrics = StudyWriter.log_metrics

    def crash_after_logging(self, trial_id, metrics):
        log_metrics(self, trial_id, metrics)
        raise crash("simulated crash of the driver")

    monkeypatch.setattr(StudyWriter, "log_metrics", crash_after_logging)
    with pytest.raises(crash if crash is KeyboardInterrupt else Exception, match="simulated crash"):
        store.run(load_study(study_file(tmp_path, "crash")))

    parent, = runs(store.uri, "crash", layout.ROLE_STUDY)
    child, = runs(store.uri, "crash", layout.ROLE_TRIAL)
    for run in (parent, child):
        assert (run.info.status, run.data.tags[layout.TAG_STATUS]) == (mlflow_status, status)


def test_resources_the_cluster_cannot_meet(store, tmp_path, capsys):
    """A GPU share on a GPU-less cluster is dropped with a note; too many CPUs per trial is refused before
    anything is recorded (either would otherwise leave every trial pending forever)."""
    gpu = load_study(study_file(tmp_path, "gpu_share", resources={"cpu": 1, "gpu": 0.5}))
    assert runner._resources(gpu) == {"cpu": 1, "gpu": 0}
    assert "has none; running on CPU" in capsys.readouterr().out
    greedy = load_study(study_file(tmp_path, "greedy", resources={"cpu": 64, "gpu": 0}))
    with pytest.raises(ValueError, match=r"resources.cpu: each trial asks for 64 CPUs but the Ray cluster has 2"):
        store.run(greedy)
    assert not (tmp_path / "mlflow.db").exists() or MlflowClient(store.uri).get_experiment_by_name("greedy") is None
