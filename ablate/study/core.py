"""The loaded study: its axes, its trials, and the way a point of the space becomes a TrainConfig.

A *point* is a flat dict of axis values, ``{"model.n": 9, "model.shortcut": "none"}``. It becomes a
trial's config in this order (:meth:`Study.trial_for`):

1. the fixed sections of the file (``data``, ``model``, ``trainer``) give the base config;
2. the point's values are set over it;
3. each ``constraints.set`` rule whose ``when`` matches the config so far sets its ``then`` keys;
4. if any ``constraints.exclude`` entry matches the result, the point is dropped;
5. the seed is set and the whole config is validated as a :class:`~ablate.config.TrainConfig`;
6. if the study has a budget (``constraints.max_params`` / ``max_macs`` / ``max_train_flops``) and the
   config's costs (:func:`~ablate.study.costs.trial_costs`, counted without training) exceed a bound,
   the point is dropped.

A key of ``when`` or ``exclude`` matches when the config's value equals the given value, or one of
them when a list is given (so a list-valued field such as ``trainer.milestones`` is matched with a
list of lists).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ablate.config import TrainConfig, deep_merge, flatten, format_validation_error, fuse_key, unflatten
from ablate.study.costs import trial_costs
from ablate.study.schema import (
    Constraints,
    EarlyStopping,
    Metric,
    NoiseReference,
    Objective,
    Origin,
    Resources,
    Search,
    StudyError,
)

__all__ = ["Axis", "DesignSpace", "Study", "Trial"]


@dataclass(frozen=True)
class Axis:
    """One dimension of the space: categorical ``values``, or a ``[low, high]`` range for sampled searches.

    For Ray Tune: categorical -> ``tune.choice(values)``; a range -> ``tune.uniform``/``tune.loguniform``,
    or, when ``integer``, ``tune.randint``/``tune.lograndint`` with ``high + 1`` (``high`` is inclusive here).
    """

    key: str  # dotted TrainConfig key ("model.n") or a section ("trainer.warmup", values are dicts)
    values: tuple[Any, ...] | None = None  # categorical values, validated and normalised, in file order
    low: float | None = None  # range: inclusive lower bound
    high: float | None = None  # range: inclusive upper bound
    log: bool = False  # range: sample uniformly in log space
    integer: bool = False  # range: the config field is an int

    @property
    def categorical(self) -> bool:
        return self.values is not None

    def describe(self) -> str:
        """``{3, 5, 9}``, ``log-uniform [0.01, 0.5]`` or ``integer [1, 9]``: the domain in words."""
        if self.values is not None:
            return "{" + ", ".join(format_value(v) for v in self.values) + "}"
        kind = ("log-" if self.log else "") + ("integer" if self.integer else "uniform")
        return f"{kind} [{format_value(self.low)}, {format_value(self.high)}]"


@dataclass(frozen=True)
class DesignSpace:
    """A named sub-space of the study's space (Radosavovic et al. 2019): every axis, some narrowed."""

    name: str  # as written under `design_spaces:`
    axes: tuple[Axis, ...]  # the study's axes in its order, each narrowed where the design space names it


@dataclass(frozen=True)
class Trial:
    """One training run of a study."""

    config: TrainConfig  # the full, validated config, seed included
    group: str  # the config without its seed, e.g. "resnet110-3f2a9c1d": replicates share it
    label: str  # short human name: the model's name, plus the values that tell same-named configs apart
    point: Mapping[str, Any] = field(default_factory=dict)  # the axis values (read-only)

    @property
    def seed(self) -> int:
        return self.config.seed


@dataclass(frozen=True, eq=False)
class Study:
    """A validated study, everything the search runner needs (built by :func:`ablate.study.load_study`).

    - what: ``name``, ``question``, ``metric.name`` / ``metric.mode`` (``"min"`` | ``"max"``);
    - grid search: :meth:`trials` (every trial: factorial x seeds, constraints and budget applied);
    - sampled search (``search.method`` ``"tpe"`` | ``"random"``): ``axes`` (their domains),
      ``search.num_samples`` points, each run once per seed (``num_trials`` in all), sampler seed
      ``search.seed``; :meth:`trial_for` turns a sampled point + seed into a :class:`Trial`, or None
      when the constraints exclude the point;
    - scheduling: ``resources.cpu`` / ``resources.gpu`` per Ray trial, ``max_concurrent`` (None: no limit),
      ``early_stopping`` (ASHA; None: off; its grace period counts training iterations, the
      ``iteration`` key of the trainer's reports), ``search.max_trials`` (the budget, checked at load);
    - fusing: ``fuse`` trials per Ray trial at most, packed by :meth:`packs` (grid only, no early stopping);
    - several objectives: ``objectives`` (empty for a one-metric study; then ``metric`` is their first),
      a budget (``constraints.budget``, applied by :meth:`trial_for` and the grid's expansion);
    - design spaces: ``design_spaces`` (search.method random draws ``num_samples`` points from each) and
      ``noise_reference`` (one point, its own seeds);
    - provenance: ``overrides`` as given, :meth:`resolved_yaml` for MLflow.

    Example::

        >>> from ablate.study import load_study
        >>> study = load_study("studies/depth_sweep.yaml", ["seeds=[0]"])
        >>> [t.label for t in study.trials()][:3]
        ['resnet20', 'plain20', 'resnet32']
    """

    name: str  # the MLflow experiment name
    question: str  # what the study answers
    path: Path  # the study file
    base: TrainConfig  # the fixed sections (data, model, trainer), seed 0
    axes: tuple[Axis, ...]  # in file order (included axes first)
    seeds: tuple[int, ...]  # replicates
    search: Search  # method, num_samples, sampler seed, max_trials
    constraints: Constraints  # values validated and normalised
    resources: Resources  # per trial: cpu, gpu
    max_concurrent: int | None  # trials at once; None: as many as resources allow
    metric: Metric  # name, mode
    early_stopping: EarlyStopping | None  # ASHA grace_period (iterations), reduction_factor
    fuse: int  # trials per Ray trial, trained fused (:meth:`packs`); 1: one trial per Ray trial
    objectives: tuple[Objective, ...]  # several objectives, the first one `metric`; () for a one-metric study
    design_spaces: tuple[DesignSpace, ...]  # compared sub-spaces; () for none
    noise_reference: NoiseReference | None  # its point normalised; None for none
    overrides: tuple[str, ...]  # "key=value" strings applied to the file
    document: dict[str, Any] = field(repr=False)  # the resolved document (overrides applied, includes read in)
    origin: Origin = field(repr=False)  # for messages
    _grid: tuple[Trial, ...] = field(default=(), repr=False)  # grid trials, expanded at load

    @property
    def sampled(self) -> bool:
        """True for tpe/random searches, whose points are drawn while the study runs."""
        return self.search.method != "grid"

    @property
    def num_trials(self) -> int:
        """Trials the study starts: the grid's, or num_samples (per design space) x seeds, plus the noise
        reference's seeds."""
        if not self.sampled:
            return len(self._grid)
        noise = len(self.noise_reference.seeds) if self.noise_reference else 0
        return self.search.num_samples * max(1, len(self.design_spaces)) * len(self.seeds) + noise

    def trials(self) -> list[Trial]:
        """Every trial of a grid study, replicate by replicate (all configurations with the first seed, ...)."""
        if self.sampled:
            raise StudyError(
                f"{self.origin.file}: search.method: {self.search.method} draws its points while it runs; "
                "use study.axes and study.trial_for(point, seed=...)"
            )
        return list(self._grid)

    def packs(self) -> list[list[Trial]]:
        """The grid's trials as Ray trials: up to ``fuse`` trials that may train fused share one.

        Trials fuse when their configs differ only in :data:`~ablate.config.FUSABLE_KEYS` (seed and
        optimiser recipe); each such set, in trial order, is cut into packs of ``fuse``. With ``fuse`` 1,
        one pack per trial.
        """
        sets: dict[tuple, list[Trial]] = {}
        for trial in self.trials():
            sets.setdefault(fuse_key(trial.config), []).append(trial)
        return [same[i:i + self.fuse] for same in sets.values() for i in range(0, len(same), self.fuse)]

    def trial_for(self, point: Mapping[str, Any], *, seed: int) -> Trial | None:
        """The trial for a point (a flat dict with a value for every axis) and a seed; None if excluded or
        over the budget (:meth:`drop_reason` says which)."""
        point = {key: _plain(value) for key, value in point.items()}
        keys = [axis.key for axis in self.axes]
        if sorted(point) != sorted(keys):
            missing, extra = sorted(set(keys) - set(point)), sorted(set(point) - set(keys))
            raise StudyError(f"{self.origin.file}: point {point}: missing axes {missing}, unknown axes {extra}")
        values = self._resolve(point)
        if values is None:
            return None
        config = self._validate(point, values, seed)
        if self.over_budget(config):
            return None
        known = {trial.group: trial.label for trial in self._grid}
        group = config_group(config)
        return Trial(config, group, known.get(group) or _sampled_label(config, point), point)

    def drop_reason(self, point: Mapping[str, Any]) -> str | None:
        """Why :meth:`trial_for` drops ``point``: ``excluded by constraints.exclude``, ``over the budget
        (macs 61.2M > max_macs 50M)``; None when it is kept."""
        point = {key: _plain(value) for key, value in point.items()}
        values = self._resolve(point)
        if values is None:
            return "excluded by constraints.exclude"
        over = self.over_budget(self._validate(point, values, self.seeds[0]))
        return f"over the budget ({over})" if over else None

    def budget_error(self, configs: list[TrainConfig], where: str) -> StudyError:
        """The error for a space none of whose ``configs`` (the points checked) meets the budget."""
        bounds = ", ".join(f"max_{name} {bound:.3g}" for name, bound in self.constraints.budget.items())
        cheapest = ", ".join(f"{name} {min(trial_costs(c)[name] for c in configs):.3g}" for name in self.constraints.budget)
        return self.origin.error(
            "constraints", f"no point of {where} meets the budget ({bounds}); the cheapest of the {len(configs)} "
                           f"points checked: {cheapest}; raise a bound or add smaller nets to the space"
        )

    def over_budget(self, config: TrainConfig) -> str | None:
        """``macs 61.2M > max_macs 50M`` for each bound of ``constraints.budget`` the config exceeds; None within."""
        budget = self.constraints.budget
        if not budget:
            return None
        costs = trial_costs(config)
        over = [f"{name} {costs[name]:.3g} > max_{name} {bound:.3g}" for name, bound in budget.items()
                if costs[name] > bound]
        return ", ".join(over) or None

    def resolved_yaml(self) -> str:
        """The study as it ran: overrides applied and includes read in, loadable again with :func:`load_study`."""
        header = [f"# resolved from {self.origin.file}"]
        if self.overrides:
            header.append(f"# overrides: {' '.join(self.overrides)}")
        body = yaml.safe_dump(self.document, sort_keys=False, allow_unicode=True, width=100, default_flow_style=None)
        return "\n".join(header) + "\n" + body

    # -- point -> config ---------------------------------------------------------------------------

    def _resolve(self, point: Mapping[str, Any]) -> dict[str, Any] | None:
        """Steps 2-4 of the module docstring: the config as a dict (no seed), or None if excluded."""
        values = self.base.model_dump()
        for key, value in point.items():
            values = deep_merge(values, unflatten({key: copy.deepcopy(value)}))
        for rule in self.constraints.set:
            if matches(flatten(values), rule.when):
                values = deep_merge(values, unflatten(copy.deepcopy(rule.then)))
        flat = flatten(values)
        if any(matches(flat, entry) for entry in self.constraints.exclude):
            return None
        return values

    def _validate(self, point: Mapping[str, Any], values: dict[str, Any], seed: int) -> TrainConfig:
        try:
            return TrainConfig.model_validate({**values, "seed": seed})
        except ValidationError as err:
            shown = ", ".join(f"{k}={format_value(v)}" for k, v in point.items())
            source = self.origin.source("space")
            raise StudyError(format_validation_error(err, source=f"{source}: the point ({shown})")) from None

    def _expand(self) -> tuple[Trial, ...]:
        """The grid: every combination of the axes' values, constraints applied, times the seeds."""
        points = [dict(zip([a.key for a in self.axes], combo)) for combo in product(*(a.values for a in self.axes))]
        kept = [(point, values) for point in points if (values := self._resolve(point)) is not None]
        if not kept:
            raise self.origin.error(
                "constraints.exclude", f"removes every one of the {len(points)} points of the grid; nothing would run"
            )
        configs = [(point, self._validate(point, values, self.seeds[0])) for point, values in kept]
        within = [(point, config) for point, config in configs if not self.over_budget(config)]
        if not within:
            raise self.budget_error([config for _, config in configs], "the grid")
        configs = within
        labels = distinct_labels([config for _, config in configs])
        return tuple(
            Trial(config.model_copy(update={"seed": seed}), config_group(config), label, point)
            for seed in self.seeds
            for (point, config), label in zip(configs, labels)
        )


