"""Lesion studies of trained nets: ``ablate lesion --study NAME`` (Veit, Wilber and Belongie, NeurIPS 2016,
"Residual Networks Behave Like Ensembles of Relatively Shallow Networks", sec. 4, Figs. 3 and 5).

Evaluation only: every finished trial of a recorded study kept its final weights (``weights.pt``,
:mod:`ablate.weights`); each net is rebuilt from its ``config.json`` and evaluated on its own test split
as the trainer built it (:func:`ablate.data.load_dataset` with the trial's data config, the same
autocast and memory format), with units deleted (:func:`ablate.models.delete_units`: the residual branch
removed, the shortcut kept).

Operation order of :func:`lesion_study`: read the study's records -> check every finished trial's
weights (download and load; a study whose trials kept none, or a damaged file, is one
:class:`LesionError` naming the trials, before anything is evaluated) -> per trial: the base error; the
error with each single deletable unit deleted (network order); for k = 1..K, ``draws`` random sets of k
distinct deletable units (``numpy`` generator seeded by ``(seed, trial seed)``) -> ``lesion.json`` and the
``lesion/*`` metrics logged on the trial's child run (:func:`ablate.tracking.writer.record_lesion`; the
JSON layout is in :mod:`ablate.tracking.layout`).

A plain net (shortcut ``none``) can lose only the units that keep their shape; the first unit of each
stage after the first is recorded with error ``null``. Those stage-transition units are marked in the
records of residual nets too (their shortcut is option A's zero-padding or a projection, not the identity).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ablate.config import DataConfig, TrainConfig
from ablate.data import DeviceData, data_source, load_dataset
from ablate.errors import UserError
from ablate.metrics import Status
from ablate.models import ResNet, UnitSite, build_model, delete_units, unit_sites
from ablate.tracking import layout
from ablate.tracking.reader import TrialRecord, load_study_records, trial_artifact
from ablate.tracking.writer import record_lesion
from ablate.device import resolve_device, speed_defaults
from ablate.weights import WeightsError, load_weights

__all__ = ["DRAWS", "MAX_K", "LesionError", "Sweep", "lesion_study", "measure_error", "sweep"]

MAX_K = 10  # default K: deleted units go up to min(MAX_K, deletable units)
DRAWS = 5  # default random draws per k


class LesionError(UserError):
    """A study that cannot be lesioned: trials without weights, damaged weights, nothing finished."""


@dataclass(frozen=True)
class Sweep:
    """One net's lesion sweep; errors are test-error fractions."""

    base_error: float
    sites: tuple[UnitSite, ...]  # every unit, network order
    single: tuple[float | None, ...]  # per unit: the error with it alone deleted; None: not deletable
    k: tuple[int, ...]  # 1..K
    draws: tuple[tuple[float, ...], ...]  # per k: the error of each random draw

    def as_json(self) -> dict[str, Any]:
        """The ``lesion.json`` layout (:mod:`ablate.tracking.layout`)."""
        return {
            "base_error": self.base_error,
            "units": [{"name": s.name, "stage": s.stage, "transition": s.transition, "error": e}
                      for s, e in zip(self.sites, self.single)],
            "k": list(self.k),
            "draws": [list(row) for row in self.draws],
        }

    def metrics(self) -> dict[str, float]:
        """``lesion/base_error`` and the mean and largest increase of the error when one unit is deleted."""
        increases = [e - self.base_error for e in self.single if e is not None]
        return {
            layout.METRIC_LESION_BASE: self.base_error,
            layout.METRIC_LESION_MEAN: float(np.mean(increases)) if increases else math.nan,
            layout.METRIC_LESION_MAX: max(increases) if increases else math.nan,
        }


@torch.no_grad()
def measure_error(model: torch.nn.Module, data: DeviceData, *, batch_size: int, autocast=nullcontext()) -> float:
    """The fraction of ``data`` that ``model`` (in eval mode: BN running statistics) gets wrong."""
    model.eval()
    wrong = torch.zeros((), dtype=torch.float64, device=data.device)
    for x, y in data.eval_batches(batch_size):
        with autocast:
            wrong += (model(x).argmax(-1) != y).sum()
    return wrong.item() / len(data)


def sweep(
    model: ResNet, data: DeviceData, *, max_k: int = MAX_K, draws: int = DRAWS,
    rng: np.random.Generator, batch_size: int = 1000, autocast=nullcontext(),
) -> Sweep:
    """The base error, each deletable unit deleted alone, and ``draws`` random sets of k units for k = 1..K.

    K is ``max_k`` or the number of deletable units, whichever is smaller.
    """
    def error(deleted: list[str]) -> float:
        net = delete_units(model, deleted) if deleted else model
        return measure_error(net, data, batch_size=batch_size, autocast=autocast)

    sites = tuple(unit_sites(model))
    deletable = [site.name for site in sites if site.deletable]
    single = tuple(error([site.name]) if site.deletable else None for site in sites)
    ks = tuple(range(1, min(max_k, len(deletable)) + 1))
    rows = tuple(
        tuple(error(list(rng.choice(deletable, size=k, replace=False))) for _ in range(draws)) for k in ks
    )
    return Sweep(base_error=error([]), sites=sites, single=single, k=ks, draws=rows)


# -- a recorded study --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Net:
    trial: TrialRecord
    config: TrainConfig
    weights: Path


