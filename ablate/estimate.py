"""How long a study would take on this machine: its FLOPs over the device's measured training rate.

``seconds = (training FLOPs + evaluation FLOPs) / rate``, summed over the study's trials:

- training: ``6 * macs * iterations * batch_size`` per trial (:func:`ablate.study.plan_rows`);
- evaluation: ``2 * macs * images`` per evaluation (validation split + test set), one evaluation
  every ``trainer.eval_every`` iterations (else every epoch) and one at the end;
- rate: training FLOP/s of the shared trainer on the device the trials would use (CUDA when the study
  asks for a GPU and there is one, else the CPU), all of it shared by the trials that run at once.
  Taken from the last ``ablate bench`` on this device (kept in :func:`rate_file`: ``$ABLATE_DATA_DIR``
  or ``~/.cache/ablate``, ``throughput.json``), else measured by a short calibration (a few steps of
  ResNet-20 at batch 64, a few seconds; on a CPU timed in CPU seconds, so a busy machine does not
  make the study look longer than it is once it has the machine). A calibration is not kept: one
  taken on a busy machine would skew every later estimate; ``ablate bench`` is the deliberate
  measurement.

It is a rough guide, good to a factor of about two: a small net uses a device less well than
ResNet-20 does, a big one better, and it leaves out starting Ray and the workers (tens of seconds).
A sampled search is costed as ``num_samples x seeds`` runs of its base configuration, every one to
the end (ASHA may stop some early).

Example::

    >>> from ablate.study import load_study
    >>> print(format_estimate(estimate(load_study("studies/quickstart.yaml"))))  # doctest: +SKIP
    estimated wall time here: 2 min 10 s (0.0071 PFLOP at 55 GFLOP/s, Intel(R) Xeon(R) ..., 2 cores; ablate bench)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ablate.config import TrainConfig
from ablate.data.sources import cache_dir
from ablate.study import Study, plan_rows
from ablate.data.catalog import data_source
from ablate.study.plan import eval_images, train_iterations, training_images

__all__ = ["DAY", "Estimate", "Rate", "estimate", "format_duration", "format_estimate", "rate_file", "save_rate"]

DAY = 86_400.0  # seconds; `ablate run` asks for --yes above this
CALIBRATION = {"model": "resnet20", "batch_size": 64, "warmup_steps": 2, "steps": 6}  # a few seconds on a CPU core


@dataclass(frozen=True)
class Rate:
    """Training FLOP/s of the shared trainer on one device, and where the figure comes from."""

    flop_per_s: float
    device: str  # as ablate.bench.device_name says it: "NVIDIA H100 ...", "Intel(R) Xeon(R) ..., 2 cores"
    source: str  # "ablate bench" | "calibration"
    measured: str  # when, "2026-11-22 04:30"


@dataclass(frozen=True)
class Estimate:
    seconds: float
    flops: float  # training and evaluation, all trials
    rate: Rate


def rate_file() -> Path:
    return cache_dir() / "throughput.json"


def save_rate(rate: Rate) -> None:
    """Keep ``rate`` as this device's figure (one per device name), for plans and runs to come."""
    path = rate_file()
    try:
        rates = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        rates = {}
    rates[rate.device] = asdict(rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rates, indent=2))


def _saved_rate(device: str) -> Rate | None:
    try:
        return Rate(**json.loads(rate_file().read_text())[device])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _calibrate(device: str) -> Rate:
    """A few timed steps of the shared trainer on ``device`` (``cpu`` | ``cuda``).

    On a CPU the steps run on one thread, timed in CPU seconds, times the cores torch would use: the
    rate of the machine when the study has it to itself, whatever else runs during the calibration
    (wall time, or CPU time of several threads that spin while waiting for each other, would measure
    the load instead).
    """
    import torch

    from ablate.bench import bench_config, device_name, measure_trainer
    from ablate.models import count_macs
    from ablate.trainer import train

    c = CALIBRATION
    config = bench_config(c["model"], batch_size=c["batch_size"], steps=c["steps"], warmup_steps=c["warmup_steps"],
                          device=device)
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
        images_per_s = (last - first) * c["batch_size"] / max(end - start, 1e-9) * cores
    flops = 6 * count_macs(config.model) * images_per_s
    return Rate(flops, device_name(torch.device(device)), "calibration", time.strftime("%Y-%m-%d %H:%M"))


def device_rate(device: str) -> Rate:
    """This device's rate: the one the last ``ablate bench`` saved, else calibrated now."""
    import torch

    from ablate.bench import device_name

    return _saved_rate(device_name(torch.device(device))) or _calibrate(device)


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
    """The study's estimated wall time on this machine (``rate``: this device's, measured if not given)."""
    rate = rate or device_rate(study_device(study))
    flops = study_flops(study, rows)
    return Estimate(flops / rate.flop_per_s, flops, rate)


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
