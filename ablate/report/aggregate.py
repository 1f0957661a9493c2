"""Replicates -> one summary per configuration: mean, standard deviation and count of each metric.

A configuration is the set of trials sharing the ``ablate.group`` tag (one config, several seeds).
Diverged, early-stopped (ASHA) and failed trials are counted and listed but kept out of the means: a
stopped trial trained for fewer iterations than its replicates. A running or interrupted trial
contributes its latest values and marks its configuration as partial.

Configurations are compared along one axis (``model.n``, ``model.shortcut``, ``model.block``) when
their params agree on everything else. Two kinds of params never separate them: those in
:data:`DERIVED_PARAMS` (they follow from the others or name a replicate), and those the study's own
``constraints.set`` rules set from the axis (:func:`coupled_keys`: e.g. the paper's warm-up for
n = 18, or projection shortcuts for bottleneck blocks), which belong to the compared design.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ablate.metrics import ERROR_METRICS, Status
from ablate.tracking import layout
from ablate.tracking.reader import PARTIAL_STATUSES, History, StudyRecords, TrialRecord

__all__ = [
    "ConfigSummary",
    "Stat",
    "comparison_sets",
    "coupled_keys",
    "describe",
    "differing_keys",
    "mean_curve",
    "mean_responses",
    "metric_words",
    "partition",
    "significant",
    "summarize",
]

EXCLUDED_STATUSES = (Status.DIVERGED, Status.STOPPED, Status.FAILED)  # counted and listed, never averaged
DERIVED_PARAMS = frozenset({"seed", *layout.ADDED_PARAMS})  # follow from the config, or name a replicate
SHORTCUT_ORDER = ("none", "A", "B", "C")  # plain first, then the paper's options (sec. 3.3)


_WORDS = {"train_error": "training error", "val_error": "validation error"}


def metric_words(metric: str) -> str:
    """A metric's name in a sentence: ``train_error`` -> ``training error``, ``test_error`` -> ``test error``."""
    return _WORDS.get(metric, metric.replace("_", " "))


def significant(value: float, digits: int) -> str:
    """``value`` to ``digits`` significant digits, trailing zeros kept: ``0.0100``, ``1.00``, ``100``."""
    return f"{value:#.{digits}g}".removesuffix(".")


def _in_means(trial: TrialRecord) -> bool:
    return trial.status not in EXCLUDED_STATUSES


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (n - 1) and count of one metric over replicates."""

    mean: float
    std: float | None  # None with a single value: the seed-to-seed spread is unknown
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    def percent(self) -> str:
        """``"7.51 ± 0.16"`` for an error fraction; the mean alone when the spread is unknown."""
        return f"{100 * self.mean:.2f}" if self.std is None else f"{100 * self.mean:.2f} ± {100 * self.std:.2f}"

    def digits(self) -> str:
        """``"0.812 ± 0.041"`` for a quantity that is not an error fraction (a ratio, a std): 3 significant digits."""
        mean = significant(self.mean, 3)
        return mean if self.std is None else f"{mean} ± {significant(self.std, 2)}"


@dataclass(frozen=True)
class ConfigSummary:
    """One configuration: its trials (latest run per seed) and the statistics over those in the means."""

    group: str
    label: str
    params: dict[str, Any]  # the configuration's params (from its first trial), seed removed
    trials: tuple[TrialRecord, ...]
    stats: dict[str, Stat]  # metric -> statistics over `used` trials that logged it

    @property
    def used(self) -> tuple[TrialRecord, ...]:
        """Trials in the means: finished ones, and running or interrupted ones with their latest values."""
        return tuple(t for t in self.trials if _in_means(t))

    @property
    def excluded(self) -> tuple[TrialRecord, ...]:
        return tuple(t for t in self.trials if not _in_means(t))

    @property
    def partial(self) -> bool:
        return any(t.status in PARTIAL_STATUSES for t in self.trials)

    @property
    def depth(self) -> int | None:
        depth = self.params.get(layout.PARAM_DEPTH)
        return depth if isinstance(depth, int) else None

    def count(self, status: str) -> int:
        return sum(t.status == status for t in self.trials)


def summarize(records: StudyRecords, metrics: Iterable[str] = ERROR_METRICS) -> list[ConfigSummary]:
    """One :class:`ConfigSummary` per ``ablate.group``, in the paper's order (plain, A, B, C; then depth)."""
    metrics = tuple(dict.fromkeys(metrics))
    groups: dict[str, list[TrialRecord]] = {}
    for trial in records.trials:
        groups.setdefault(trial.group, []).append(trial)
    summaries = []
    for group, trials in groups.items():
        params = {k: v for k, v in trials[0].params.items() if k != "seed"}
        stats = {}
        for metric in metrics:
            values = [v for t in trials if _in_means(t) and (v := t.value(metric)) is not None]
            if values:
                stats[metric] = Stat.of(values)
        summaries.append(ConfigSummary(group, trials[0].label, params, tuple(trials), stats))
    return sorted(summaries, key=_paper_order)