# -- helpers shared with loading and planning ------------------------------------------------------


def matches(flat: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    """Whether every key of ``entry`` matches: equal to its value, or to one of them when it is a list."""
    return all(flat[key] in want if isinstance(want, list) else flat[key] == want for key, want in entry.items())


def config_group(config: TrainConfig) -> str:
    """``<model name>-<8 hex>``: a stable key of the config without its seed (same config, same group)."""
    dump = json.dumps(config.model_dump(mode="json", exclude={"seed"}), sort_keys=True)
    return f"{config.model.name}-{hashlib.sha1(dump.encode()).hexdigest()[:8]}"


def distinct_labels(configs: list[TrainConfig]) -> list[str]:
    """Model names, plus ``key=value`` for the keys that differ among configs sharing a name."""
    names = [config.model.name for config in configs]
    flats = [flatten(config.model_dump(exclude={"seed"})) for config in configs]
    # a key differs among the configs of one name as soon as it takes two values (one pass, not pairwise)
    values: dict[str, dict[str, set[str]]] = {}
    for name, flat in zip(names, flats):
        for key, value in flat.items():
            values.setdefault(name, {}).setdefault(key, set()).add(repr(value))
    labels = []
    for name, flat in zip(names, flats):
        differing = [key for key in flat if len(values[name][key]) > 1]
        labels.append(" ".join([name, *(f"{_short(key)}={format_value(flat[key])}" for key in differing)]))
    return labels


def _sampled_label(config: TrainConfig, point: Mapping[str, Any]) -> str:
    """The model's name plus the point's values that the name does not already say."""
    extra = [f"{_short(key)}={format_value(value)}" for key, value in point.items() if not key.startswith("model")]
    return " ".join([config.model.name, *extra])


def _short(key: str) -> str:
    return key.removeprefix("trainer.")


def format_value(value: Any) -> str:
    """A value for labels and tables: floats to 3 significant digits, dicts as ``k=v,k=v``."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return ",".join(f"{k}={format_value(v)}" for k, v in flatten(value).items())
    return str(value)


def _plain(value: Any) -> Any:
    """A numpy scalar (as samplers return) as the Python number it holds."""
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, (str, bytes, list, dict)) else value
