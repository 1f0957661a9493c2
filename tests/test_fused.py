"""Fused trials (ablate.fused) on CPU, fp32: each member reports what ``train`` reports for it alone.

Tolerances (measured on the project's CPU machine, fp32, NCHW): train_loss agrees to 1.6e-6 relative
and the errors exactly; gradient norms of the first layers are the most sensitive figures: train()
against itself with only the conv layout changed (channels_last, the same maths) already differs by
1.4e-3 after 4 steps on this net, and fused against alone by up to 4e-3 over 20 steps.
"""

from __future__ import annotations

import math
from functools import cache

import pytest

from ablate.config import DataConfig, ModelSpec, TrainConfig, TrainerConfig, WarmupConfig
from ablate.fused import check_fusable, fuse_key, member_dir, train_fused
from ablate.trainer import CHECKPOINT_FILE, train

LOSS_RTOL = 1e-5
GRAD_NORM_RTOL = 1e-2
RESPONSE_RTOL = 1e-3
TIMING = ("images_per_s", "wall_time")


def tiny(seed: int = 3, **trainer) -> TrainConfig:
    """8 layers, width 8, 16x16 synthetic images, fp32 NCHW: a few ms per step and member on CPU."""
    defaults = dict(iterations=20, batch_size=32, eval_every=10, lr=0.05, device="cpu", bf16=False,
                    channels_last=False)
    return TrainConfig(
        model=ModelSpec(n=1, base_width=8),
        data=DataConfig(name="synthetic", synthetic_shape=(3, 16, 16), synthetic_train=384, synthetic_test=64,
                        val_size=64),
        trainer=TrainerConfig(**(defaults | trainer)),
        seed=seed,
    )


MEMBERS = (
    tiny(3),
    tiny(3, lr=0.1, weight_decay=5e-4, warmup=WarmupConfig(policy="paper", check_every=5, max_iterations=15)),
    tiny(5, momentum=0.5, warmup=WarmupConfig(policy="linear", ramp_iterations=10)),
)


@cache
def alone(config: TrainConfig) -> tuple[dict, ...]:
    seen = []
    train(config, seen.append)
    return tuple(seen)


def assert_same_run(fused: list[dict], solo: list[dict] | tuple[dict, ...], *, loss_rtol: float = LOSS_RTOL,
                    grad_norm_rtol: float = GRAD_NORM_RTOL) -> None:
    """Report by report: the same keys, counters and lr; losses, errors, norms within the tolerances."""
    assert [m["iteration"] for m in fused] == [m["iteration"] for m in solo]
    for f, s in zip(fused, solo):
        assert f.keys() == s.keys()
        assert (f["status"], f["epoch"], f["lr"]) == (s["status"], s["epoch"], s["lr"])
        if math.isnan(s["train_loss"]):
            assert math.isnan(f["train_loss"])
            continue
        assert f["train_loss"] == pytest.approx(s["train_loss"], rel=loss_rtol)
        for key in ("train_error", "val_error", "test_error"):
            assert f.get(key) == pytest.approx(s.get(key), abs=1.01 / 64), key  # at most one image apart
        for key in (k for k in s if k.startswith("grad_norm/")):
            assert f[key] == pytest.approx(s[key], rel=grad_norm_rtol), key
        if "layer_responses" in s:
            assert f["layer_responses"]["names"] == s["layer_responses"]["names"]
            assert f["layer_responses"]["std"] == pytest.approx(s["layer_responses"]["std"], rel=RESPONSE_RTOL)


def test_fused_members_report_what_each_reports_alone():
    seen = [[] for _ in MEMBERS]
    results = train_fused(MEMBERS, [s.append for s in seen])
    assert [r.status for r in results] == ["finished"] * 3
    for config, reports, result in zip(MEMBERS, seen, results):
        assert result.history == reports and result.layer_responses == reports[-1]["layer_responses"]
        assert_same_run(reports, alone(config))
    assert seen[1][0]["lr"] == pytest.approx(0.01)  # member 1 still in the paper's warm-up at iteration 10
    assert seen[0][0]["train_loss"] != seen[1][0]["train_loss"]  # members did train differently


