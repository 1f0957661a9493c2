"""Reading studies back from MLflow: listing, replicate resolution across invocations, parsed records, errors."""

from __future__ import annotations

import shutil

import pytest
from mlflow import MlflowClient
from mlflow_records import START, FakeTrial, Invocation, log_study, new_tracking_uri, replicates

from ablate.tracking.reader import UnknownStudyError, list_studies, load_study_records

STUDY_YAML = {"name": "resumed", "grid": {"model.shortcut": ["none", "A"]}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """"resumed" (interrupted, then finished by a second invocation), "live" (running), "moved" (no artifacts)."""
    root = tmp_path_factory.mktemp("reader")
    uri = new_tracking_uri(root)
    client = MlflowClient(uri)
    first = Invocation(
        [
            *replicates(FakeTrial(n=3, shortcut="none"), train=[0.10, 0.12], test=[0.13, 0.15]),
            FakeTrial(n=3, seed=0, train_error=0.05, test_error=0.08),
            FakeTrial(n=3, seed=1, status="running", train_error=0.30, test_error=0.33),
        ],
        status="interrupted",
    )
    second = Invocation([FakeTrial(n=3, seed=1, train_error=0.06, test_error=0.09)], study_yaml=STUDY_YAML)
    parents = log_study(
        client, "resumed", [first, second], artifact_root=root / "artifacts", question="Do shortcuts help?"
    )
    live = Invocation(
        [
            FakeTrial(n=3, shortcut="none", seed=0),
            FakeTrial(n=9, shortcut="none", seed=0, status="running", epochs=6),
            FakeTrial(n=9, shortcut="none", seed=1, status="failed"),
        ],
        status="running",
    )
    log_study(client, "live", [live], artifact_root=root / "artifacts", metric="val_error")
    # recorded elsewhere: the database came along, its artifact folder did not
    log_study(client, "moved", [Invocation([FakeTrial()], study_yaml=STUDY_YAML)], artifact_root=root / "elsewhere")
    shutil.rmtree(root / "elsewhere")
    # recorded by an older ablate: final/<metric> copies, model.depth, "None" params
    old = [FakeTrial(n=3, legacy=True, test_error=0.11), FakeTrial(n=3, seed=1, legacy=True, status="stopped")]
    log_study(client, "old", [Invocation(old)], artifact_root=root / "artifacts")
    return {"uri": uri, "parents": parents, "root": root}


def test_list_studies_counts_latest_trials_by_status(store):
    rows = list_studies(store["uri"])
    assert [row["name"] for row in rows] == ["live", "moved", "old", "resumed"]
    live, _, _, resumed = rows
    assert resumed["parent_runs"] == 2
    assert resumed["trials"] == {"finished": 4}  # the interrupted seed-1 run was replaced by the re-run
    assert resumed["status"] == "finished"
    assert resumed["last_start"].timestamp() * 1000 == START + 1_000_000  # the second invocation
    assert live["trials"] == {"finished": 1, "running": 1, "failed": 1}
    assert live["status"] == "running"


def test_resumed_study_keeps_the_latest_run_per_group_and_seed(store):
    records = load_study_records("resumed", store["uri"])
    assert (records.question, records.metric, records.mode) == ("Do shortcuts help?", "test_error", "min")
    assert records.study == STUDY_YAML
    assert [p.status for p in records.parents] == ["interrupted", "finished"]
    assert records.status == "finished" and not records.partial
    assert records.superseded == 1
    replicates_kept = [(t.label, t.seed) for t in records.trials]
    assert replicates_kept == [("plain20", 0), ("plain20", 1), ("resnet20", 0), ("resnet20", 1)]
    rerun = records.trials[3]
    assert rerun.status == "finished"
    assert rerun.value("test_error") == pytest.approx(0.09)
    assert rerun.parent_run_id == store["parents"][1]


def test_trial_record_holds_parsed_params_metrics_histories_and_responses(store):
    trial = load_study_records("resumed", store["uri"]).trials[0]
    assert trial.group == "plain20" and trial.status == "finished"
    assert trial.params["model.n"] == 3 and trial.params["model.shortcut"] == "none"
    assert trial.params["depth"] == 20 and trial.params["model.params"] == 269_722
    assert (trial.params["shortcut"], trial.params["block"], trial.params["warmup"]) == ("none", "basic", "none")
    assert trial.params["trainer.milestones"] == [0.5, 0.75]
    assert "data.root" not in trial.params and trial.params["data.augment"] is True
    assert trial.metrics == pytest.approx({"train_error": 0.10, "val_error": 0.12, "test_error": 0.13})
    assert trial.last_step == 400
    history = trial.history["train_error"]
    assert history.steps == (100, 200, 300, 400)
    assert history.values == pytest.approx((0.9, 0.9 - 0.8 / 3, 0.9 - 1.6 / 3, 0.10))
    assert set(trial.history) == {"train_error", "val_error", "test_error"}
    assert trial.layer_responses.names == ("layer0", "layer1", "layer2")
    assert trial.layer_responses.std == (1.0, 0.8, 0.6)


def test_running_study_is_partial_and_running_trials_report_latest_values(store):
    records = load_study_records("live", store["uri"])
    assert records.partial and records.status == "running"
    assert records.metric == "val_error"
    running = next(t for t in records.trials if t.status == "running")
    assert running.status == "running" and running.last_step == 300
    assert running.history["test_error"].steps == (100, 200, 300)  # half of 6 epochs
    assert running.value("test_error") == running.history["test_error"].values[-1]
    assert running.layer_responses is None
    failed = next(t for t in records.trials if t.status == "failed")
    assert failed.history == {} and failed.value("test_error") is None


def test_records_read_without_their_artifacts(store):
    records = load_study_records("moved", store["uri"])
    assert records.study is None
    (trial,) = records.trials
    assert trial.layer_responses is None and trial.value("test_error") == pytest.approx(0.12)


def test_records_of_the_older_layout_read_the_same(store):
    finished, stopped = load_study_records("old", store["uri"]).trials
    assert finished.params["depth"] == 20 and "model.depth" not in finished.params
    assert "data.root" not in finished.params  # logged as "None"
    assert finished.metrics == pytest.approx({"train_error": 0.10, "val_error": 0.12, "test_error": 0.11})
    assert (stopped.status, stopped.last_step) == ("stopped", 200)
    assert stopped.value("test_error") == stopped.history["test_error"].values[-1]  # the value at the stop


def test_unknown_study_lists_the_recorded_ones(store):
    with pytest.raises(UnknownStudyError, match=r"no study named 'nope'.*recorded studies: live, moved, old, resumed"):
        load_study_records("nope", store["uri"])


def test_missing_store_is_reported_and_not_created(tmp_path):
    uri = f"sqlite:///{tmp_path / 'absent.db'}"
    assert list_studies(uri) == []
    with pytest.raises(UnknownStudyError, match="no tracking store"):
        load_study_records("anything", uri)
    assert not (tmp_path / "absent.db").exists()


def test_sqlite_path_of_a_tracking_uri(tmp_path):
    from ablate.tracking.layout import sqlite_path

    assert sqlite_path(f"sqlite:///{tmp_path}/m.db?timeout=30") == tmp_path / "m.db"
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("http://tracking.example:5000") is None
