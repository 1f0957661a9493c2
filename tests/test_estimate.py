"""Estimated wall time of a study here: FLOPs over the measured training rate; `ablate run` wants --yes above a day."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ablate import estimate
from ablate.cli import main
from ablate.config import with_overrides
from ablate.study import load_study, plan_rows

REPO = Path(__file__).resolve().parents[1]


def test_trial_flops_count_training_and_every_evaluation():
    study = load_study(REPO / "studies/quickstart.yaml")
    trial, row = study.trials()[0], plan_rows(study)[0]
    macs = row["macs"]
    config = with_overrides(trial.config, {"trainer.iterations": 300, "trainer.batch_size": 128,
                                           "trainer.eval_every": 100, "data.val_size": 2000, "data.test_size": 2000})
    # 300 iterations of 128 images; an evaluation every 100 iterations of 2000 validation + 2000 test images
    assert estimate.trial_flops(config, macs) == 6 * macs * 300 * 128 + 2 * macs * 4000 * 3
    # 301 iterations: a fourth, last evaluation at the end
    longer = with_overrides(config, {"trainer.iterations": 301})
    assert estimate.trial_flops(longer, macs) == 6 * macs * 301 * 128 + 2 * macs * 4000 * 4
    assert estimate.study_flops(study) == sum(estimate.trial_flops(t.config, r["macs"])
                                              for t, r in zip(study.trials(), plan_rows(study)))


def test_estimate_is_flops_over_the_saved_rate(saved_training_rate):
    study = load_study(REPO / "studies/shortcuts.yaml")
    guess = estimate.estimate(study)
    assert guess.rate == saved_training_rate  # no GPU here: the CPU's saved rate, no calibration
    assert guess.seconds == pytest.approx(guess.flops / 1e10)
    assert guess.seconds > 30 * estimate.DAY  # 24 paper-length CIFAR runs on a CPU
    assert "days (" in estimate.format_estimate(guess) and "GFLOP/s" in estimate.format_estimate(guess)
    assert [estimate.format_duration(s) for s in (42, 130, 12_000, 3 * 86_400)] == [
        "42 s", "2 min 10 s", "3 h 20 min", "3.0 days"]


def test_without_a_bench_figure_a_calibration_measures_the_trainer(tmp_path, monkeypatch):
    monkeypatch.setattr(estimate, "rate_file", lambda: tmp_path / "throughput.json")
    monkeypatch.setitem(estimate.CALIBRATION, "steps", 1)
    monkeypatch.setitem(estimate.CALIBRATION, "batch_size", 8)
    rate = estimate.device_rate("cpu")
    assert rate.source == "calibration" and rate.flop_per_s > 1e6
    assert not (tmp_path / "throughput.json").exists()  # only `ablate bench` keeps a figure


def test_bench_keeps_its_figure_for_the_estimates(tmp_path, monkeypatch):
    from ablate.cli import _save_rate

    monkeypatch.setattr(estimate, "rate_file", lambda: tmp_path / "throughput.json")
    _save_rate({"images_per_s": 1000.0, "device_name": "cpu, 2 cores"}, "resnet20")
    assert estimate._saved_rate("cpu, 2 cores").flop_per_s == pytest.approx(6 * 40_551_040 * 1000)


def test_plan_prints_the_estimate_and_run_wants_yes_beyond_a_day(tmp_path, capsys):
    assert main(["plan", str(REPO / "studies/quickstart.yaml")]) == 0
    assert "estimated wall time here: " in capsys.readouterr().out

    long = tmp_path / "long.yaml"
    long.write_text(yaml.safe_dump({
        "name": "long", "question": "?", "data": {"name": "synthetic"}, "trainer": {"iterations": 10_000_000},
        "resources": {"cpu": 1, "gpu": 0},
    }))
    db = tmp_path / "mlflow.db"
    assert main(["run", str(long), "--tracking-uri", f"sqlite:///{db}", "--storage-path", str(tmp_path / "r")]) == 2
    captured = capsys.readouterr()
    assert "days" in captured.out and "add --yes to start it anyway" in captured.err
    assert not db.exists()  # refused before anything is recorded
