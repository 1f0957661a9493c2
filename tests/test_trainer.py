"""The shared trainer on CPU with tiny synthetic data: schedule, warm-up, resume, determinism, divergence."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from ablate.config import DataConfig, ModelSpec, TrainConfig, TrainerConfig, WarmupConfig, with_overrides
from ablate.schedule import PaperWarmup, learning_rate
from ablate.trainer import CHECKPOINT_FILE, train

TIMING = ("images_per_s", "wall_time")


def tiny(**trainer) -> TrainConfig:
    """A 8-layer, width-8 net on 16x16 synthetic data: a few ms per step on CPU."""
    defaults = dict(iterations=30, batch_size=32, eval_every=10, lr=0.05, device="cpu")
    return TrainConfig(
        model=ModelSpec(n=1, base_width=8),
        data=DataConfig(name="synthetic", synthetic_shape=(3, 16, 16), synthetic_train=384,
                        synthetic_test=64, val_size=64),
        trainer=TrainerConfig(**(defaults | trainer)),
        seed=3,
    )


def without_timing(history):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in history]


# -- schedule -----------------------------------------------------------------------------------


def test_paper_schedule_at_the_papers_iterations():
    cfg = TrainerConfig()  # lr 0.1, /10 at 32k and 48k, stop at 64k
    total = cfg.run_length(batches_per_epoch=352)  # neither iterations nor epochs set: the paper's 64k
    assert total == 64000
    lrs = {it: learning_rate(cfg, it, total) for it in (0, 400, 31999, 32000, 47999, 48000, 64000)}
    assert lrs[0] == lrs[400] == lrs[31999] == pytest.approx(0.1)
    assert lrs[32000] == lrs[47999] == pytest.approx(0.01)
    assert lrs[48000] == lrs[64000] == pytest.approx(0.001)


def test_cosine_and_linear_ramp():
    cos = TrainerConfig(schedule="cosine", iterations=1000)
    assert learning_rate(cos, 0, 1000) == pytest.approx(0.1)
    assert learning_rate(cos, 500, 1000) == pytest.approx(0.05)
    assert learning_rate(cos, 1000, 1000) == pytest.approx(0.0)
    ramp = TrainerConfig(warmup=WarmupConfig(policy="linear", ramp_iterations=100))
    assert learning_rate(ramp, 0, 64000) == pytest.approx(0.001)
    assert learning_rate(ramp, 49, 64000) == pytest.approx(0.05)
    assert learning_rate(ramp, 100, 64000) == pytest.approx(0.1)


def test_paper_warmup_state_machine():
    cfg = TrainerConfig(warmup=WarmupConfig(policy="paper", check_every=20, max_iterations=400))
    warm = PaperWarmup.start(cfg)
    assert warm.active and learning_rate(cfg, 0, 64000, warming_up=warm.active) == pytest.approx(0.01)
    assert warm.needs_check(cfg, 20) and not warm.needs_check(cfg, 21)
    warm.update(cfg, 20, 0.85)  # still above 80% training error
    assert warm.active
    warm.update(cfg, 40, 0.79)
    assert not warm.active and warm.ended_at == 40
    assert learning_rate(cfg, 41, 64000, warming_up=warm.active) == pytest.approx(0.1)  # back to 0.1
    capped = PaperWarmup.start(cfg)
    capped.update(cfg, 400, 0.95)  # never got below 80%, but the cap ends it
    assert not capped.active and capped.ended_at == 400
    assert not PaperWarmup.start(TrainerConfig()).active


# -- training -----------------------------------------------------------------------------------


def test_reports_every_evaluation_with_the_documented_metrics():
    seen = []
    result = train(tiny(), seen.append)
    assert result.status == "finished" and result.history == seen
    assert [m["iteration"] for m in seen] == [10, 20, 30]
    assert [m["status"] for m in seen] == ["running", "running", "finished"]
    for m in seen:
        for key in ("epoch", "train_loss", "train_error", "val_error", "test_error", "lr", "images_per_s",
                    "wall_time", "grad_norm/stem", "grad_norm/stage1", "grad_norm/stage3", "grad_norm/head"):
            assert math.isfinite(m[key]), key
        assert 0 <= m["train_error"] <= 1 and 0 <= m["test_error"] <= 1
    assert seen[-1]["train_loss"] < seen[0]["train_loss"]  # it learns the class templates
    responses = result.layer_responses
    assert len(responses["names"]) == len(responses["std"]) == 6 * 1 + 1  # stem + 2 per basic unit
    assert all(s > 0 for s in responses["std"])


def test_epochs_set_the_length_in_epochs():
    seen = []
    train(tiny(iterations=None, epochs=2, eval_every=None), seen.append)  # 320 training images / 32 = 10 batches per epoch
    assert [m["iteration"] for m in seen] == [10, 20]
    assert [m["epoch"] for m in seen] == [1.0, 2.0]


def test_same_seed_same_numbers_other_seed_other_numbers():
    first, second = [], []
    train(tiny(), first.append)
    train(tiny(), second.append)
    assert without_timing(first) == without_timing(second)
    other = []
    train(with_overrides(tiny(), {"seed": 4}), other.append)
    assert without_timing(other) != without_timing(first)


def test_resume_after_a_crash_gives_the_same_numbers(tmp_path):
    class Crash(Exception):
        pass

    def crash_at_second_eval(metrics):
        if metrics["iteration"] == 14:
            raise Crash

    # eval every 7 iterations: the checkpoint falls in the middle of an epoch (10 batches per epoch), so the
    # numbers match only if the resumed run replays that epoch from its saved generator state (the one restore)
    with pytest.raises(Crash):
        train(tiny(eval_every=7), crash_at_second_eval, checkpoint_dir=tmp_path)
    assert (tmp_path / CHECKPOINT_FILE).exists()
    straight, resumed = [], []
    train(tiny(eval_every=7), straight.append)
    result = train(tiny(eval_every=7), resumed.append, checkpoint_dir=tmp_path, resume_from=tmp_path)
    assert [m["iteration"] for m in resumed] == [21, 28, 30]
    assert without_timing(result.history) == without_timing(straight)  # history carried over, numbers equal


def test_the_optimiser_is_built_from_the_recipe(tmp_path):
    """momentum, weight decay and Nesterov reach the SGD that trains: read back from its checkpointed state."""
    recipe = dict(momentum=0.7, weight_decay=3e-3, nesterov=True)
    train(tiny(iterations=2, eval_every=2, **recipe), lambda m: None, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    (group,) = state["optimizer"]["param_groups"]
    assert {key: group[key] for key in recipe} == recipe
    paper = tiny(iterations=2, eval_every=2).trainer  # the defaults are the paper's: 0.9, 1e-4, no Nesterov
    train(tiny(iterations=2, eval_every=2), lambda m: None, checkpoint_dir=tmp_path)
    (group,) = torch.load(tmp_path / CHECKPOINT_FILE, map_location="cpu", weights_only=True)["optimizer"]["param_groups"]
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (paper.momentum, paper.weight_decay, False)
    assert (paper.momentum, paper.weight_decay) == (0.9, 1e-4)


def test_paper_warmup_runs_at_low_lr_then_returns_to_base():
    cfg = tiny(iterations=40, eval_every=5, schedule="constant", warmup=WarmupConfig(policy="paper", check_every=5, max_iterations=30))
    seen = []
    train(cfg, seen.append)
    lrs = [m["lr"] for m in seen]
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[-1] == pytest.approx(0.05)  # back to the base lr, never stuck at the warm-up lr
    switch = next(i for i, lr in enumerate(lrs) if lr != pytest.approx(0.01))
    assert all(lr == pytest.approx(0.05) for lr in lrs[switch:])
    assert seen[switch - 1]["iteration"] <= 30  # within the cap


def test_nan_loss_ends_the_run_as_diverged_without_raising():
    seen = []
    result = train(tiny(lr=1e30, momentum=0.0, weight_decay=0.0, iterations=100, eval_every=50), seen.append)
    assert result.status == "diverged"
    assert seen and seen[-1]["status"] == "diverged"
    assert seen[-1]["iteration"] < 100 and math.isnan(seen[-1]["train_loss"])
    assert result.layer_responses is None


@pytest.mark.parametrize(
    "block,shortcut",
    [(b, s) for b in ("basic", "bottleneck", "preact", "preact_bottleneck") for s in ("A", "B", "C", "none")],
)
def test_one_step_for_every_block_and_shortcut(block, shortcut):
    cfg = with_overrides(tiny(iterations=2, eval_every=2), {"model.block": block, "model.shortcut": shortcut})
    result = train(cfg, lambda m: None)
    assert result.status == "finished"
    assert math.isfinite(result.final["train_loss"])


def test_bf16_and_channels_last_switches_run_on_cpu():
    result = train(tiny(iterations=4, eval_every=4, bf16=True, channels_last=True), lambda m: None)
    assert result.status == "finished" and math.isfinite(result.final["train_loss"])
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize("preset, expected", [(None, ":4096:8"), (":16:8", ":16:8")])
def test_importing_the_trainer_fixes_cublas_workspace_for_deterministic_cuda_runs(preset, expected):
    """PyTorch reads CUBLAS_WORKSPACE_CONFIG once, at a process's first cuBLAS call: the trainer sets it on import
    (keeping the user's own value), so ``trainer.deterministic`` on CUDA never meets cuBLAS's error."""
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    if preset is not None:
        env["CUBLAS_WORKSPACE_CONFIG"] = preset
    code = "import os, ablate.trainer; print(os.environ['CUBLAS_WORKSPACE_CONFIG'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected
