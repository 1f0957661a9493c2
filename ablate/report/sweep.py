"""Sampled searches (Optuna TPE / random, often with ASHA): the view a sweep user expects.

What it shows, from the records alone:

- every trial with its sampled values, its value of the study's metric and how it ended; a trial
  ASHA stopped shows the value it had when it was stopped, and at which iteration;
- the metric against each sampled hyper-parameter (:func:`plot_sweep`; log axis where the study
  sampled it log-uniform), and every trial's curve of the metric (:func:`plot_sweep_curves`);
- the best configuration (best mean over its finished seeds);
- each parameter's importance: Optuna's fANOVA evaluator on an Optuna study rebuilt from the records
  (:func:`rebuilt_study`: one trial per configuration, ``COMPLETE`` with the mean of its finished
  seeds, ``PRUNED`` with its values at the stop for a stopped one, ``FAIL`` for diverged or failed).
  Optuna computes importances from complete trials only; when fewer than :data:`MIN_COMPLETE`
  configurations finished (ASHA stops most of them), they are computed at the last evaluation every
  trial reached (the first rung), where stopped and finished trials compare at equal budget.

The sampled axes come from the recorded study file (``space``: ``{low, high, log}`` ranges and lists).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from ablate.report.aggregate import ConfigSummary, metric_words
from ablate.tracking.reader import TrialRecord

__all__ = [
    "SweepAxis",
    "SweepView",
    "importances",
    "plot_sweep",
    "plot_sweep_curves",
    "rebuilt_study",
    "common_step",
    "sampled_axes",
    "sweep_answer",
    "sweep_view",
    "trial_value",
]

SAMPLED_METHODS = ("tpe", "random")
MIN_COMPLETE = 4  # configurations with a value that importances need (fANOVA on fewer is noise)
_DPI = 110


@dataclass(frozen=True)
class SweepAxis:
    """One sampled hyper-parameter: a range (``low``, ``high``, ``log``) or categorical ``values``."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    values: tuple[Any, ...] | None = None

    @property
    def name(self) -> str:
        """``trainer.lr`` -> ``lr``."""
        return self.key.rsplit(".", 1)[-1] if self.values is None else self.key.removeprefix("trainer.")

    def value(self, params: Mapping[str, Any]) -> Any:
        """The trial's value on this axis; a section axis (``trainer.warmup``: dict values) as ``k=v,...``."""
        if self.key in params:
            return params[self.key]
        prefix = self.key + "."
        return ",".join(f"{k.removeprefix(prefix)}={v}" for k, v in sorted(params.items()) if k.startswith(prefix))

    def distribution(self, observed: Sequence[Any]) -> BaseDistribution:
        if self.values is not None:
            return CategoricalDistribution(tuple(dict.fromkeys(str(v) for v in observed)))
        if all(isinstance(v, int) for v in observed) and float(self.low).is_integer() and float(self.high).is_integer():
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)


@dataclass(frozen=True)
class SweepView:
    """What the report shows of a sampled search."""

    axes: tuple[SweepAxis, ...]
    best: ConfigSummary | None  # best mean over finished seeds
    importances: dict[str, float] | None  # axis name -> fANOVA importance; None: too few configurations
    complete: int  # configurations whose seeds all finished
    importance_step: int | None = None  # importances of the values at this iteration; None: of the final values


def sampled_axes(study: Mapping[str, Any] | None) -> list[SweepAxis] | None:
    """The axes of a tpe/random study file; None for a grid study or when no study file was recorded."""
    if not study or (study.get("search") or {}).get("method") not in SAMPLED_METHODS:
        return None
    axes = []
    for key, domain in (study.get("space") or {}).items():
        if isinstance(domain, Mapping) and "low" in domain:
            axes.append(SweepAxis(key, float(domain["low"]), float(domain["high"]), bool(domain.get("log", False))))
        elif isinstance(domain, list):
            axes.append(SweepAxis(key, values=tuple(domain)))
    return axes


def trial_value(trial: TrialRecord, metric: str) -> float | None:
    """The trial's value of ``metric``: final, or at the stop; None when it has none (failed) or it is not finite."""
    value = trial.value(metric)
    return value if value is not None and math.isfinite(value) else None


# -- importances --------------------------------------------------------------------------------


def rebuilt_study(
    summaries: Sequence[ConfigSummary],
    axes: Sequence[SweepAxis],
    *,
    metric: str,
    mode: str | None,
    at_step: int | None = None,
) -> optuna.Study:
    """An Optuna study with one trial per configuration (see the module docstring for states and values).

    ``at_step``: every configuration with a value at that iteration is ``COMPLETE`` with it (mean over seeds).
    """
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    try:
        study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    observed = {axis.key: [axis.value(s.params) for s in summaries] for axis in axes}
    distributions = {axis.name: axis.distribution(observed[axis.key]) for axis in axes}
    for summary in summaries:
        params = {axis.name: _optuna_value(axis, axis.value(summary.params)) for axis in axes}
        stat = summary.stats.get(metric)
        if at_step is not None:
            values = [v for t in summary.trials if (v := _value_at(t, metric, at_step)) is not None]
            state = {"value": sum(values) / len(values)} if values else {"state": TrialState.FAIL}
            trial = optuna.trial.create_trial(params=params, distributions=distributions, **state)
        elif stat is not None and summary.count("finished") == len(summary.used):
            trial = optuna.trial.create_trial(params=params, distributions=distributions, value=stat.mean)
        elif summary.count("stopped"):
            stops = {t.last_step or 0: v for t in summary.trials if (v := trial_value(t, metric)) is not None}
            trial = optuna.trial.create_trial(
                params=params, distributions=distributions, state=TrialState.PRUNED, intermediate_values=stops
            )
        else:
            trial = optuna.trial.create_trial(params=params, distributions=distributions, state=TrialState.FAIL)
        study.add_trial(trial)
    return study


def _value_at(trial: TrialRecord, metric: str, step: int) -> float | None:
    history = trial.history.get(metric)
    if history is None or step not in history.steps:
        return None
    value = history.values[history.steps.index(step)]
    return value if math.isfinite(value) else None


def common_step(trials: Sequence[TrialRecord], metric: str) -> int | None:
    """The last iteration at which every trial that trained (not failed, not diverged) evaluated ``metric``."""
    steps = [set(t.history[metric].steps) for t in trials
             if t.status not in ("failed", "diverged") and metric in t.history]
    common = set.intersection(*steps) if steps else set()
    return max(common) if common else None


def _optuna_value(axis: SweepAxis, value: Any) -> Any:
    return str(value) if axis.values is not None else value


def importances(study: optuna.Study) -> dict[str, float] | None:
    """fANOVA importances (summing to 1), most important first; None with fewer than MIN_COMPLETE complete trials."""
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(complete) < MIN_COMPLETE:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna flags its importance API as experimental in some versions
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def sweep_view(
    summaries: Sequence[ConfigSummary], axes: Sequence[SweepAxis], *, metric: str, mode: str | None
) -> SweepView:
    """Best configuration and importances of a sampled search (at the first rung when too few finished)."""
    study = rebuilt_study(summaries, axes, metric=metric, mode=mode)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = None
    if complete:
        index = (max if mode == "max" else min)(complete, key=lambda t: t.value).number
        best = summaries[index]
    ranked, step = importances(study), None
    if ranked is None:
        step = common_step([t for s in summaries for t in s.trials], metric)
        if step is not None:
            ranked = importances(rebuilt_study(summaries, axes, metric=metric, mode=mode, at_step=step))
    return SweepView(tuple(axes), best, ranked, len(complete), step if ranked else None)


# -- the answer -----------------------------------------------------------------------------------


def sweep_answer(
    best: ConfigSummary | None,
    axes: Sequence[SweepAxis],
    ranked: Mapping[str, float] | None,
    *,
    metric: str,
    sampled: int,
    seeds: str,
    at_step: int | None = None,
) -> str:
    """"Best of 12 sampled configurations: lr=0.12, weight_decay=3e-05, val error 11.2 % (...); lr matters most
    (fANOVA importance 0.81 of 1)."."""
    words = metric_words(metric)
    if best is None:
        return f"Not answered yet: none of the {sampled} sampled configurations has finished with a {words}."
    values = ", ".join(f"{axis.name}={_format(axis.value(best.params))}" for axis in axes)
    text = f"Best of {sampled} sampled configurations: {values}, {words} {best.stats[metric].percent()} % ({seeds})"
    if ranked:
        top, share = next(iter(ranked.items()))
        where = "" if at_step is None else f" at iteration {at_step}"
        text += f"; {top} matters most (fANOVA importance {share:.2f} of 1{where})"
    return text + "."