def _paper_order(summary: ConfigSummary) -> tuple:
    shortcut = str(summary.params.get("model.shortcut", ""))
    rank = SHORTCUT_ORDER.index(shortcut) if shortcut in SHORTCUT_ORDER else len(SHORTCUT_ORDER)
    return (
        str(summary.params.get("model.block", "")),
        rank,
        str(summary.params.get("model.base_width", "")),
        str(summary.params.get("model.width_mult", "")),
        summary.depth or 0,
        summary.label,
    )


# -- comparisons --------------------------------------------------------------------------------


def _axis_order(axis: str, value: Any) -> tuple:
    if axis == "model.shortcut" and value in SHORTCUT_ORDER:
        return (0, SHORTCUT_ORDER.index(value), "")
    if isinstance(value, (int, float)):
        return (1, value, "")
    return (2, 0, str(value))


def coupled_keys(study: Mapping[str, Any] | None, axis: str) -> frozenset[str]:
    """The keys that the study's ``constraints.set`` rules set where ``axis`` takes given values.

    ``{"when": {"model.n": [18, 200]}, "then": {"trainer.warmup.policy": "paper"}}`` couples the
    warm-up to ``model.n``. Empty without a recorded study file.
    """
    rules = ((study or {}).get("constraints") or {}).get("set") or []
    return frozenset(
        key
        for rule in rules
        if isinstance(rule, Mapping) and axis in (rule.get("when") or {})
        for key in (rule.get("then") or {})
    )


def partition(
    summaries: Sequence[ConfigSummary], axis: str, *, coupled: Iterable[str] = ()
) -> list[list[ConfigSummary]]:
    """Configurations grouped by their params other than ``axis``, ``coupled`` and :data:`DERIVED_PARAMS`.

    Each group is sorted along ``axis``.
    """
    skip = DERIVED_PARAMS | {axis, *coupled}
    parts: dict[tuple, list[ConfigSummary]] = {}
    for summary in summaries:
        key = tuple(sorted((k, str(v)) for k, v in summary.params.items() if k not in skip))
        parts.setdefault(key, []).append(summary)
    return [sorted(part, key=lambda s: _axis_order(axis, s.params.get(axis))) for part in parts.values()]


def comparison_sets(
    summaries: Sequence[ConfigSummary], axis: str, *, coupled: Iterable[str] = ()
) -> list[list[ConfigSummary]]:
    """The partitions holding at least two values of ``axis``: configurations that differ only in ``axis``."""
    parts = partition(summaries, axis, coupled=coupled)
    return [part for part in parts if len({str(s.params.get(axis)) for s in part}) > 1]


def differing_keys(summaries: Sequence[ConfigSummary], *, ignore: Iterable[str] = ()) -> list[str]:
    """The params (outside :data:`DERIVED_PARAMS` and ``ignore``) whose values are not the same in all ``summaries``."""
    skip = DERIVED_PARAMS | set(ignore)
    keys = sorted({k for s in summaries for k in s.params} - skip)
    return [k for k in keys if len({str(s.params.get(k)) for s in summaries}) > 1]


def describe(summary: ConfigSummary, keys: Iterable[str]) -> str:
    """A phrase naming the values of ``keys``: ``"plain"``, ``"shortcut B"``, ``"block preact"``, ``"depth 56"``."""
    words = []
    for key in keys:
        value = summary.params.get(key)
        if key == "model.shortcut":
            words.append("plain" if value == "none" else f"shortcut {value}")
        elif key == "model.n":
            words.append(f"depth {summary.depth}")
        elif key == "trainer.warmup.policy":
            words.append(f"warm-up {value}")
        elif key.startswith("model."):
            words.append(f"{key.removeprefix('model.')} {value}")
        else:
            words.append(f"{key}={value}")
    return ", ".join(words)


# -- curves and responses -----------------------------------------------------------------------


def mean_curve(trials: Sequence[TrialRecord], metric: str) -> History | None:
    """The mean over ``trials`` of ``metric`` at the steps every one of them logged (a running trial shortens it)."""
    histories = [dict(zip(t.history[metric].steps, t.history[metric].values)) for t in trials if metric in t.history]
    if not histories:
        return None
    steps = sorted(set.intersection(*(set(h) for h in histories)))
    return History(tuple(steps), tuple(statistics.fmean(h[s] for h in histories) for s in steps))


def mean_responses(trials: Sequence[TrialRecord]) -> tuple[float, ...] | None:
    """The per-layer mean over ``trials`` of the Fig. 7 response std; None when no trial has one of a common length."""
    stds = [t.layer_responses.std for t in trials if t.layer_responses is not None and t.layer_responses.std]
    if not stds or len({len(s) for s in stds}) != 1:
        return None
    return tuple(statistics.fmean(column) for column in zip(*stds))
