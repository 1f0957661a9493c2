"""Fault drills: what docs/RELIABILITY.md promises, checked end to end on tiny synthetic studies.

- kill -9 of the driver mid-study, then ``--resume``: no trial lost or run twice, no run left RUNNING;
  while it ran, every socket of the driver, Ray and the trial workers listened on loopback only;
- kill -9 of a trial's worker: the trial restarts from its checkpoint and ends with the same numbers
  as a run never interrupted, and the terminal says so in one line;
- a Ray cluster of two nodes (``ray.cluster_utils.Cluster``): trials run on both;
- a real ``mlflow server`` on a loopback port as the tracking store: run, studies, report.

Drills that need a process of their own (a driver to kill, a cluster, a server) start it as a subprocess
and end what they started, by pid; the others share the test session's Ray (``ray_session``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import ray  # noqa: F401  (puts Ray's bundled psutil on the import path)
import psutil
import yaml
from mlflow import MlflowClient

from ablate.cli import main
from ablate.search import run_study
from ablate.study import load_study
from ablate.tracking import layout

pytestmark = pytest.mark.slow

TINY = {
    "data": {"name": "synthetic", "synthetic_shape": [3, 16, 16], "synthetic_train": 320, "synthetic_test": 64,
             "val_size": 64},
    "model": {"n": 1, "base_width": 8},
    "trainer": {"iterations": 40, "batch_size": 32, "eval_every": 10, "device": "cpu"},
    "resources": {"cpu": 1, "gpu": 0},
}
LOOPBACK = ("127.", "::1", "::ffff:127.")
# Ray's switch for machines without cluster support (macOS, Windows): at 0 every node, its servers and the
# driver take 127.0.0.1 as their address, so a test cluster of several nodes stays on loopback.
LOOPBACK_CLUSTER = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
FINAL = ["train_loss", "train_error", "val_error", "test_error"]  # a run's final values are its latest ones


def study_file(folder: Path, name: str, **fields) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "question": f"Does {name} hold?", **TINY, **fields}))
    return path


def subprocess_env() -> dict[str, str]:
    """This environment (PYTHONPATH included) without a cluster address: a driver starts its own local Ray."""
    return {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def reported(experiment: Path, iteration: int = 0) -> list[dict]:
    """The latest result of every trial of a Ray Tune experiment that has reported past ``iteration``."""
    latest = []
    for path in experiment.glob("*/result.json"):
        lines = path.read_text().splitlines()
        if lines and lines[-1].endswith("}"):
            result = json.loads(lines[-1])
            if result["iteration"] > iteration:
                latest.append(result)
    return latest


def all_runs(uri: str, study: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study)
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def role(runs: list, name: str) -> list:
    return [run for run in runs if run.data.tags.get(layout.TAG_ROLE) == name]


def steps(uri: str, run, metric: str = "test_error") -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, metric))


def listening(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every TCP/UDP socket the processes listen on."""
    found = []
    for process in processes:
        try:
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN or (conn.type == socket.SOCK_DGRAM and not conn.raddr):
                    found.append((process.name(), conn.laddr.ip, conn.laddr.port))
        except psutil.NoSuchProcess:
            continue
    return found


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (a driver, the Ray it started, its workers); [] once it has ended."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def end_all(processes: list[psutil.Process]) -> None:
    """SIGKILL each of these processes (started by this test) that still runs, and reap them."""
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(processes, timeout=30)


# -- kill -9 of the driver -------------------------------------------------------------------------------


