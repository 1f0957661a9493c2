"""Bad inputs and damaged state, each one refused with one message and exit status 2, nothing run or written.

Fast (no Ray, tiny nets): crafted and damaged checkpoints, bounded study files and values, damaged or
unreachable tracking stores, concurrent creation of one store, runs left RUNNING by a dead driver, and
a report that must stay inside ``--out``. The drills that need Ray are in ``test_drills.py``.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow_records import FakeTrial, Invocation, log_study, new_tracking_uri

from ablate.cli import main
from ablate.config import DataConfig, ModelSpec, TrainConfig, TrainerConfig
from ablate.study.files import MAX_FILE_BYTES
from ablate.tracking import layout, store
from ablate.tracking.reader import list_studies
from ablate.tracking.store import TrackingError, driver_gone, driver_id, open_store
from ablate.tracking.writer import StudyWriter
from ablate.trainer import CHECKPOINT_FILE, CheckpointError, train

REPO = Path(__file__).resolve().parents[1]


def refused(argv: list[str], capsys, *fragments: str) -> str:
    """Run ``ablate ARGV``: exit status 2 and one ``error:`` message holding every fragment; returns it."""
    capsys.readouterr()  # what came before
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"ablate {argv[0]}: error: "), err
    for fragment in fragments:
        assert fragment in err
    return err


# -- checkpoints ---------------------------------------------------------------------------------------


def tiny(**model) -> TrainConfig:
    return TrainConfig(
        model=ModelSpec(**({"n": 1, "base_width": 4} | model)),
        data=DataConfig(name="synthetic", synthetic_shape=(3, 8, 8), synthetic_train=96, synthetic_test=32,
                        val_size=32),
        trainer=TrainerConfig(iterations=4, batch_size=32, eval_every=2, device="cpu"),
    )


TRAIN_TINY = ["train", "--data", "synthetic", "--n", "1", "--iterations", "4", "--device", "cpu",
              *(f"--set={item}" for item in ("model.base_width=4", "data.synthetic_shape=[3,8,8]", "data.val_size=32",
                                             "data.synthetic_train=96", "trainer.batch_size=32"))]  # as tiny()


class Crafted:
    """Unpickling this creates ``path``: what a malicious checkpoint.pt could do with any callable."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("checkpoint")
    train(tiny(), lambda metrics: None, checkpoint_dir=folder)
    return (folder / CHECKPOINT_FILE).read_bytes()


def test_a_crafted_checkpoint_is_refused_without_running_anything(tmp_path, capsys):
    marker = tmp_path / "marker"
    torch.save({"model": Crafted(marker)}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="refused: not a checkpoint written by ablate"):
        train(tiny(), lambda metrics: None, resume_from=tmp_path)  # the Ray trainable resumes through this too
    refused([*TRAIN_TINY, "--checkpoint-dir", str(tmp_path), "--resume"], capsys, str(tmp_path / CHECKPOINT_FILE),
            "nothing in it was run")
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda good: good[: len(good) // 2], "unreadable: truncated, empty or not a PyTorch file"),
        (lambda good: b"", "unreadable: truncated, empty or not a PyTorch file"),
        *((lambda good, seed=seed: random.Random(seed).randbytes(4096), "not a checkpoint written by ablate|"
           "unreadable: truncated, empty or not a PyTorch file") for seed in range(4)),
        (lambda good: None, r"not a checkpoint written by ablate \(no 'model' entry\)"),
    ],
    ids=["truncated", "empty", *(f"random{seed}" for seed in range(4)), "another-dict"],
)
def test_a_damaged_checkpoint_is_one_error(tmp_path, good_checkpoint, damage, message):
    data = damage(good_checkpoint)
    if data is None:
        torch.save({"weights": torch.zeros(3)}, tmp_path / CHECKPOINT_FILE)
    else:
        (tmp_path / CHECKPOINT_FILE).write_bytes(data)
    with pytest.raises(CheckpointError) as caught:
        train(tiny(), lambda metrics: None, resume_from=tmp_path)
    assert re.search(message, str(caught.value)) and "\n" not in str(caught.value)


def test_a_checkpoint_of_another_model_or_none_at_all_is_one_error(tmp_path, good_checkpoint):
    (tmp_path / CHECKPOINT_FILE).write_bytes(good_checkpoint)
    with pytest.raises(CheckpointError, match=r"written for another model or setting: size mismatch for stem"):
        train(tiny(base_width=8), lambda metrics: None, resume_from=tmp_path)
    with pytest.raises(CheckpointError, match="no such file to resume from"):
        train(tiny(), lambda metrics: None, resume_from=tmp_path / "elsewhere")


# -- bounded inputs ------------------------------------------------------------------------------------


def test_set_values_that_are_not_yaml_are_one_message(tmp_path, capsys):
    refused(["train", "--set", "trainer.lr=["], capsys, "override 'trainer.lr=['", "malformed YAML")
    marker = tmp_path / "marker"
    refused(["train", "--set", f"trainer.lr=!!python/object/apply:os.system ['touch {marker}']"], capsys,
            "malformed YAML")
    assert not marker.exists()


@pytest.mark.parametrize(
    "override,fragment",
    [("model.width_mult=.inf", "finite number"), ("model.width_mult=1e30", "less than or equal to 64"),
     ("trainer.lr=.inf", "finite number"), ("trainer.lr=.nan", "finite number")],
)
def test_non_finite_and_absurd_numbers_are_refused(override, fragment, capsys):
    refused(["plan", str(REPO / "studies/quickstart.yaml"), "--set", override], capsys, override.split("=")[0],
            fragment)


def test_study_files_that_are_special_or_too_large_are_refused_unread(tmp_path, capsys):
    refused(["plan", "/dev/zero"], capsys, "/dev/zero: not a regular file")
    refused(["plan", str(tmp_path)], capsys, "not a regular file")
    huge = tmp_path / "huge.yaml"
    huge.write_text("name: huge\nquestion: " + "x" * MAX_FILE_BYTES + "\n")
    refused(["plan", str(huge)], capsys, f"larger than {MAX_FILE_BYTES:,} bytes")


def test_a_long_question_is_refused_and_the_message_stays_short(capsys):
    err = refused(["plan", str(REPO / "studies/quickstart.yaml"), "--set", "question=" + "x" * 50_000], capsys,
                  "question: String should have at most 2000 characters")
    assert len(err) < 500


def test_an_axis_of_thousands_of_values_is_checked_in_one_pass(tmp_path, capsys):
    """The repeated-value check is a set, not pairwise: 10,000 values with one repeat at the end."""
    path = tmp_path / "long.yaml"
    values = [round(0.001 + i * 1e-6, 7) for i in range(9_999)] + [0.001]
    path.write_text(yaml.safe_dump({"name": "long", "question": "?", "search": {"method": "random", "num_samples": 1},
                                    "space": {"trainer.lr": values}}))
    refused(["plan", str(path)], capsys, "space.trainer.lr: each value may appear once; repeated: 0.001")
    path.write_text(yaml.safe_dump({"name": "long", "question": "?", "space": {"trainer.lr": [0.1] * 10_001}}))
    refused(["plan", str(path)], capsys, "10,001 values; an axis has at most 10,000")


def test_report_stays_inside_out(tmp_path, capsys):
    uri = new_tracking_uri(tmp_path / "store")
    log_study(MlflowClient(uri), "../../escape", [Invocation([FakeTrial()])], artifact_root=tmp_path / "artifacts")
    out = tmp_path / "a" / "b" / "out"
    refused(["report", "--study", "../../escape", "--tracking-uri", uri, "--out", str(out)], capsys,
            "not usable as the report's folder name")
    assert not (tmp_path / "a" / "escape").exists() and not out.exists()


# -- the tracking store -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content,fragment",
    [(lambda real: random.Random(0).randbytes(5000), "file is not a database"),
     (lambda real: real[: len(real) // 3], "database disk image is malformed")],
    ids=["garbage", "truncated"],
)
def test_a_damaged_store_is_one_error(tmp_path, capsys, content, fragment):
    real = Path(layout.sqlite_path(new_tracking_uri(tmp_path / "real"))).read_bytes()
    damaged = tmp_path / "mlflow.db"
    damaged.write_bytes(content(real))
    uri = f"sqlite:///{damaged}"
    refused(["studies", "--tracking-uri", uri], capsys, f"tracking store {uri}: not a usable MLflow database",
            fragment)
    refused(["report", "--study", "x", "--tracking-uri", uri], capsys, fragment)


def test_a_uri_mlflow_cannot_use_is_one_error(tmp_path, capsys):
    refused(["studies", "--tracking-uri", "nonsense://x"], capsys, "MLflow cannot use URIs of the scheme 'nonsense'")
    refused(["studies", "--tracking-uri", f"sqlite:///{tmp_path}"], capsys, "is not a file")


def test_a_server_that_refuses_or_never_answers_is_one_error(monkeypatch, capsys):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once closed
    refused(["studies", "--tracking-uri", f"http://127.0.0.1:{port}"], capsys, "no usable answer from the MLflow "
            "server", "Connection refused")

    monkeypatch.setattr(store, "_HTTP_ENV", {"MLFLOW_HTTP_REQUEST_TIMEOUT": 1, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": 0})
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        refused(["studies", "--tracking-uri", uri], capsys, "no usable answer from the MLflow server", "timed out")
        assert time.monotonic() - started < 30  # bounded by the probe's timeout, not MLflow's minutes of retries
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ  # the bounds hold for the check only


def test_the_default_probe_gives_up_within_half_a_minute():
    timeout = store._HTTP_ENV["MLFLOW_HTTP_REQUEST_TIMEOUT"]
    retries = store._HTTP_ENV["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert timeout * (retries + 1) <= 25  # plus MLflow's backoff of about 2 s per retry


_CREATE = """
import sys, time
from pathlib import Path
from ablate.tracking.writer import StudyWriter
uri, name, go = sys.argv[1:]
Path(go + "." + name).touch()
while not Path(go).exists():
    time.sleep(0.001)
writer = StudyWriter(uri)
writer.start_study(name, question="q?", metric="test_error", mode="min", study_yaml="name: x\\n", overrides={})
writer.end_study("finished")
"""


@pytest.mark.slow
def test_two_studies_create_one_fresh_store_at_once(tmp_path):
    """Two drivers open the same new SQLite file at the same moment: both studies are recorded."""
    for attempt in range(2):  # the race is a matter of milliseconds: two tries
        db, go = tmp_path / f"mlflow{attempt}.db", tmp_path / f"go{attempt}"
        uri = f"sqlite:///{db}"
        procs = [subprocess.Popen([sys.executable, "-c", _CREATE, uri, name, str(go)], stderr=subprocess.PIPE,
                                  text=True) for name in ("first", "second")]
        deadline = time.monotonic() + 120
        while not all(Path(f"{go}.{name}").exists() for name in ("first", "second")) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        errors = [proc.communicate(timeout=120)[1] for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], errors
        client = MlflowClient(uri)
        for name in ("first", "second"):
            runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
            assert [run.data.tags[layout.TAG_STATUS] for run in runs] == ["finished"]


# -- runs a dead driver left RUNNING ---------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_driver_identity_tells_a_dead_or_reused_pid_from_a_live_one():
    me = driver_id()
    host, pid, start = me.split(":")
    assert (host, pid) == (socket.gethostname(), str(os.getpid())) and start
    assert not driver_gone(me)
    assert driver_gone(f"{host}:{pid}:{int(start) + 1}")  # same pid, another process
    assert driver_gone(f"{host}:{_dead_pid()}:")
    assert not driver_gone(f"another-host:{_dead_pid()}:1")  # cannot be told from here: left alone


def test_runs_of_a_dead_driver_are_closed_by_the_next_run_and_by_studies(tmp_path):
    uri = new_tracking_uri(tmp_path)
    client = MlflowClient(uri)
    config = tiny()
    model = {layout.PARAM_MODEL_NAME: config.model.name}

    def killed_invocation(study: str, driver: str) -> tuple[str, str]:
        """A parent run and one trial left RUNNING, as by a driver killed with kill -9."""
        writer = StudyWriter(uri)
        parent = writer.start_study(study, question="q?", metric="test_error", mode="min", study_yaml="x: 1\n",
                                    overrides={})
        child = writer.start_trial("t_00000", config, group="g", label="resnet8", model=model)
        for run_id in (parent, child):
            client.set_tag(run_id, layout.TAG_DRIVER, driver)
        return parent, child

    dead = f"{socket.gethostname()}:{_dead_pid()}:"
    listed = killed_invocation("listed", dead)
    elsewhere = killed_invocation("listed_too", f"another-host:{os.getpid()}:1")
    rows = {row["name"]: row for row in list_studies(uri)}
    assert (rows["listed"]["status"], rows["listed"]["trials"]) == ("interrupted", {"interrupted": 1})
    assert (rows["listed_too"]["status"], rows["listed_too"]["trials"]) == ("running", {"running": 1})
    for run_id in listed:
        assert client.get_run(run_id).info.status == "KILLED"
    assert {client.get_run(run_id).info.status for run_id in elsewhere} == {"RUNNING"}

    resumed = killed_invocation("resumed", dead)
    writer = StudyWriter(uri)  # the next `ablate run` of the study
    parent = writer.start_study("resumed", question="q?", metric="test_error", mode="min", study_yaml="x: 1\n",
                                overrides={})
    assert writer.abandoned == [resumed[0]]
    assert [client.get_run(run_id).info.status for run_id in resumed] == ["KILLED", "KILLED"]
    assert writer.start_trial("t_00000", config, group="g", label="resnet8", model=model) == resumed[1]
    assert client.get_run(resumed[1]).data.tags[layout.TAG_DRIVER] == driver_id()  # now this driver's
    writer.end_study("interrupted")
    assert client.get_run(parent).info.status == "KILLED"


def test_open_store_creates_a_fresh_sqlite_store(tmp_path):
    db = tmp_path / "new" / "mlflow.db"
    client = open_store(f"sqlite:///{db}")
    assert db.is_file() and client.search_experiments()
    with pytest.raises(TrackingError, match="MLflow cannot use URIs"):
        open_store("nonsense://x")


# -- the runner: checks first, a local Ray, messages ----------------------------------------------------


@pytest.mark.parametrize("uri", ["nonsense://x", "garbage"])
def test_run_checks_the_store_before_starting_ray_or_moving_anything(tmp_path, capsys, no_ray, uri):
    if uri == "garbage":
        (tmp_path / "mlflow.db").write_bytes(random.Random(1).randbytes(5000))
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "question": "?", "data": {"name": "synthetic", "val_size": 100}}))
    earlier = tmp_path / "ray_results" / "s"
    earlier.mkdir(parents=True)
    refused(["run", str(path), "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray_results")], capsys,
            f"tracking store {uri}")
    assert no_ray == [] and [p.name for p in earlier.parent.iterdir()] == ["s"]


def test_a_local_ray_is_started_on_loopback_and_never_joins_a_running_cluster(no_ray):
    from ablate.search import runner

    with pytest.raises(RuntimeError, match="stop here"):
        runner._connect_ray(runner._cluster_address(None))
    assert no_ray[0]["address"] == "local" and no_ray[0]["loopback"]
    with pytest.raises(runner.ClusterError, match="Ray Client addresses are not supported"):
        runner._cluster_address("ray://head:10001")


def test_ray_notices_the_user_cannot_act_on_are_dropped():
    """Tune's "Tuner.restore(...)" hint (ours says `--resume`) and Ray's token-authentication notice."""
    import logging

    from ablate.search import runner

    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    tune = logging.getLogger("ray.tune.tune")
    tune.addHandler(handler)
    try:
        with runner._quiet_ray():
            tune.warning("Experiment has been interrupted.\nResume experiment with: Tuner.restore(path='x')")
            tune.warning("something else")
    finally:
        tune.removeHandler(handler)
    assert [record.getMessage() for record in seen] == ["something else"]
    notice = logging.LogRecord("ray", logging.WARNING, "", 0, "Token authentication is enabled for this Ray "
                               "cluster. Set RAY_AUTH_MODE=disabled to opt out.", None, None)
    assert not runner._no_token_notice(notice)


def test_a_first_invocation_has_no_trials_ended_in_earlier_runs():
    from types import SimpleNamespace

    from ray.tune.experiment import Trial

    from ablate.search.callbacks import Recorder

    params = {"trial": {"label": "resnet8", "config": {"seed": 0}}}
    trials = [SimpleNamespace(trial_id=name, status=status, config=params, last_result={})
              for name, status in (("a", Trial.TERMINATED), ("b", Trial.PENDING))]
    first = Recorder(None, expected=2)
    first.on_experiment_end(trials)
    assert first.done_before == 0
    resumed = Recorder(None, expected=2, resumed=True)
    resumed.on_experiment_end(trials)
    assert resumed.done_before == 1


def test_resume_puts_back_only_a_deleted_checkpoint_named_inside_a_trial_directory(tmp_path):
    """A state file naming a checkpoint Tune deleted gets the trial's newest copied under that name; names that
    leave the experiment, finished trials and present checkpoints are left alone (the file is read as JSON)."""
    from ablate.search.runner import _restore_deleted_checkpoints

    experiment = tmp_path / "study"

    def trial(name: str, status: str, checkpoint: str) -> list[str]:
        return [json.dumps({"status": status, "relative_logdir": name}),
                json.dumps({"last_result": {"checkpoint_dir_name": checkpoint}})]

    for name, newest in (("t1", "checkpoint_000002"), ("t2", "checkpoint_000001"), ("t3", "checkpoint_000004")):
        (experiment / name / newest).mkdir(parents=True)
        (experiment / name / newest / "checkpoint.pt").write_text(name)
    state = {"trial_data": [
        trial("t1", "RUNNING", "checkpoint_000001"),  # deleted by Tune before the kill
        trial("t2", "PENDING", "checkpoint_000001"),  # present
        trial("t3", "TERMINATED", "checkpoint_000003"),  # finished: never restored
        trial("..", "RUNNING", "checkpoint_000001"),
        trial("t1", "RUNNING", "../../escaped"),
    ]}
    (experiment / "experiment_state-2026-11-22_00-00-00.json").write_text(json.dumps(state))
    _restore_deleted_checkpoints(experiment)
    assert (experiment / "t1" / "checkpoint_000001" / "checkpoint.pt").read_text() == "t1"
    assert sorted(p.name for p in (experiment / "t2").iterdir()) == ["checkpoint_000001"]
    assert sorted(p.name for p in (experiment / "t3").iterdir()) == ["checkpoint_000004"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study"] and not (tmp_path / "escaped").exists()
    (experiment / "experiment_state-2026-11-22_00-00-01.json").write_text("{not json")
    _restore_deleted_checkpoints(experiment)  # a state Tune cannot read either: left to Tune's own error
