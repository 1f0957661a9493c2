"""How long a study would take on this machine: its FLOPs over the device's measured training rate.

``seconds = (training FLOPs + evaluation FLOPs) / rate``, summed over the study's trials:

- training: ``6 * macs * iterations * batch_size`` per trial (:func:`ablate.study.plan_rows`);
- evaluation: ``2 * macs * images`` per evaluation (validation split + test set), one evaluation
  every ``trainer.eval_every`` iterations (else every epoch) and one at the end;
- rate: training FLOP/s of the shared trainer on the device the trials would use (CUDA when the study
  asks for a GPU and there is one, else the CPU), measured by a short calibration on the study's own
  cheapest net at its batch size (a few steps on synthetic images of its data set's shape, a few
  seconds): small nets run at a fraction of a big net's FLOP/s, and the cheapest is the least efficient,
  so the estimate errs long. On a CPU timed in CPU seconds on one thread, times the cores, so a busy
  machine does not make the study look longer than it is once it has the machine; shared by the trials
  that run at once (a study that uses fewer cores than the machine has gets that share of the rate);
- start: :data:`TRIAL_START_S` per Ray trial (a fused one trains ``fuse`` runs), over those that run at
  once. Fused training is costed at the same FLOP/s as the runs alone (about so on a CPU, docs/BENCHMARKS.md).

Measured against real runs on a 2-core Xeon (docs/BENCHMARKS.md; the calibration of a width-8 net varied
from 33 to 52 GFLOP/s with the machine's load): quickstart estimated 4 min 5 s to 5 min 47 s, run in
4 min 13 s; unit_variants 33 to 41 min against 31 min; depth_sweep 41 to 50 min against 29 min. A rough
guide, then, that errs long; it leaves out starting Ray (10-20 s).
A sampled search is costed as ``num_samples x seeds`` runs of its base configuration, every one to
the end (ASHA may stop some early).

Example::

    >>> from ablate.study import load_study
    >>> print(format_estimate(estimate(load_study("studies/quickstart.yaml"))))  # doctest: +SKIP
    estimated wall time here: 4 min 5 s (0.00898 PFLOP at 51.9 GFLOP/s on Intel(R) Xeon(R) Processor, 2 cores; calibration on plain8-w8 ...)
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from ablate.config import TrainConfig
from ablate.data.catalog import data_source
from ablate.study import Study, plan_rows
from ablate.study.plan import eval_images, train_iterations, training_images

__all__ = ["DAY", "TRIAL_START_S", "Estimate", "Rate", "estimate", "format_duration", "format_estimate"]

DAY = 86_400.0  # seconds; `ablate run` asks for --yes above this
# Seconds a trial takes beyond its training and evaluation (a Ray worker starts, imports torch, loads the
# data, builds the net, checkpoints): the quickstart's 12 trials, 2 at a time, ran 253 s on a 2-core Xeon
# against 173 s of training and evaluation at the calibrated rate, about 13 s per trial and slot.
TRIAL_START_S = 12.0
CALIBRATION = {"model": "resnet20", "batch_size": 64, "warmup_steps": 2, "steps": 6}  # a few seconds on a CPU core


@dataclass(frozen=True)
class Rate:
    """Training FLOP/s of the shared trainer on one device, and where the figure comes from."""

    flop_per_s: float
    device: str  # as ablate.device.device_name says it: "NVIDIA H100 ...", "Intel(R) Xeon(R) ..., 2 cores"
    source: str  # "ablate bench" | "calibration"
    measured: str  # when, "2026-11-22 04:30"


@dataclass(frozen=True)
class Estimate:
    seconds: float
    flops: float  # training and evaluation, all trials
    rate: Rate


def _calibrate(device: str, config: TrainConfig | None = None) -> Rate:
    """A few timed steps of the shared trainer on ``device`` (``cpu`` | ``cuda``).

    ``config``: a trial of the study, whose net, batch size, image shape and arithmetic are measured
    (on synthetic images of the same shape); else :data:`CALIBRATION`'s ResNet-20. A small net trains
    at a far lower FLOP/s than ResNet-20 (the quickstart's width-8 nets at about a fifth), so a study is
    measured on its own net. On a CPU the steps run on one thread, timed in CPU seconds, times the
    cores torch would use: the rate of the machine when the study has it to itself, whatever else runs
    during the calibration (wall time, or CPU time of several threads that spin while waiting for each
    other, would measure the load instead).
    """
    import torch

    from ablate.perf.bench import bench_config, measure_trainer
    from ablate.device import device_name
    from ablate.models import count_macs
    from ablate.trainer import train

    c = CALIBRATION
    if config is None:
        config = bench_config(c["model"], batch_size=c["batch_size"], steps=c["steps"],
                              warmup_steps=c["warmup_steps"], device=device)
    else:
        config = _calibration_config(config, device)
    batch = config.trainer.batch_size
    facts = data_source(config.data)
    if device == "cuda":
        images_per_s = measure_trainer(config)["images_per_s"]
    else:
        cores = torch.get_num_threads()
        stamps: list[tuple[int, float]] = []  # (iteration, CPU seconds) at each report: after warm-up, at the end
        torch.set_num_threads(1)
        try:
            train(config, lambda metrics: stamps.append((metrics["iteration"], time.process_time())))
        finally:
            torch.set_num_threads(cores)
        (first, start), (last, end) = stamps[0], stamps[-1]
        images_per_s = (last - first) * batch / max(end - start, 1e-9) * cores
    macs = count_macs(config.model, in_channels=facts.in_channels, num_classes=facts.num_classes,
                      image_size=facts.image_size)
    return Rate(6 * macs * images_per_s, device_name(torch.device(device)), f"calibration on {config.model.name}",
                time.strftime("%Y-%m-%d %H:%M"))


def _calibration_config(config: TrainConfig, device: str) -> TrainConfig:
    """``config``'s net, batch size and arithmetic for ``warmup_steps + steps`` iterations of synthetic images of
    its data set's shape, with one report after the warm-up (the trainer evaluates a tiny test set there)."""
    from ablate.perf.bench import TEST_IMAGES

    c, facts, trainer = CALIBRATION, data_source(config.data), config.trainer
    iterations = c["warmup_steps"] + c["steps"]
    data = config.data.model_copy(update={
        "name": "synthetic", "synthetic_shape": facts.shape, "synthetic_classes": facts.num_classes,
        "synthetic_train": trainer.batch_size * iterations, "synthetic_test": TEST_IMAGES, "val_size": 0,
        "train_size": None, "test_size": None,
    })
    trainer = trainer.model_copy(update={
        "iterations": iterations, "epochs": None, "eval_every": c["warmup_steps"], "schedule": "constant",
        "device": device, "warmup": trainer.warmup.model_copy(update={"policy": "none"}),
    })
    return config.model_copy(update={"data": data, "trainer": trainer})


def trial_flops(config: TrainConfig, macs: int) -> float:
    """Training plus evaluation FLOPs of one trial (see the module docstring)."""
    trainer = config.trainer
    iterations = train_iterations(config)
    every = trainer.eval_every or max(1, training_images(config.data) // trainer.batch_size)
    evaluations = math.ceil(iterations / every)
    return 6 * macs * iterations * trainer.batch_size + 2 * macs * eval_images(config.data) * evaluations


def study_flops(study: Study, rows: list[dict] | None = None) -> float:
    """All trials' training and evaluation FLOPs; a sampled search as num_samples x seeds runs of its base.

    ``rows``: the study's :func:`~ablate.study.plan_rows`, when the caller has them already.
    """
    if study.sampled:
        from ablate.models import count_macs

        shape = data_source(study.base.data)
        macs = count_macs(study.base.model, in_channels=shape.in_channels, num_classes=shape.num_classes,
                          image_size=shape.image_size)
        return study.num_trials * trial_flops(study.base, macs)
    rows = rows if rows is not None else plan_rows(study)
    return sum(trial_flops(trial.config, row["macs"]) for trial, row in zip(study.trials(), rows))


def study_device(study: Study) -> str:
    """``cuda`` when the study asks for a GPU and this machine has one; else ``cpu``."""
    import torch

    return "cuda" if study.resources.gpu > 0 and torch.cuda.is_available() else "cpu"


def estimate(study: Study, *, rate: Rate | None = None, rows: list[dict] | None = None) -> Estimate:
    """The study's estimated wall time on this machine.

    ``rate``: the training FLOP/s to assume; else calibrated on the study's cheapest net (the lowest FLOP/s
    of its nets, so the estimate errs long), plus :data:`TRIAL_START_S` per trial.
    """
    rows = rows if rows is not None or study.sampled else plan_rows(study)
    device = study_device(study)
    if rate is None:
        cheapest = study.base if study.sampled else min(zip(study.trials(), rows), key=lambda tr: tr[1]["macs"])[0].config
        rate = _calibrate(device, cheapest)
    flops = study_flops(study, rows)
    cores = os.cpu_count() or 1
    cpu = study.resources.cpu
    ray_trials = study.num_trials if study.sampled or study.fuse == 1 else len(study.packs())  # fused: K runs each
    slots = min(study.max_concurrent or ray_trials, ray_trials, max(1, int(cores // cpu)) if cpu else cores)
    used = 1.0 if device == "cuda" else min(1.0, slots * max(cpu, 1) / cores)  # the share of the CPU's cores
    seconds = flops / (rate.flop_per_s * used) + ray_trials * TRIAL_START_S / max(slots, 1)
    return Estimate(seconds, flops, rate)


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"2 min 10 s"``, ``"3 h 20 min"``, ``"4.2 days"``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < DAY:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{seconds / DAY:.1f} days"


def format_estimate(est: Estimate) -> str:
    rate = est.rate
    return (
        f"estimated wall time here: {format_duration(est.seconds)} ({est.flops / 1e15:.3g} PFLOP at "
        f"{rate.flop_per_s / 1e9:.3g} GFLOP/s on {rate.device}; {rate.source} {rate.measured})"
    )
