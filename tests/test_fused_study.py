"""Studies that fuse (the study file's ``fuse``): packing, refusals, the recorder's runs, and the records.

A fused study must leave the same MLflow records as the same study run unfused: one child run per
configuration and seed with the same name, params, tags, status and metric histories (within the float
tolerances of tests/test_fused.py: fused members match their runs alone step by step in fp32).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow import MlflowClient
from ray.tune.experiment import Trial

from ablate.search import run_study
from ablate.search.callbacks import Recorder
from ablate.search.trainable import MEMBERS, PACK, trial_params, trial_runs
from ablate.study import StudyError, format_plan, load_study, plan_rows
from ablate.tracking import layout
from ablate.tracking.writer import StudyWriter

TINY = {  # fp32 NCHW on CPU: the setting in which fused members equal their runs alone
    "data": {"name": "synthetic", "synthetic_shape": [3, 16, 16], "synthetic_train": 320, "synthetic_test": 64,
             "val_size": 64},
    "model": {"n": 1, "base_width": 8},
    "trainer": {"iterations": 20, "batch_size": 32, "eval_every": 10, "device": "cpu", "bf16": False,
                "channels_last": False, "momentum": 0.0, "weight_decay": 0.0},
}
TIMING = ("images_per_s", "wall_time")  # differ between any two runs
# Fused against alone, measured for this study's runs on CPU fp32 (4 members, 2 of them diverging): the
# first step's loss agrees to 2e-7 (the grouped conv rounds differently for K >= 3), and 20 SGD steps on
# random labels grow that to 2.2e-4 in train_loss, 5.3e-2 in grad_norm/stem (the most sensitive figure,
# see tests/test_fused.py), 7e-4 in the layer responses; val and test errors agree exactly.
LOSS_RTOL, GRAD_NORM_RTOL, RESPONSE_RTOL, ERROR_ABS = 1e-3, 0.1, 2e-3, 1.01 / 64  # errors: one image of 64


def study_file(tmp_path: Path, name: str, **fields) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "question": f"What does {name} show?", **TINY, **fields}))
    return path


# -- packing, plan and refusals ---------------------------------------------------------------------


def test_trials_differing_in_seed_or_recipe_are_packed_and_plan_shows_the_packs(tmp_path):
    path = study_file(tmp_path, "packed", seeds=[0, 1], fuse=3,
                      space={"model.shortcut": ["A", "none"], "trainer.lr": [0.05, 0.1]})
    study = load_study(path)
    packs = [[(t.config.model.shortcut, t.config.trainer.lr, t.seed) for t in pack] for pack in study.packs()]
    assert packs == [  # each shortcut apart (other shapes); up to 3 of its 4 trials per Ray trial, in trial order
        [("A", 0.05, 0), ("A", 0.1, 0), ("A", 0.05, 1)], [("A", 0.1, 1)],
        [("none", 0.05, 0), ("none", 0.1, 0), ("none", 0.05, 1)], [("none", 0.1, 1)],
    ]
    rows = plan_rows(study)
    assert [(row["model.shortcut"], row["trainer.lr"], row["seed"], row["ray_trial"]) for row in rows] == [
        ("A", 0.05, 0, 1), ("A", 0.1, 0, 1), ("none", 0.05, 0, 3), ("none", 0.1, 0, 3),
        ("A", 0.05, 1, 1), ("A", 0.1, 1, 2), ("none", 0.05, 1, 3), ("none", 0.1, 1, 4),
    ]
    text = format_plan(rows)
    assert text.splitlines()[0].split()[:3] == ["label", "Ray", "trial"]
    assert text.endswith("fused into 4 Ray trials of 1-3 trials each")
    assert "ray_trial" not in plan_rows(load_study(path, ["fuse=1"]))[0]  # unfused: the plan as before


@pytest.mark.parametrize("overrides,problem", [
    (["search.method=tpe", "search.num_samples=2"], "search.method tpe draws its points while it runs"),
    (["early_stopping={grace_period: 10}"], "early_stopping stops single trials"),
    (["fuse=0"], "fuse"),
])
def test_a_study_that_cannot_fuse_is_refused_at_load(tmp_path, overrides, problem):
    path = study_file(tmp_path, "refused", fuse=2, space={"trainer.lr": [0.05, 0.1]})
    with pytest.raises(StudyError, match=problem) as err:
        load_study(path, overrides)
    assert str(path) in str(err.value) and "fuse" in str(err.value)


# -- the recorder: one child run per member -----------------------------------------------------------


def test_recorder_ends_a_diverged_member_at_once_and_never_reopens_it(tmp_path):
    study = load_study(study_file(tmp_path, "members", seeds=[0, 1], fuse=2))
    pack = [trial_params(trial, study.metric) for trial in study.packs()[0]]
    writer = StudyWriter(f"sqlite:///{tmp_path / 'mlflow.db'}")
    writer.start_study("members", question="q", metric="test_error", mode="min", study_yaml="", overrides={})
    recorder = Recorder(writer, expected=2)
    trial = SimpleNamespace(trial_id="t_00000", config={PACK: pack}, last_result=None, status=Trial.RUNNING,
                            error_file=None)
    assert [run_id for run_id, _, _ in trial_runs(trial.trial_id, trial.config, None)] == ["t_00000.0", "t_00000.1"]

    recorder.on_trial_start(0, [trial], trial)
    assert sorted(writer.open_trials) == ["t_00000.0", "t_00000.1"]
    diverged = {"iteration": 10, "train_loss": float("nan"), "status": "diverged"}
    running = {"iteration": 10, "train_loss": 2.3, "test_error": 0.9, "status": "running"}
    trial.last_result = {"iteration": 10, MEMBERS: {"0": diverged, "1": running}}
    recorder.on_trial_result(0, [trial], trial, trial.last_result)
    assert writer.open_trials == ["t_00000.1"] and recorder.ended == {"t_00000.0": "diverged"}

    recorder.on_trial_start(0, [trial], trial)  # restarted after a failure: the diverged member stays ended
    assert writer.open_trials == ["t_00000.1"]
    fresh = Recorder(writer, expected=2, resumed=True)  # --resume: Tune's restored last result says so too
    fresh.on_trial_start(0, [trial], trial)
    assert fresh.started == {"t_00000.1"}

    finished = {"iteration": 20, "train_loss": 2.2, "test_error": 0.8, "status": "finished",
                "layer_responses": json.dumps({"names": ["stem"], "std": [1.0]})}
    trial.last_result = {"iteration": 20, MEMBERS: {"0": diverged, "1": finished}}
    recorder.on_trial_result(0, [trial], trial, trial.last_result)
    recorder.on_trial_complete(0, [trial], trial)
    assert writer.open_trials == [] and recorder.ended == {"t_00000.0": "diverged", "t_00000.1": "finished"}
    assert recorder.complete
    fresh.on_experiment_end([trial])
    assert fresh.done_before == 1  # the diverged member, ended before this invocation


# -- end to end ---------------------------------------------------------------------------------------


def _records(uri: str, study: str) -> dict[str, dict]:
    """Each child run by name: status, tags that matter, params, metric histories, layer responses."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study)
    children = client.search_runs([experiment.experiment_id], f"tags.`{layout.TAG_ROLE}` = '{layout.ROLE_TRIAL}'")
    out = {}
    for run in children:
        run_id, tags = run.info.run_id, run.data.tags
        histories = {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
                     for key in run.data.metrics if key not in TIMING}
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        responses = None
        if layout.ARTIFACT_RESPONSES in artifacts:
            local = client.download_artifacts(run_id, layout.ARTIFACT_RESPONSES)
            responses = json.loads(Path(local).read_text())
        out[run.info.run_name] = {
            "status": (run.info.status, tags[layout.TAG_STATUS]),
            "tags": {key: tags[key] for key in (layout.TAG_GROUP, layout.TAG_LABEL, layout.TAG_STUDY)},
            "params": run.data.params, "metrics": histories, "artifacts": artifacts, "responses": responses,
        }
    return out


