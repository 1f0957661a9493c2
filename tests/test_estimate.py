"""Estimated wall time of a study here: FLOPs over the measured training rate; `ablate run` wants --yes above a day."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from ablate.perf import estimate
from ablate.perf.estimate import _calibrate as REAL_CALIBRATE  # before conftest's fixture replaces it
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


def test_estimate_is_flops_over_the_rate_plus_the_trials_start(calibrated_rate):
    study = load_study(REPO / "studies/shortcuts.yaml")
    guess = estimate.estimate(study)
    assert guess.rate == calibrated_rate  # no GPU here: the CPU's rate
    start = study.num_trials * estimate.TRIAL_START_S
    assert guess.flops / 1e10 < guess.seconds <= guess.flops / 1e10 * (os.cpu_count() or 1) + start
    assert guess.seconds > 30 * estimate.DAY  # 24 paper-length CIFAR runs on a CPU
    assert "days (" in estimate.format_estimate(guess) and "GFLOP/s" in estimate.format_estimate(guess)
    assert [estimate.format_duration(s) for s in (42, 130, 12_000, 3 * 86_400)] == [
        "42 s", "2 min 10 s", "3 h 20 min", "3.0 days"]


def test_a_fused_study_starts_one_ray_trial_per_pack():
    study = load_study(REPO / "studies/quickstart.yaml", ["max_concurrent=1"])
    fused = load_study(REPO / "studies/quickstart.yaml", ["max_concurrent=1", "fuse=3"])  # 12 trials in 4 packs
    rate = estimate.Rate(1e10, "cpu", "test", "now")
    alone, packed = estimate.estimate(study, rate=rate), estimate.estimate(fused, rate=rate)
    assert alone.flops == packed.flops
    assert alone.seconds - packed.seconds == pytest.approx((12 - 4) * estimate.TRIAL_START_S)


def test_the_rate_is_calibrated_on_the_study_s_cheapest_net(monkeypatch):
    monkeypatch.setattr(estimate, "_calibrate", REAL_CALIBRATE)
    monkeypatch.setitem(estimate.CALIBRATION, "steps", 2)
    study = load_study(REPO / "studies/quickstart.yaml")
    guess = estimate.estimate(study)
    assert guess.rate.source == "calibration on plain8-w8"  # of plain8, plain32, resnet8, resnet32 (width 8)
    assert guess.rate.flop_per_s > 1e8
    config = estimate._calibration_config(study.trials()[0].config, "cpu")
    assert (config.data.name, config.data.synthetic_shape, config.trainer.batch_size) == ("synthetic", (1, 28, 28), 64)


def test_plan_prints_the_estimate_and_run_wants_yes_beyond_a_day(tmp_path, capsys):
    assert main(["plan", str(REPO / "studies/quickstart.yaml")]) == 0
    assert "estimated wall time here: " in capsys.readouterr().out

    long = tmp_path / "long.yaml"
    long.write_text(yaml.safe_dump({
        "name": "long", "question": "?", "data": {"name": "synthetic", "val_size": 100}, "trainer": {"iterations": 10_000_000},
        "resources": {"cpu": 1, "gpu": 0},
    }))
    db = tmp_path / "mlflow.db"
    assert main(["run", str(long), "--tracking-uri", f"sqlite:///{db}", "--storage-path", str(tmp_path / "r")]) == 2
    captured = capsys.readouterr()
    assert "days" in captured.out and "add --yes to start it anyway" in captured.err
    assert not db.exists()  # refused before anything is recorded
