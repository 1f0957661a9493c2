"""The ``ablate`` command end to end, on tiny data: what a user types and what comes back.

In-process through ``ablate.cli.main`` (fast); one test runs the installed console script in a
subprocess to check that a user error prints one message and no traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datafiles import write_cifar10

from ablate.cli import main
from ablate.trainer import CHECKPOINT_FILE

REPO = Path(__file__).resolve().parents[1]


def test_models_lists_the_registry_with_exact_counts(capsys):
    assert main(["models", "resnet*"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "269,722" in out and "40,551,040" in out
    assert "resnet1202" in out and "19,421,274" in out and "2,829,238,912" in out
    for count in ("11,689,512", "21,797,672", "25,557,032", "44,549,160", "60,192,808"):  # at 1000 classes
        assert count in out
    assert "3x224x224" in out and "4,089,184,256" in out and "3.8G" in out
    assert "Table 1 of He et al. 2015 counts multiply-adds" in out
    assert main(["models", "resnet18_cifar", "--in-channels", "1", "--image-size", "28"]) == 0
    out = capsys.readouterr().out
    assert "1x28x28" in out and "11,172,810" in out and "Table 1 of" not in out
    assert main(["models", "nothing*"]) == 2
    assert "no registered model matches" in capsys.readouterr().err


def test_plan_json_lists_every_trial_without_training(capsys):
    assert main(["plan", str(REPO / "studies/shortcuts.yaml"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8 * 3  # {A, B, C, plain} x {20, 56} layers, 3 seeds
    resnet20 = next(r for r in rows if r["label"] == "resnet20")
    assert resnet20["params"] == 269_722 and resnet20["macs"] == 40_551_040
    assert resnet20["train_flops"] == 6 * 40_551_040 * 64_000 * 128


def test_train_on_tiny_cifar_files_then_resume_from_its_checkpoint(tmp_path, capsys):
    write_cifar10(tmp_path / "data", n_train_per_batch=20, n_test=20)  # 100 training images
    ckpt = tmp_path / "ckpt"
    args = ["train", "--data", "cifar10", "--data-root", str(tmp_path / "data"), "--n", "1", "--device", "cpu",
            "--set", "data.val_size=20", "--set", "trainer.batch_size=16", "--set", "model.base_width=8",
            "--checkpoint-dir", str(ckpt)]
    assert main([*args, "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "training resnet8-w8 on cifar10" in out and "epoch   1.00" in out and "status: finished" in out
    assert (ckpt / CHECKPOINT_FILE).exists()
    assert main([*args, "--epochs", "2", "--resume"]) == 0  # continues: only epoch 2 is trained
    out = capsys.readouterr().out
    assert "epoch   2.00" in out and "epoch   1.00" not in out


def test_train_errors_are_one_message_with_exit_status_2(tmp_path, capsys):
    assert main(["train", "--data", "cifar10", "--data-root", str(tmp_path), "--iterations", "1",
                 "--set", "data.download=false"]) == 2
    err = capsys.readouterr().err
    assert "cifar" in err.lower() and str(tmp_path) in err  # where it looked
    assert main(["train", "--model", "resnet21"]) == 2
    assert "resnet20" in capsys.readouterr().err  # close matches
    assert main(["train", "--set", "trainer.warmup.policy=sometimes"]) == 2
    assert "trainer.warmup.policy" in capsys.readouterr().err


TINY_SYNTHETIC = ["--data", "synthetic", "--n", "1", "--device", "cpu", "--set", "model.base_width=4",
                  "--set", "data.synthetic_shape=[3,8,8]", "--set", "data.synthetic_train=96",
                  "--set", "data.val_size=32", "--set", "trainer.batch_size=16", "--set", "trainer.eval_every=5"]


def test_set_values_parse_the_same_in_train_and_plan(capsys):
    """One parser for every command's --set: 1e1 is the integer 10 in both, 2.5 is refused by both alike."""
    assert main(["train", *TINY_SYNTHETIC, "--set", "trainer.iterations=1e1"]) == 0
    out = capsys.readouterr().out
    assert "it      5" in out and "it     10" in out and "status: finished" in out
    assert main(["plan", str(REPO / "studies/shortcuts.yaml"), "--json", "--set", "trainer.iterations=1e3"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["iterations"] for row in rows} == {1000} and all(type(row["iterations"]) is int for row in rows)

    messages = []
    for command in (["train", *TINY_SYNTHETIC], ["plan", str(REPO / "studies/shortcuts.yaml")]):
        assert main([*command, "--set", "trainer.iterations=2.5e0"]) == 2
        err = capsys.readouterr().err
        assert "trainer.iterations" in err and "fractional part" in err and "2.5" in err
        messages.append(err.rsplit("trainer.iterations: ", 1)[1])
    assert messages[0] == messages[1]  # the same words after the key, whichever command
    for command in ("train", "plan"):
        assert main([command, *([str(REPO / "studies/shortcuts.yaml")] if command == "plan" else []),
                     "--set", "trainer.iterations"]) == 2
        assert "expected KEY=VALUE" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback_while_user_errors_exit_2(tmp_path, monkeypatch, capsys):
    """Only UserError is the user's: a ValueError from inside the trainer (a bug) is raised, not printed as exit 2."""
    from ablate.trainer import PlainEngine

    def broken_step(engine, batches, lrs, *, grad_norms):
        raise ValueError("a bug inside the step")

    monkeypatch.setattr(PlainEngine, "step", broken_step)
    with pytest.raises(ValueError, match="a bug inside the step"):
        main(["train", *TINY_SYNTHETIC, "--iterations", "5"])
    monkeypatch.undo()
    capsys.readouterr()

    assert main(["train", *TINY_SYNTHETIC, "--set", "data.synthetic_train=40"]) == 2  # 8 training images
    assert "fewer than one batch" in capsys.readouterr().err
    assert main(["train", *TINY_SYNTHETIC, "--checkpoint-dir", str(tmp_path), "--resume"]) == 2
    assert f"no checkpoint.pt in {tmp_path}" in capsys.readouterr().err


def test_iterations_and_epochs_together_are_refused(capsys):
    assert main(["train", *TINY_SYNTHETIC, "--epochs", "1", "--set", "trainer.iterations=10"]) == 2
    err = capsys.readouterr().err
    assert "iterations (10) and epochs (1) are both set" in err and "null" in err
    shortcuts = str(REPO / "studies/shortcuts.yaml")  # the file sets iterations: 64000
    assert main(["plan", shortcuts, "--set", "trainer.epochs=2"]) == 2
    assert "iterations (64000) and epochs (2) are both set" in capsys.readouterr().err
    assert main(["plan", shortcuts, "--json", "--set", "trainer.epochs=2", "--set", "trainer.iterations=null"]) == 0
    assert {row["iterations"] for row in json.loads(capsys.readouterr().out)} == {2 * (45_000 // 128)}


def test_invalid_study_exits_2_with_one_message_no_traceback_and_no_records(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "question": "?", "model": {"shortcut": "D"}}))
    db = tmp_path / "mlflow.db"
    proc = subprocess.run(
        [sys.executable, "-m", "ablate.cli", "run", str(bad), "--tracking-uri", f"sqlite:///{db}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr and "model.shortcut" in proc.stderr and "'A'" in proc.stderr
    assert not db.exists()  # validation comes before anything is written


@pytest.mark.slow
def test_run_then_studies_then_report(tmp_path, ray_session, capsys):
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump({
        "name": "tiny_cli", "question": "Does the command line run a study end to end?",
        "data": {"name": "synthetic", "synthetic_shape": [3, 16, 16], "synthetic_train": 320,
                 "synthetic_test": 64, "val_size": 64},
        "model": {"base_width": 8},
        "trainer": {"iterations": 10, "batch_size": 32, "eval_every": 5, "device": "cpu"},
        "space": {"model.n": [1, 2]},
        "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": 2,
    }))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = ["--tracking-uri", uri]
    assert main(["run", str(study), "--set", "seeds=[0]", *store, "--storage-path", str(tmp_path / "ray")]) == 0
    assert "study tiny_cli: finished" in capsys.readouterr().out
    assert main(["studies", *store]) == 0
    assert "tiny_cli" in capsys.readouterr().out
    assert main(["report", "--study", "tiny_cli", *store, "--out", str(tmp_path / "reports")]) == 0
    out = capsys.readouterr().out
    assert "resnet8" in out and "resnet14" in out
    for name in ("report.md", "report.html", "curves.png", "layer_responses.png"):
        assert (tmp_path / "reports" / "tiny_cli" / name).stat().st_size > 0
    assert main(["report", "--study", "nope", *store]) == 2
    assert "tiny_cli" in capsys.readouterr().err  # the unknown name's error lists what is recorded


def test_run_with_missing_data_is_one_error_before_anything_starts(tmp_path, capsys):
    """Checked once in the driver: no trial starts (and fails, and retries), nothing is recorded."""
    study = tmp_path / "nodata.yaml"
    study.write_text(yaml.safe_dump({
        "name": "nodata", "question": "?", "data": {"name": "cifar10", "root": str(tmp_path / "empty"),
                                                   "download": False},
        "space": {"model.n": [1, 2]}, "resources": {"cpu": 1, "gpu": 0},
    }))
    db = tmp_path / "mlflow.db"
    assert main(["run", str(study), "--tracking-uri", f"sqlite:///{db}", "--storage-path", str(tmp_path / "ray")]) == 2
    assert "CIFAR-10" in capsys.readouterr().err
    assert not db.exists() and not (tmp_path / "ray").exists()