def _format(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# -- figures --------------------------------------------------------------------------------------


def plot_sweep(
    trials: Sequence[TrialRecord], axes: Sequence[SweepAxis], path: Path, *, metric: str, best_group: str | None
) -> Path | None:
    """``metric`` (%) against each sampled axis, one dot per trial: filled = finished, hollow = stopped
    (its value at the stop), star = the best configuration. None when no trial has a value."""
    points = [(t, v) for t in trials if (v := trial_value(t, metric)) is not None]
    if not points or not axes:
        return None
    figure = Figure(figsize=(4.6 * len(axes), 4.0))
    figure.subplots_adjust(left=0.7 / (4.6 * len(axes)) + 0.04, right=0.97, top=0.78, bottom=0.16, wspace=0.3)
    for ax, axis in zip(figure.subplots(1, len(axes), squeeze=False)[0], axes):
        categories = [str(v) for v in axis.values] if axis.values is not None else None
        finished = [(t, v) for t, v in points if t.status == "finished"]
        stopped = [(t, v) for t, v in points if t.status != "finished"]  # by ASHA, or not finished yet
        for name, chosen, face in (("finished", finished, "C0"), ("stopped or unfinished", stopped, "none")):
            if chosen:
                xs = [_x(axis, t.params, categories) for t, _ in chosen]
                ax.scatter(xs, [100 * v for _, v in chosen], facecolors=face, edgecolors="C0", s=36,
                           label=f"{name} ({len(chosen)})")
        best = [(t, v) for t, v in points if t.group == best_group]
        if best:
            ax.scatter([_x(axis, t.params, categories) for t, _ in best], [100 * v for _, v in best], marker="*",
                       s=180, color="C3", zorder=3, label="best configuration")
        if axis.log:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        if categories:
            ax.set_xticks(range(len(categories)), categories, rotation=20, fontsize=8)
        ax.set_xlabel(axis.key + (" (log scale)" if axis.log else ""))
        ax.set_ylabel(f"{metric_words(metric)} (%)")
        ax.grid(alpha=0.3)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.92), ncols=3, fontsize=8, frameon=False)
    figure.suptitle(f"{metric_words(metric)} against each sampled hyper-parameter (hollow: stopped early, "
                    "at its value when stopped)", fontsize=10)
    figure.savefig(path, dpi=_DPI)
    return path


def _x(axis: SweepAxis, params: Mapping[str, Any], categories: list[str] | None) -> float:
    value = axis.value(params)
    return categories.index(str(value)) if categories and str(value) in categories else value


def plot_sweep_curves(
    trials: Sequence[TrialRecord], path: Path, *, metric: str, best_group: str | None
) -> Path | None:
    """Every trial's ``metric`` (%) against iterations; the best configuration in red, stopped trials end early."""
    curves = [t for t in trials if metric in t.history and t.history[metric].steps]
    if not curves:
        return None
    figure = Figure(figsize=(7.0, 4.0))
    figure.subplots_adjust(left=0.1, right=0.97, top=0.88, bottom=0.13)
    ax = figure.subplots()
    for trial in curves:
        history = trial.history[metric]
        best = trial.group == best_group
        ax.plot(history.steps, [100 * v for v in history.values], color="C3" if best else "0.55",
                lw=2.0 if best else 0.9, zorder=3 if best else 2, label=f"best: {trial.label}" if best else None)
        if trial.status == "stopped":
            ax.plot(history.steps[-1], 100 * history.values[-1], "x", color="0.35", ms=5)
    ax.set_xlabel("iterations")
    ax.set_ylabel(f"{metric_words(metric)} (%)")
    ax.grid(alpha=0.3)
    if any(t.group == best_group for t in curves):
        ax.legend(fontsize=8)
    figure.suptitle(f"{metric_words(metric)} of every trial (x: stopped early by the scheduler)", fontsize=10)
    figure.savefig(path, dpi=_DPI)
    return path
