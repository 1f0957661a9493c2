"""The trainer's speed switches keep accuracy: bf16 autocast + channels_last follow the fp32 NCHW loss trajectory.

Same seed, so the same initialisation and the same batches (the trainer's data order comes from its
own CPU generator and does not depend on the switches); ``eval_every=1``, so each report is one step's
loss. The comparison is the relative difference of each step's loss and of the mean over the steps.

Tolerances, and why. bf16 keeps 8 significant bits (unit roundoff 2^-8 ~ 4e-3, about 3 decimal
digits); autocast runs convolutions and matmuls in bf16 with fp32 accumulation and keeps the loss in
fp32, so one step's loss moves by far less than 4e-3. Measured on this net (seeds 0, 3, 5, lr 0.02,
8 steps, Xeon with AMX-BF16): bf16 + channels_last at most 8e-4 per step and 2.2e-4 on the mean;
fp32 channels_last at most 2e-5 per step (summation order only; 1e-7 on the first step). A different
seed moves the trajectory by 3e-2 to 9e-2 at its worst step, far outside the tolerances, which the last
test checks so these tests can tell a broken switch from rounding.

Why lr 0.02 rather than the paper's 0.1: in the first steps from random initialisation at lr 0.1,
training amplifies any rounding difference, the switch's or not (fp32 channels_last alone reaches 5e-2
by step 10 on ResNet-20 at batch 32); that measures the chaos of early training, not the switch.
"""

from __future__ import annotations

import pytest
import torch

from ablate.config import DataConfig, ModelSpec, TrainConfig, TrainerConfig
from ablate.trainer import train

STEPS = 8
BF16_STEP_TOL = 5e-3  # relative, each step's loss (measured <= 8e-4)
BF16_MEAN_TOL = 2e-3  # relative, mean loss over the steps (measured <= 2.2e-4)
CHANNELS_LAST_STEP_TOL = 1e-4  # relative, fp32 channels_last, each step (measured <= 2e-5)


def config(*, bf16: bool, channels_last: bool, seed: int = 0) -> TrainConfig:
    """An 8-layer, width-8 net on 16x16 synthetic images, batch 32, one report per step, on the CPU."""
    return TrainConfig(
        model=ModelSpec(n=1, base_width=8),
        data=DataConfig(name="synthetic", synthetic_shape=(3, 16, 16), synthetic_train=32 * STEPS,
                        synthetic_test=16, val_size=0),
        trainer=TrainerConfig(iterations=STEPS, batch_size=32, eval_every=1, lr=0.02, schedule="constant",
                              device="cpu", bf16=bf16, channels_last=channels_last),
        seed=seed,
    )


def step_losses(cfg: TrainConfig) -> torch.Tensor:
    seen = []
    result = train(cfg, seen.append)
    assert result.status == "finished" and [m["iteration"] for m in seen] == list(range(1, STEPS + 1))
    return torch.tensor([m["train_loss"] for m in seen], dtype=torch.float64)


def relative(losses: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(largest relative difference of one step's loss, relative difference of the mean loss)."""
    per_step = ((losses - reference).abs() / reference).max().item()
    mean = (abs(losses.mean() - reference.mean()) / reference.mean()).item()
    return per_step, mean


@pytest.fixture(scope="module")
def fp32_nchw() -> torch.Tensor:
    return step_losses(config(bf16=False, channels_last=False))


def test_bf16_channels_last_follows_the_fp32_trajectory(fp32_nchw):
    per_step, mean = relative(step_losses(config(bf16=True, channels_last=True)), fp32_nchw)
    assert per_step < BF16_STEP_TOL, f"bf16 + channels_last moved one step's loss by {per_step:.1e}"
    assert mean < BF16_MEAN_TOL, f"bf16 + channels_last moved the mean loss by {mean:.1e}"


def test_fp32_channels_last_matches_nchw_closely(fp32_nchw):
    per_step, _ = relative(step_losses(config(bf16=False, channels_last=True)), fp32_nchw)
    assert per_step < CHANNELS_LAST_STEP_TOL, f"fp32 channels_last moved one step's loss by {per_step:.1e}"


def test_another_seed_falls_outside_the_tolerance(fp32_nchw):
    """The tolerances are tight enough to notice a different trajectory at all."""
    per_step, _ = relative(step_losses(config(bf16=False, channels_last=False, seed=1)), fp32_nchw)
    assert per_step > BF16_STEP_TOL