def test_kill_9_of_the_driver_then_resume_loses_nothing_and_a_local_ray_listens_on_loopback(
    tmp_path, ray_session, capfd
):
    trainer = {**TINY["trainer"], "iterations": 160, "eval_every": 40}  # evaluations far enough apart to kill between
    path = study_file(tmp_path, "killed", space={"model.shortcut": ["A", "B", "none"]}, max_concurrent=1,
                      trainer=trainer)
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "ray_results"
    experiment = storage / "killed"
    driver = subprocess.Popen(
        [sys.executable, "-m", "ablate.cli", "run", str(path), "--tracking-uri", uri, "--storage-path", str(storage)],
        cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    tree: list[psutil.Process] = []
    try:
        # one trial ended, the next one part way, two checkpoints behind it (Tune's state names one): kill -9 then
        def one_ended_one_part_way() -> bool:
            latest = reported(experiment)
            return (any(r["status"] == "finished" for r in latest)
                    and any(r["status"] == "running" and r["iteration"] > 40 for r in latest))

        wait_for(lambda: one_ended_one_part_way() or driver.poll() is not None, 300, "a second trial's second report")
        assert driver.poll() is None, driver.communicate()[0]
        tree = process_tree(driver.pid)
        sockets = listening(tree)
        assert any(name == "gcs_server" for name, _, _ in sockets), sockets  # Ray and a worker are up
        assert [s for s in sockets if not s[1].startswith(LOOPBACK)] == [], "listening beyond loopback"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        end_all(tree or process_tree(driver.pid))  # Ray's processes, should they outlive their driver
    out = driver.communicate(timeout=60)[0]
    assert "joined the Ray cluster" not in out and "Token authentication" not in out, out

    before = all_runs(uri, "killed")
    assert any(run.info.status == "RUNNING" for run in before)  # what kill -9 leaves behind
    ended = {run.data.tags[layout.TAG_TRIAL]: run for run in role(before, layout.ROLE_TRIAL)
             if run.info.status == "FINISHED"}
    assert len(ended) >= 1
    # Where a kill can land: Tune has registered a trial's next checkpoint and deleted the previous one, but
    # not yet saved the state that names the next one. Made certain here for every trial part way: its
    # checkpoint moves to the next index, so Tune's saved state names a checkpoint that is gone.
    moved = []
    for trial_dir in (d for d in experiment.iterdir() if d.is_dir() and d.name not in ended):
        kept = sorted(trial_dir.glob("checkpoint_*"))
        if kept:
            index = int(kept[-1].name.removeprefix("checkpoint_"))
            moved.append(kept[-1].rename(trial_dir / f"checkpoint_{index + 1:06d}"))
    assert moved, sorted(p.name for p in experiment.iterdir())

    capfd.readouterr()
    assert run_study(load_study(path), resume=True, tracking_uri=uri, storage_path=storage) == 0
    assert f"resuming from {moved[0].name}" in capfd.readouterr().out  # put back under the name Tune's state holds
    after = all_runs(uri, "killed")
    assert [run.info.status for run in after if run.info.status == "RUNNING"] == []
    first, second = role(after, layout.ROLE_STUDY)
    assert (first.info.status, first.data.tags[layout.TAG_STATUS]) == ("KILLED", "interrupted")
    assert (second.info.status, second.data.tags[layout.TAG_STATUS]) == ("FINISHED", "finished")
    trials = role(after, layout.ROLE_TRIAL)
    assert len(trials) == 3 and len({run.data.tags[layout.TAG_TRIAL] for run in trials}) == 3  # none lost, none twice
    for run in trials:
        assert (run.info.status, run.data.tags[layout.TAG_STATUS]) == ("FINISHED", "finished")
        assert steps(uri, run) == [40, 80, 120, 160]  # every evaluation once
    for trial_id, run in ended.items():  # not trained again
        assert next(r for r in trials if r.data.tags[layout.TAG_TRIAL] == trial_id).info.end_time == run.info.end_time


# -- kill -9 of a trial's worker -------------------------------------------------------------------------


def _kill_worker_once_reported(experiment: Path, killed: list[int]) -> None:
    """SIGKILL the worker process of the (only) trial once it has reported past iteration 20."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        results = reported(experiment, iteration=20)
        if results:
            os.kill(results[0]["pid"], signal.SIGKILL)
            killed.append(results[0]["pid"])
            return
        time.sleep(0.02)


def test_kill_9_of_a_trial_worker_restarts_it_from_its_checkpoint_with_the_same_numbers(
    tmp_path, ray_session, capfd
):
    path = study_file(tmp_path, "worker", trainer={**TINY["trainer"], "iterations": 300, "eval_every": 20})
    study = load_study(path)
    finals = {}
    for name in ("calm", "killed"):
        uri, storage = f"sqlite:///{tmp_path / name / 'mlflow.db'}", tmp_path / name / "ray_results"
        killed: list[int] = []
        watcher = threading.Thread(target=_kill_worker_once_reported, args=(storage / "worker", killed), daemon=True)
        if name == "killed":
            watcher.start()
        assert run_study(study, tracking_uri=uri, storage_path=storage) == 0
        if watcher.is_alive():
            watcher.join(timeout=1)
        assert len(killed) == (name == "killed")
        run, = role(all_runs(uri, "worker"), layout.ROLE_TRIAL)
        assert steps(uri, run) == list(range(20, 301, 20))
        history = [m.value for m in sorted(MlflowClient(uri).get_metric_history(run.info.run_id, "train_loss"),
                                           key=lambda m: m.step)]
        finals[name] = ({key: run.data.metrics[key] for key in FINAL}, history)
    assert finals["killed"] == finals["calm"]  # exactly: the trainer resumes bit for bit
    out = capfd.readouterr()
    text = out.out + out.err
    assert text.count("its worker process died; it restarts from its last checkpoint") == 1, text
    assert "Traceback" not in text and "ActorDiedError" not in text, text


# -- a cluster of two nodes --------------------------------------------------------------------------------

_TWO_NODES = """
import json, sys
import ray
from ray.cluster_utils import Cluster
from ablate.search import run_study
from ablate.study import load_study

path, uri, storage = sys.argv[1:]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
try:
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    code = run_study(load_study(path), address=cluster.address, tracking_uri=uri, storage_path=storage)
    ray.init(address=cluster.address, log_to_driver=False)  # the cluster's records of the trials' actors
    nodes = {actor["Address"]["NodeID"] for actor in ray._private.state.actors().values()
             if actor["ActorClassName"] == "ImplicitFunc"}
    ray.shutdown()
    print(json.dumps({"code": code, "trial_nodes": len(nodes), "cluster_nodes": len(cluster.list_all_nodes())}))
finally:
    cluster.shutdown()
"""


def test_a_study_on_a_two_node_cluster_runs_trials_on_both_nodes(tmp_path):
    path = study_file(tmp_path, "two_nodes", space={"model.shortcut": ["A", "B"]}, max_concurrent=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, "-c", _TWO_NODES, str(path), uri, str(tmp_path / "ray_results")],
        cwd=tmp_path, env={**subprocess_env(), LOOPBACK_CLUSTER: "0"}, capture_output=True, text=True, timeout=480,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "joined the Ray cluster at 127.0.0.1:" in proc.stdout and "2 node(s), 2 CPUs" in proc.stdout, proc.stdout
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome == {"code": 0, "trial_nodes": 2, "cluster_nodes": 2}
    trials = role(all_runs(uri, "two_nodes"), layout.ROLE_TRIAL)
    assert sorted(run.data.tags[layout.TAG_STATUS] for run in trials) == ["finished", "finished"]


# -- a real MLflow server --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_a_study_recorded_on_a_real_mlflow_server(tmp_path, ray_session, capsys):
    port = _free_port()
    server = subprocess.Popen(
        ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "server_artifacts")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{uri}/health") or server.poll() is not None, 120, "the MLflow server")
        assert server.poll() is None, "mlflow server exited"
        path = study_file(tmp_path, "served", space={"model.shortcut": ["A", "none"]}, max_concurrent=2)
        common = ["--tracking-uri", uri]
        assert main(["run", str(path), *common, "--storage-path", str(tmp_path / "ray_results"),
                     "--set", "trainer.iterations=20"]) == 0
        assert main(["studies", *common]) == 0
        assert "served" in capsys.readouterr().out
        assert main(["report", "--study", "served", *common, "--out", str(tmp_path / "reports")]) == 0
        assert (tmp_path / "reports" / "served" / "report.html").stat().st_size > 0
        parent, = role(all_runs(uri, "served"), layout.ROLE_STUDY)
        logged = {item.path for item in MlflowClient(uri).list_artifacts(parent.info.run_id, layout.ARTIFACT_REPORT_DIR)}
        assert f"{layout.ARTIFACT_REPORT_DIR}/report.html" in logged
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers: the session started above
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