def lesion_study(
    name: str, *, tracking_uri: str | None = None, max_k: int = MAX_K, draws: int = DRAWS, seed: int = 0,
    device: str = "auto", out: Callable[[str], None] = print,
) -> list[tuple[TrialRecord, Sweep]]:
    """Sweep every finished trial of study ``name`` and log the results on its child run; one line per trial."""
    records = load_study_records(name, tracking_uri)
    uri = records.tracking_uri
    finished = [t for t in records.trials if t.status == Status.FINISHED]
    skipped = [t for t in records.trials if t.status != Status.FINISHED]
    if not finished:
        raise LesionError(f"study {name!r}: no finished trial to lesion ({_listing(skipped, 'status')})")
    target = resolve_device(device)
    results = []
    with tempfile.TemporaryDirectory(prefix="ablate-lesion-") as scratch:
        nets = _checked_nets(finished, Path(scratch), uri, name)
        if skipped:
            out(f"skipped (not finished, so no weights): {_listing(skipped, 'status')}")
        splits: dict[DataConfig, tuple] = {}
        for net in nets:
            started = time.perf_counter()
            trainer = net.config.trainer
            fast = speed_defaults(target)
            bf16 = fast if trainer.bf16 is None else trainer.bf16
            channels_last = fast if trainer.channels_last is None else trainer.channels_last
            if net.config.data not in splits:
                splits[net.config.data] = load_dataset(net.config.data)
            data = splits[net.config.data]
            test = DeviceData(data.test_x, data.test_y, mean=data.mean, std=data.std, device=target,
                              channels_last=channels_last, pad=0)
            model = build_model(net.config.model, in_channels=data.in_channels, num_classes=data.num_classes)
            load_weights(net.weights, model)
            model = model.to(target, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            result = sweep(
                model, test, max_k=max_k, draws=draws, rng=np.random.default_rng([seed, net.config.seed]),
                batch_size=trainer.eval_batch_size,
                autocast=torch.autocast(target.type, dtype=torch.bfloat16) if bf16 else nullcontext(),
            )
            record_lesion(uri, net.trial.run_id, lesion=result.as_json(), metrics=result.metrics())
            results.append((net.trial, result))
            out(_line(net.trial, result, time.perf_counter() - started))
    return results


def _checked_nets(trials: list[TrialRecord], scratch: Path, uri: str, study: str) -> list[_Net]:
    """Each trial's config and downloaded weights, loaded once into its net to check them; one LesionError
    naming every trial that kept none, else every damaged file."""
    nets, missing, damaged = [], [], []
    for trial in trials:
        folder = scratch / trial.run_id
        config_file = trial_artifact(trial, layout.ARTIFACT_CONFIG, folder, tracking_uri=uri)
        weights = trial_artifact(trial, layout.ARTIFACT_WEIGHTS, folder, tracking_uri=uri)
        if config_file is None or weights is None:
            absent = layout.ARTIFACT_WEIGHTS if weights is None else layout.ARTIFACT_CONFIG
            missing.append(f"{_name(trial)} (run {trial.run_id}): no {absent}")
            continue
        try:
            config = TrainConfig.model_validate_json(config_file.read_text())
            facts = data_source(config.data)
            load_weights(weights, build_model(config.model, in_channels=facts.in_channels,
                                              num_classes=facts.num_classes))
        except (WeightsError, ValueError) as err:  # pydantic's ValidationError is a ValueError
            reason = str(err).replace(str(weights), layout.ARTIFACT_WEIGHTS).replace(str(config_file),
                                                                                     layout.ARTIFACT_CONFIG)
            damaged.append(f"{_name(trial)} (run {trial.run_id}): {reason}")
            continue
        nets.append(_Net(trial, config, weights))
    if missing:
        raise LesionError(
            f"study {study!r}: {len(missing)} of {len(trials)} finished trials kept no weights to lesion: "
            + "; ".join(missing)
            + ". Finished trials keep weights.pt since ablate recorded final weights; re-run the study with this "
            "version, or make its artifact folder (mlartifacts/ beside an SQLite store) reachable from here"
        )
    if damaged:
        raise LesionError(f"study {study!r}: damaged records, nothing was evaluated: " + "; ".join(damaged))
    return nets


def _name(trial: TrialRecord) -> str:
    return f"{trial.label} seed {trial.seed}"


def _listing(trials: list[TrialRecord], what: str) -> str:
    return ", ".join(f"{_name(t)}: {t.status}" for t in trials) or "none"


def _line(trial: TrialRecord, result: Sweep, seconds: float) -> str:
    """``  resnet110-w8 seed 0: base 23.10 %; one unit deleted +0.80 pp on average (max +5.20); k=10 ...``."""
    m = result.metrics()
    deletable = sum(e is not None for e in result.single)
    last = (f"; {result.k[-1]} deleted: {100 * float(np.mean(result.draws[-1])):.2f} % on average"
            if result.k else "")
    return (f"  {_name(trial)}: base {100 * result.base_error:.2f} %; one unit deleted "
            f"{100 * m[layout.METRIC_LESION_MEAN]:+.2f} pp on average (max {100 * m[layout.METRIC_LESION_MAX]:+.2f})"
            f"{last} ({deletable} of {len(result.single)} units deletable, {seconds:.0f} s)")
