"""Reports of sampled searches (Optuna TPE / random with ASHA), from known MLflow records."""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient
from mlflow_records import FakeTrial, Invocation, log_study, new_tracking_uri
from optuna.trial import TrialState

from ablate.report import make_report
from ablate.report.aggregate import summarize
from ablate.report.sweep import SweepAxis, rebuilt_study, sampled_axes, sweep_view
from ablate.tracking.reader import load_study_records

SWEEP_YAML = {
    "name": "sweep",
    "search": {"method": "tpe", "num_samples": 10},
    "space": {
        "trainer.lr": {"low": 0.01, "high": 1.0, "log": True},
        "trainer.weight_decay": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
    },
}
# (lr, weight decay, status): the error grows with the distance of log10(lr) from -1; weight decay barely matters
POINTS = [
    (0.1, 1e-4, "finished"), (0.03, 3e-5, "finished"), (0.5, 5e-4, "finished"), (0.2, 2e-5, "finished"),
    (0.015, 2e-4, "finished"), (0.06, 7e-4, "finished"), (0.35, 4e-5, "finished"), (0.02, 1e-5, "finished"),
    (0.012, 8e-4, "stopped"), (0.9, 1e-5, "stopped"),
]


def _error(lr: float, weight_decay: float) -> float:
    return 0.10 + 0.10 * abs(math.log10(lr) + 1) + 0.001 * (math.log10(weight_decay) + 4)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    uri = new_tracking_uri(root)
    trials = [
        FakeTrial(n=1, status=status, name=f"resnet8 lr={lr:.3g} weight_decay={wd:.3g}",
                  overrides=(("trainer.lr", lr), ("trainer.weight_decay", wd)),
                  val_error=_error(lr, wd), test_error=_error(lr, wd), train_error=_error(lr, wd) - 0.02)
        for lr, wd, status in POINTS
    ]
    log_study(MlflowClient(uri), "sweep", [Invocation(trials, study_yaml=SWEEP_YAML)], artifact_root=root / "a",
              metric="val_error")
    report = make_report("sweep", tracking_uri=uri, out_dir=root / "reports")
    return {"uri": uri, "report": report}


def test_sampled_axes_come_from_the_recorded_study_file():
    assert sampled_axes(SWEEP_YAML) == [
        SweepAxis("trainer.lr", 0.01, 1.0, True), SweepAxis("trainer.weight_decay", 1e-5, 1e-3, True)]
    assert sampled_axes({"search": {"method": "grid"}, "space": {"model.n": [3, 5]}}) is None
    assert sampled_axes(None) is None


def test_the_rebuilt_optuna_study_has_one_trial_per_configuration(sweep):
    records = load_study_records("sweep", sweep["uri"])
    summaries = summarize(records, metrics=("val_error",))
    study = rebuilt_study(summaries, sampled_axes(records.study), metric="val_error", mode="min")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 8 and states.count(TrialState.PRUNED) == 2
    pruned = next(t for t in study.trials if t.state == TrialState.PRUNED)
    assert list(pruned.intermediate_values) == [200]  # the iteration it was stopped at, with its value there
    assert study.best_trial.params == {"lr": pytest.approx(0.1), "weight_decay": pytest.approx(1e-4)}


def test_sweep_report_shows_stopped_trials_best_configuration_and_importances(sweep):
    report = sweep["report"]
    names = {p.name for p in report.files}
    assert names == {"report.md", "report.html", "hyperparameters.png", "sweep_curves.png"}
    markdown = (report.path / "report.md").read_text()
    assert "| trainer.lr | trainer.weight_decay | validation error (%) | how it ended | seed |" in markdown
    assert markdown.count("stopped at iteration 200") == 2
    results = markdown.split("## Results")[1].split("##")[0]
    assert "—" not in results  # every trial shows a value, stopped ones at the stop
    first_row = results.split("\n")[4]
    assert first_row.startswith("| 0.1 | 0.0001 | 10.00 | finished |")  # best first
    assert "Best configuration: trainer.lr = 0.1, trainer.weight_decay = 0.0001" in markdown
    assert "| hyper-parameter | importance (fANOVA) |" in markdown
    assert report.answer.startswith("Best of 10 sampled configurations: lr=0.1, weight_decay=0.0001, validation error")
    assert "lr matters most" in report.answer
    assert "](curves.png)" not in markdown and "Layer responses" not in markdown  # Fig. 6/7 say nothing of a sweep


def test_with_few_finished_configurations_importances_compare_all_at_the_first_rung(sweep):
    records = load_study_records("sweep", sweep["uri"])
    summaries = summarize(records, metrics=("val_error",))
    few = [s for s in summaries if s.count("stopped")] + [s for s in summaries if s.count("finished")][:2]
    view = sweep_view(few, sampled_axes(records.study), metric="val_error", mode="min")
    assert view.complete == 2 and view.importance_step == 200  # stopped trials logged 100 and 200, finished 100..400
    assert set(view.importances) == {"lr", "weight_decay"}