def _assert_same_history(key: str, fused: list, alone: list) -> None:
    assert [step for step, _ in fused] == [step for step, _ in alone], key
    for (_, f), (_, a) in zip(fused, alone):
        if a != a:  # NaN: a diverged run's last loss
            assert f != f, key
        elif key.endswith("_error"):
            assert f == pytest.approx(a, abs=ERROR_ABS), key
        elif key.startswith("grad_norm/"):
            assert f == pytest.approx(a, rel=GRAD_NORM_RTOL), key
        else:
            assert f == pytest.approx(a, rel=LOSS_RTOL), key


@pytest.mark.slow
def test_a_fused_study_is_recorded_as_the_same_study_unfused(tmp_path, ray_session):
    # 2 lrs x 2 seeds, all four in one Ray trial; lr 1e20 diverges at its first evaluation, the others go on
    path = study_file(tmp_path, "fusing", seeds=[0, 1], max_concurrent=1, space={"trainer.lr": [0.05, 1.0e20]})
    records = {}
    for fuse in (1, 4):
        uri = f"sqlite:///{tmp_path / f'fuse{fuse}.db'}"
        study = load_study(path, [f"fuse={fuse}"])
        assert run_study(study, tracking_uri=uri, storage_path=tmp_path / f"ray{fuse}") == 0
        records[fuse] = _records(uri, "fusing")
    assert len(load_study(path, ["fuse=4"]).packs()) == 1

    alone, fused = records[1], records[4]
    assert sorted(fused) == sorted(alone) == sorted(f"resnet8-w8 lr={lr} seed {s}" for lr in ("0.05", "1e+20")
                                                    for s in (0, 1))
    for name, solo in alone.items():
        mine = fused[name]
        assert mine["status"] == solo["status"], name
        assert mine["tags"] == solo["tags"] and mine["params"] == solo["params"], name
        assert mine["artifacts"] == solo["artifacts"], name
        assert mine["metrics"].keys() == solo["metrics"].keys(), name
        for key, history in solo["metrics"].items():
            _assert_same_history(key, mine["metrics"][key], history)
        if solo["responses"] is not None:
            assert mine["responses"]["names"] == solo["responses"]["names"]
            assert mine["responses"]["std"] == pytest.approx(solo["responses"]["std"], rel=RESPONSE_RTOL)
    statuses = sorted(record["status"][1] for record in fused.values())
    assert statuses == ["diverged", "diverged", "finished", "finished"]


