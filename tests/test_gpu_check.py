"""scripts/gpu_check.sh's Python side on a machine without CUDA, as bare as the lent GPU machines.

Those machines have no Ray, MLflow or Optuna: every subprocess here runs with a PYTHONPATH whose
``ray``, ``mlflow`` and ``optuna`` packages raise ImportError, so any import of them on the path fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
GPU_CHECK = load_script(ROOT / "scripts" / "gpu_check.py")
BUDGET_S, TARGETS, last_json, launch, markdown, plan, summarise = (
    getattr(GPU_CHECK, name) for name in ("BUDGET_S", "TARGETS", "last_json", "launch", "markdown", "plan", "summarise"))

ABSENT = ("ray", "mlflow", "optuna")


@pytest.fixture(scope="module")
def bare_env(tmp_path_factory) -> dict[str, str]:
    poisoned = tmp_path_factory.mktemp("absent")
    for name in ABSENT:
        (poisoned / name).mkdir()
        (poisoned / name / "__init__.py").write_text(f"raise ImportError('{name} is absent on the GPU machines')\n")
    path = os.pathsep.join([str(ROOT), str(poisoned), os.environ.get("PYTHONPATH", "")])
    return os.environ | {"PYTHONPATH": path}


def python(code_or_args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the path of a machine without CUDA")
def test_without_cuda_it_says_so_and_exits_0(bare_env, tmp_path):
    done = python(["scripts/gpu_check.py", "--out", str(tmp_path)], bare_env)
    assert done.returncode == 0, done.stderr
    assert "no CUDA device here" in done.stdout and not list(tmp_path.iterdir())


def test_trainer_fused_and_bench_paths_import_neither_ray_nor_mlflow(bare_env):
    code = """
import sys
import ablate.perf.bench, ablate.perf.estimate, ablate.cli
from ablate.config import DataConfig, ModelSpec, TrainConfig, TrainerConfig
from ablate.fused import train_fused
from ablate.trainer import train
cfg = TrainConfig(model=ModelSpec(n=1, base_width=4), data=DataConfig(name="synthetic", synthetic_shape=(3, 8, 8),
                  synthetic_train=64, synthetic_test=16, val_size=16),
                  trainer=TrainerConfig(iterations=2, batch_size=16, device="cpu"))
assert train(cfg, lambda m: None).status == "finished"
assert [r.status for r in train_fused([cfg, cfg.model_copy(update={"seed": 1})], [print, print])] == ["finished"] * 2
assert ablate.cli.main(["models", "resnet20"]) == 0
print(sorted({m.split(".")[0] for m in sys.modules} & {"ray", "mlflow", "optuna", "torchvision"}))
"""
    done = python(["-c", code], bare_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_summary_sets_the_figures_against_the_targets():
    def bench(model, ratio, images, compile=False, **extra):
        result = dict(model=model, ratio=ratio, images_per_s=images, baseline_images_per_s=images / ratio,
                      peak_memory_mb=100.0, compile=compile, **extra)
        args = dict(model=model, compile=compile, compile_mode="reduce-overhead")
        return {"kind": "bench", "args": args, "status": "ok", "seconds": 10.0, "result": result}

    items = [
        bench("resnet20", 8.0, 40_000.0, trials=4, concurrent_speedup=3.5, fuse=4, fused_speedup=5.0),
        bench("resnet20", 12.0, 60_000.0, compile=True, compile_seconds=40.0, compile_speedup=1.5),
        bench("resnet110", 9.0, 18_000.0),
        {"kind": "fused", "args": {"model": "resnet20", "compile": True, "compile_mode": "reduce-overhead"},
         "status": "ok", "seconds": 30.0, "result": {"fuse": 4, "images_per_s": 240_000.0, "peak_memory_mb": 1.0}},
        {"kind": "fashion", "args": {}, "status": "timeout", "seconds": 120.0, "error": "killed after 120 s"},
    ]
    summary = summarise({"device_name": "H100", "memory_gb": 80, "torch": "2.11", "cuda": "13.0", "python": "3.12",
                         "cpu_count": 16}, items)
    targets = summary["targets"]
    assert set(targets) == set(TARGETS)
    assert targets["resnet20_ratio"] == {"measured": 12.0, "target": 10.0, "met": True}  # the best variant counts
    assert targets["resnet110_images_per_s"]["met"] is False
    assert targets["colocated_speedup"]["measured"] == 3.5
    assert summary["fused_speedup"] == {"resnet20 eager": 5.0, "resnet20 compiled": 4.0}
    text = markdown(summary)
    assert "| resnet20_ratio >= 10 | 12.00 | True |" in text and "## fashion: timeout" in text
    assert text.startswith("# GPU check: H100 (80 GB), torch 2.11, CUDA 13.0")
    cpu = markdown(summarise({"device_name": None, "memory_gb": None, "torch": "2.13", "cuda": None, "python": "3.11",
                              "cpu_count": 2}, []))
    assert cpu.startswith("# GPU check: no GPU (--smoke: CPU), torch 2.13") and "None GB" not in cpu


def test_an_item_that_prints_after_its_result_or_fails_is_recorded_and_the_check_goes_on():
    assert last_json('{"images_per_s": 5.0}\nW1122 some library line\n') == {"images_per_s": 5.0}
    assert last_json("not json\n[1, 2]\n") is None
    failed = launch({"kind": "nonsense", "args": {}}, timeout=120)
    assert failed["status"] == "error" and "unknown item 'nonsense'" in failed["error"]


def test_the_plan_starts_the_target_items_within_the_budget_and_the_smoke_plan_runs_on_cpu():
    """Every item starts only with ``need`` seconds left and runs at most ``cap``: the items the targets need
    (the CUDA tests, the eager benches, compiled ResNet-110) must all start within the default budget; later
    items run as time allows (their needs together exceed it)."""
    full = plan(smoke=False)
    assert all(0 < i["need"] <= i["cap"] for i in full)
    assert sum(i["need"] for i in full[:4]) <= BUDGET_S
    assert full[3]["args"]["model"] == "resnet110" and full[3]["args"].get("compile")
    assert [i["kind"] for i in full][:5] == ["tests", "bench", "bench", "bench", "fashion"]  # cheap items first
    assert {i["args"]["model"] for i in full if i["kind"] == "bench"} == {"resnet20", "resnet56", "resnet110"}
    assert all(i["args"].get("device", "cuda") == "cuda" for i in full)
    assert all(i["args"].get("device", "cpu") == "cpu" and not i["args"].get("compile") for i in plan(smoke=True))


@pytest.mark.slow
def test_smoke_run_checks_every_item_on_the_cpu(bare_env, tmp_path):
    done = python(["scripts/gpu_check.py", "--smoke", "--out", str(tmp_path), "--budget", "4000"], bare_env)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [(i["kind"], i["status"]) for i in summary["items"]] == [(i["kind"], "ok") for i in plan(smoke=True)], \
        [i.get("error") for i in summary["items"]]
    assert summary["items"][0]["result"]["returncode"] == 0  # the CUDA tests: collected, skipped here
    assert summary["targets"]["colocated_speedup"]["measured"] > 0
    assert summary["fused_speedup"]["resnet20 eager"] > 0
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")
