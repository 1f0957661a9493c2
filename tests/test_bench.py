"""The benchmark on a tiny setting: its figures are positive and consistent, the CLI prints them as JSON.

No timing thresholds: the speed targets are figures the benchmark prints (docs/BENCHMARKS.md), never
assertions of a test that shares its machine with others.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ablate.perf.bench import (
    AugmentedImages,
    _compile_payoff,
    _concurrent_images_per_s,
    measure_fused,
    bench_config,
    format_bench,
    run_bench,
)
from ablate.cli import main
from ablate.config import ModelSpec

TINY = ModelSpec(n=1, base_width=8)  # resnet8-w8: a few ms per step on CPU
FIGURES = ("images_per_s", "baseline_images_per_s", "ratio", "peak_memory_mb", "baseline_peak_memory_mb")


@pytest.fixture(scope="module")
def result():
    return run_bench(model=TINY, device="cpu", batch_size=16, steps=2, warmup_steps=1)


def test_bench_figures_are_positive_and_consistent(result):
    assert result["model"] == "resnet8-w8" and result["device"] == "cpu" and result["memory"] == "peak_rss"
    assert (result["batch_size"], result["steps"], result["warmup_steps"]) == (16, 2, 1)
    for key in FIGURES:
        assert result[key] > 0, key
    assert result["ratio"] == pytest.approx(result["images_per_s"] / result["baseline_images_per_s"])
    assert result["baseline_worker_peak_rss_mb"] > 0  # the loader workers ran, and were measured apart
    assert all(isinstance(result[k], bool) for k in ("bf16", "channels_last", "compile"))
    assert "compile_seconds" not in result  # only measured with compile=True
    json.dumps(result)  # the CLI prints it as JSON


def test_format_bench_shows_both_pipelines(result):
    text = format_bench(result)
    assert "shared trainer" in text and "conventional (2 workers" in text
    assert f"{result['images_per_s']:,.0f}" in text and f"{result['baseline_images_per_s']:,.0f}" in text
    assert f"ratio: {result['ratio']:.2f}x" in text


def test_bench_config_covers_every_step_with_one_epoch():
    cfg = bench_config("resnet56", batch_size=64, steps=7, warmup_steps=3, bf16=False)
    assert cfg.model.name == "resnet56" and cfg.trainer.bf16 is False and cfg.trainer.channels_last is None
    assert cfg.data.synthetic_train == 64 * 10 and cfg.data.val_size == 0
    assert (cfg.trainer.iterations, cfg.trainer.eval_every) == (10, 3)
    with pytest.raises(ValueError, match="warmup_steps >= 1"):
        bench_config("resnet20", warmup_steps=0)
    with pytest.raises(ValueError, match="unknown model"):
        bench_config("resnet21")


def test_compile_payoff_arithmetic():
    eager = {"images_per_s": 1000.0, "untimed_seconds": 3.0}
    compiled = {"images_per_s": 2000.0, "untimed_seconds": 33.0}
    payoff = _compile_payoff(compiled, eager, batch_size=100)  # saves 0.05 s per step; costs 30 s
    assert payoff["compile_seconds"] == pytest.approx(30.0)
    assert payoff["compile_speedup"] == pytest.approx(2.0)
    assert payoff["compile_break_even_steps"] == 600
    slower = _compile_payoff({"images_per_s": 900.0, "untimed_seconds": 33.0}, eager, batch_size=100)
    assert slower["compile_break_even_steps"] is None


def test_baseline_dataset_augments_like_the_paper():
    """Every sample is one of the (2 * 4 + 1)^2 crops of the zero-padded image, possibly flipped, normalised."""
    image = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    data = AugmentedImages(image, torch.tensor([7]), mean=mean, std=std)
    padded = np.pad(image[0].numpy(), ((0, 0), (4, 4), (4, 4))).astype(np.float32) / 255
    padded = (padded - mean.numpy()[:, None, None]) / std.numpy()[:, None, None]
    crops = [padded[:, i : i + 8, j : j + 8] for i in range(9) for j in range(9)]
    candidates = np.stack(crops + [c[:, :, ::-1] for c in crops])  # (162, 3, 8, 8)
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        x, label = data[0]
        assert label == 7 and x.dtype == torch.float32 and x.shape == (3, 8, 8)
        match = np.abs(candidates - x.numpy()).reshape(len(candidates), -1).max(1) < 1e-5
        assert match.any()
        seen.add(int(match.argmax()))
    assert len(seen) > 10  # the crops and flips are random


@pytest.mark.slow
def test_trials_sharing_the_device_are_timed_together():
    config = bench_config(TINY, batch_size=16, steps=2, warmup_steps=2, device="cpu")
    assert _concurrent_images_per_s(config, 2) > 0  # two spawned trainer runs met at the barrier and finished
    with pytest.raises(ValueError, match="trials must be >= 1"):
        run_bench(model=TINY, device="cpu", trials=0)


@pytest.mark.slow
def test_cli_bench_prints_one_json_object(capsys):
    argv = ["bench", "--model", "resnet20", "--device", "cpu", "--batch-size", "8", "--steps", "1",
            "--warmup-steps", "1", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "resnet20" and result["batch_size"] == 8
    assert result["ratio"] == pytest.approx(result["images_per_s"] / result["baseline_images_per_s"])


def test_fused_runs_are_timed_in_all_and_formatted(result):
    config = bench_config(TINY, batch_size=16, steps=2, warmup_steps=1, device="cpu")
    fused = measure_fused(config, 2)  # in this process: two seeds fused, every member's timed images counted
    assert fused["images_per_s"] > 0 and fused["peak_memory_mb"] > 0
    shown = format_bench(result | {"fuse": 2, "fused_images_per_s": 1234.0, "fused_speedup": 0.5,
                                   "fused_peak_memory_mb": 10.0})
    assert "2 runs fused: 1,234 images/s in all, 0.50x the same runs one after another" in shown
    with pytest.raises(ValueError, match="fuse must be >= 1"):
        run_bench(model=TINY, device="cpu", fuse=0)
