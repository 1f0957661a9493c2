"""ablate.checkpoint's rule for a diverged run, the same for plain and fused runs: a marker, never weights."""

from __future__ import annotations

import math

from ablate.checkpoint import CHECKPOINT_FILE, DIVERGED_FILE
from ablate.config import DataConfig, ModelSpec, TrainConfig, TrainerConfig
from ablate.trainer import train


def exploding() -> TrainConfig:
    return TrainConfig(
        model=ModelSpec(n=1, base_width=8),
        data=DataConfig(name="synthetic", synthetic_shape=(3, 16, 16), synthetic_train=384, synthetic_test=64,
                        val_size=64),
        trainer=TrainerConfig(iterations=100, batch_size=32, eval_every=50, lr=1e30, momentum=0.0, weight_decay=0.0,
                              device="cpu"),
        seed=3,
    )


def test_a_diverged_run_leaves_a_marker_and_resuming_it_keeps_it_ended(tmp_path):
    seen = []
    result = train(exploding(), seen.append, checkpoint_dir=tmp_path)
    assert result.status == "diverged"
    assert (tmp_path / DIVERGED_FILE).is_file() and not (tmp_path / CHECKPOINT_FILE).exists()  # no NaN weights
    again = []
    resumed = train(exploding(), again.append, checkpoint_dir=tmp_path, resume_from=tmp_path)
    assert resumed.status == "diverged" and again == []  # nothing trained, nothing reported anew
    assert len(resumed.history) == len(seen) and math.isnan(resumed.history[-1]["train_loss"])
    assert resumed.history[-1]["iteration"] == seen[-1]["iteration"]
