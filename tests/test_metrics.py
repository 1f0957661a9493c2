"""The report contract (:mod:`ablate.metrics`): every key the trainer reports is one tracking records.

The tracking writer keeps the numbers named in ``ablate.metrics`` and silently drops any other key, so a
metric added to the trainer alone would never reach MLflow; these tests are what says so.
"""

from __future__ import annotations

import functools
import math

import pytest

from ablate.config import DataConfig, ModelSpec, TrainConfig, TrainerConfig
from ablate.metrics import EVAL_METRICS, GRAD_NORM_PREFIX, LAYER_RESPONSES, STATUS, TRAINER_END_STATUSES, Status
from ablate.trainer import train
from ablate.tracking.layout import MLFLOW_STATUS
from ablate.tracking.writer import RECORDED_OTHERWISE, reported_metrics

CASES = {  # name -> (data fields, trainer fields)
    "finished": ({}, {}),
    "no validation split": ({"val_size": 0}, {}),
    "diverged": ({}, {"lr": 1e30, "momentum": 0.0, "weight_decay": 0.0}),  # non-finite by the first evaluation
}


@functools.cache
def reports(case: str) -> list[dict]:
    data, trainer = CASES[case]
    config = TrainConfig(
        model=ModelSpec(n=1, base_width=4),
        data=DataConfig(name="synthetic", synthetic_shape=(3, 8, 8), synthetic_train=192, synthetic_test=32,
                        **({"val_size": 32} | data)),
        trainer=TrainerConfig(**({"iterations": 8, "batch_size": 16, "eval_every": 4, "device": "cpu"} | trainer)),
    )
    seen = []
    train(config, seen.append)
    return seen


@pytest.mark.parametrize("case", CASES)
def test_the_trainer_reports_no_key_the_tracking_writer_would_drop(case):
    seen = reports(case)
    assert seen
    for report in seen:
        kept = set(reported_metrics(report)) | set(RECORDED_OTHERWISE)
        dropped = sorted(set(report) - kept)
        assert not dropped, f"{case}: the trainer reports {dropped}, which tracking drops; declare them in ablate.metrics"


def test_every_declared_metric_is_reported_and_absent_ones_are_the_documented_ones():
    finished = reports("finished")
    for report in finished:
        assert set(EVAL_METRICS) <= set(report) and all(math.isfinite(report[key]) for key in EVAL_METRICS)
        assert any(key.startswith(GRAD_NORM_PREFIX) for key in report)
    assert [m[STATUS] for m in finished] == [Status.RUNNING, Status.FINISHED]
    assert LAYER_RESPONSES in finished[-1] and all(LAYER_RESPONSES not in m for m in finished[:-1])

    no_split = reports("no validation split")
    assert all(set(m) & set(EVAL_METRICS) == set(EVAL_METRICS) - {"val_error"} for m in no_split)

    diverged = reports("diverged")[-1]
    assert diverged[STATUS] == Status.DIVERGED and diverged[STATUS] in TRAINER_END_STATUSES
    assert set(diverged) & set(EVAL_METRICS) == set(EVAL_METRICS) - {"val_error", "test_error"}  # no evaluation


def test_every_status_a_run_ends_with_has_an_mlflow_status():
    statuses = {value for name, value in vars(Status).items() if not name.startswith("_")}
    assert len(statuses) == 6
    assert set(MLFLOW_STATUS) == statuses - {Status.RUNNING}