def _reports(experiment: Path) -> int:
    """Reports written by the Ray trials of an experiment so far."""
    return sum(len(path.read_text().splitlines()) for path in experiment.glob("*/result.json"))


@pytest.mark.slow
def test_an_interrupted_fused_study_resumes_from_its_member_checkpoints(tmp_path, ray_session):
    import threading

    from test_run import _interrupt_when

    from ablate.search.runner import EXIT_INTERRUPTED

    path = study_file(tmp_path, "fused_resume", seeds=[0, 1], fuse=4, space={"trainer.lr": [0.05, 1.0e20]})
    study = load_study(path, ["trainer.iterations=80"])  # 8 evaluations
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "ray"
    experiment = storage / "fused_resume"
    threading.Thread(target=_interrupt_when, args=(lambda: _reports(experiment) >= 2,), daemon=True).start()
    assert run_study(study, tracking_uri=uri, storage_path=storage) == EXIT_INTERRUPTED
    before = {run.info.run_name: run for run in _children(uri, "fused_resume")}
    assert sorted(run.data.tags[layout.TAG_STATUS] for run in before.values()) == [
        "diverged", "diverged", "interrupted", "interrupted"]

    assert run_study(study, resume=True, tracking_uri=uri, storage_path=storage) == 0
    after = {run.info.run_name: run for run in _children(uri, "fused_resume")}
    assert after.keys() == before.keys() and all(after[n].info.run_id == r.info.run_id for n, r in before.items())
    client = MlflowClient(uri)
    for name, run in after.items():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        if run.data.params["trainer.lr"] == "1e+20":  # ended before the interruption, never reopened
            assert run.data.tags[layout.TAG_STATUS] == "diverged" and steps == [10]
            assert run.info.end_time == before[name].info.end_time
        else:  # continued from its checkpoint: every evaluation logged once
            assert (run.info.status, run.data.tags[layout.TAG_STATUS]) == ("FINISHED", "finished")
            assert sorted(steps) == list(range(10, 81, 10))


def _children(uri: str, study: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study)
    return client.search_runs([experiment.experiment_id], f"tags.`{layout.TAG_ROLE}` = '{layout.ROLE_TRIAL}'")