def test_divergence_of_one_member_stops_only_that_member():
    exploding = tiny(4, lr=1e30, momentum=0.0, weight_decay=0.0, iterations=30)
    steady = tiny(3, iterations=30)
    seen = [[], []]
    results = train_fused([exploding, steady], [s.append for s in seen])
    assert [r.status for r in results] == ["diverged", "finished"]
    assert seen[0][-1]["status"] == "diverged" and results[0].layer_responses is None
    assert_same_run(seen[0], alone(exploding))  # diverged at the same iteration as alone
    assert_same_run(seen[1], alone(steady))  # the other member never noticed


def test_resumed_group_continues_exactly_and_a_member_resumes_alone(tmp_path):
    configs = [tiny(3, eval_every=7), tiny(5, eval_every=7, lr=0.1)]

    class Crash(Exception):
        pass

    def crash_at_second_eval(metrics):
        if metrics["iteration"] == 14:
            raise Crash

    with pytest.raises(Crash):
        train_fused(configs, [crash_at_second_eval, lambda m: None], checkpoint_dir=tmp_path)
    assert all((member_dir(tmp_path, i) / CHECKPOINT_FILE).exists() for i in range(2))
    straight, resumed = [[], []], [[], []]
    train_fused(configs, [s.append for s in straight])
    results = train_fused(configs, [s.append for s in resumed], resume_from=tmp_path)
    for result, full in zip(results, straight):
        assert [m["iteration"] for m in result.history] == [7, 14, 20]
        assert_same_run(result.history, full)  # the history before the crash came with the checkpoint
    solo = train(configs[1], lambda m: None, resume_from=member_dir(tmp_path, 1))  # train() reads the format
    assert_same_run(solo.history, straight[1])


def test_only_configs_that_share_shapes_data_and_length_fuse():
    check_fusable([tiny(3), tiny(4, lr=0.2, momentum=0.8, weight_decay=0.0, schedule="cosine")])
    assert fuse_key(tiny(3)) == fuse_key(tiny(9, lr=0.5, warmup=WarmupConfig(policy="linear")))
    for other in (tiny(3, iterations=21), tiny(3, batch_size=16)):
        assert fuse_key(other) != fuse_key(tiny(3))
        with pytest.raises(ValueError, match="differ in trainer"):
            check_fusable([tiny(3), other])
    with pytest.raises(ValueError, match="differ in model.n"):
        check_fusable([tiny(3), tiny(3).model_copy(update={"model": ModelSpec(n=2, base_width=8)})])
    with pytest.raises(ValueError, match="one report callback per config"):
        train_fused([tiny(3), tiny(4)], [print])


COMPILED_LOSS_RTOL = 1e-4  # Inductor may fuse and reorder float operations


def compiled(config: TrainConfig) -> TrainConfig:
    trainer = config.trainer.model_copy(update={"compile": True, "compile_mode": "reduce-overhead"})
    return config.model_copy(update={"trainer": trainer})


@pytest.mark.slow
def test_compiled_trainer_and_compiled_fused_runs_follow_the_eager_runs():
    """The compiled paths that the GPU check times with CUDA graphs, traced and compiled here by Inductor
    (``reduce-overhead`` without CUDA compiles as ``default``): a GPU session meets no tracing failure first."""
    from torch._dynamo.utils import counters

    members = [tiny(3, iterations=10, eval_every=5), tiny(4, iterations=10, eval_every=5, lr=0.1, momentum=0.5)]
    seen = [[] for _ in members]
    counters.clear()
    results = train_fused([compiled(c) for c in members], [s.append for s in seen])
    assert [r.status for r in results] == ["finished", "finished"]
    # the vmapped step and the evaluation, each one whole graph: CUDA graphs capture them entire
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]
    for config, reports in zip(members, seen):
        assert_same_run(reports, alone(config), loss_rtol=COMPILED_LOSS_RTOL)
    assert_same_run(alone(compiled(members[0])), alone(members[0]), loss_rtol=COMPILED_LOSS_RTOL)
