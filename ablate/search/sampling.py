"""Sampled searches (``search.method`` tpe | random | nsga2 | gp): Optuna proposes points, each runs once per seed.

How seeds combine with sampling: a *point* is one configuration of the space; it runs once per seed
of ``study.seeds`` (replicates share the point, so they share the group), and the sampler is told the
mean of the replicates' objectives once all of them have ended. The sampler thus ranks
configurations, not lucky seeds, and ``search.num_samples`` counts points: the study runs
``num_samples x len(seeds)`` trials.

Several objectives (a study's ``objectives``): the sampler is told one mean per objective, under its
result key (:func:`objective_keys`: the first objective is the trainable's ``objective``, the others
their own names; cost objectives come with every report, :mod:`ablate.search.trainable`); Ray Tune's
``OptunaSearch`` takes the lists of keys and modes. TPE is then Optuna's multi-objective TPE, NSGA-II
and the GP sampler rank by non-domination.

Design spaces (a study's ``design_spaces``, method random): each space has its own sampler, seeded
``search.seed + its index``, and gives ``num_samples`` kept points, space after space; then the noise
reference's point runs once per each of its seeds. Every trial's params name its design space
(:data:`ablate.tracking.layout.NOISE_SPACE` for the noise reference).

Operation order of :meth:`StudySearcher.suggest`: the pending replicates of the current point first;
else ask the current source's Optuna for a point -> the study's constraints and budget
(:meth:`~ablate.study.Study.trial_for`) -> a dropped point never trains: it is printed, told to Optuna
as pruned (TPE then ranks its region below every completed point; NSGA-II leaves it out of its
population), and a new point is drawn; so is a point its source drew before (NSGA-II's offspring
repeat points of a small space, and the same point with the same seeds would train the same runs
again) -> a kept point becomes one trial per seed.

Categorical axes are sampled by index (Optuna's categorical choices must be plain scalars; an axis's
values may be dicts, e.g. ``trainer.warmup`` sections); ranges by Optuna's float or int distributions.
"""

from __future__ import annotations

import json
import pickle
import threading
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ablate.search.trainable import OBJECTIVE, objective, trial_params
from ablate.study import Axis, Study, StudyError, Trial
from ablate.study.core import format_value
from ablate.study.costs import trial_costs
from ablate.study.schema import Search
from ablate.tracking.layout import NOISE_SPACE

__all__ = ["PicklableNSGAII", "StudySearcher", "objective_keys", "optuna_space", "sampler", "study_trial_params"]

MAX_EXCLUDED_IN_A_ROW = 1000  # draws dropped one after another before the study is declared unsatisfiable


def optuna_space(axes: tuple[Axis, ...]) -> dict[str, BaseDistribution]:
    """One Optuna distribution per axis, under the axis key: an index for categorical axes, else the range."""
    space: dict[str, BaseDistribution] = {}
    for axis in axes:
        if axis.categorical:
            space[axis.key] = CategoricalDistribution(tuple(range(len(axis.values))))
        elif axis.integer:
            space[axis.key] = IntDistribution(int(axis.low), int(axis.high), log=axis.log)
        else:
            space[axis.key] = FloatDistribution(axis.low, axis.high, log=axis.log)
    return space


class PicklableNSGAII(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II sampler that survives pickling (Ray Tune pickles the search algorithm at start).

    Optuna's sampler holds a ``threading.Lock``, which cannot be pickled; it is left out of the pickle and
    a new one made on unpickling. Everything else (its random state, its generation bookkeeping) travels,
    so a restored sampler draws what the original would have.
    """

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def sampler(search: Search, *, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The study's Optuna sampler, seeded with ``search.seed + offset``: TPE, uniform random, NSGA-II or GP.

    With several objectives TPE is Optuna's multi-objective TPE, and NSGA-II and GP rank by
    non-domination; nothing changes here (Optuna reads the study's directions).
    """
    seed = search.seed + offset
    if search.method == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if search.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.method == "nsga2":
        size = {"population_size": search.population_size} if search.population_size else {}
        return PicklableNSGAII(seed=seed, **size)
    if search.method == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise ValueError(f"search.method {search.method!r} is not sampled; allowed: tpe, random, nsga2, gp")


def objective_keys(study: Study) -> list[tuple[str, str]]:
    """``(result key, mode)`` of each objective the sampler and the scheduler rank by: the first is the
    trainable's ``objective`` (the metric, its worst value where missing), the others their names."""
    first = [(OBJECTIVE, study.metric.mode)]
    return first + [(o.name, o.mode) for o in study.objectives[1:]]


def study_trial_params(study: Study, trial: Trial, *, design_space: str | None = None) -> dict[str, Any]:
    """A trial's params (:func:`~ablate.search.trainable.trial_params`), with its costs when the study has
    several objectives (cost objectives then travel with every report) and its design space's name."""
    costs = trial_costs(trial.config) if study.objectives else None
    return trial_params(trial, study.metric, costs=costs, design_space=design_space)


@dataclass
class _Point:
    """One drawn point: its replicates still to hand out, and the objectives of those that ended."""

    trials: list[dict[str, Any]]  # trial params (see trial_params), one per seed, not yet suggested
    pending: int  # replicates not yet ended
    source: int | None  # index of the sampler that drew it; None: the noise reference (nothing to tell)
    objectives: list[list[float]] = field(default_factory=list)  # per ended replicate that reported: its values


class StudySearcher(Searcher):
    """A Ray Tune searcher over a sampled study; see the module docstring for the order of operations."""

    def __init__(self, study: Study, *, metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self.study = study
        self.keys = objective_keys(study)
        keys, modes = [k for k, _ in self.keys], [m for _, m in self.keys]
        several = len(keys) > 1
        spaces = [(space.name, space.axes) for space in study.design_spaces] or [(None, study.axes)]
        self.names = [name for name, _ in spaces]  # design space of each source; None: the study's space
        self.axes = [axes for _, axes in spaces]
        self.sources = [
            OptunaSearch(space=optuna_space(axes), metric=keys if several else keys[0],
                         mode=modes if several else modes[0], sampler=sampler(study.search, offset=i))
            for i, (_, axes) in enumerate(spaces)
        ]
        self.points: dict[str, _Point] = {}  # point id (its source's trial id) -> point
        self.owner: dict[str, str] = {}  # Tune trial id -> point id
        self.kept = [0] * len(spaces)  # points kept so far, per source
        self.excluded = 0  # points the constraints or the budget dropped, or drawn before
        self.seen: set[str] = set()  # kept points, as "<source> <point as JSON>"
        self.noise_queued = study.noise_reference is None

    @property
    def drawn(self) -> int:
        """Points kept so far, in all sources."""
        return sum(self.kept)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        current = next((pid for pid, point in self.points.items() if point.trials), None)
        if current is None:
            source = next((i for i, kept in enumerate(self.kept) if kept < self.study.search.num_samples), None)
            if source is not None:
                current = self._draw(source)
            elif not self.noise_queued:
                current = self._noise()
            else:
                return Searcher.FINISHED
        self.owner[trial_id] = current
        return {"trial": self.points[current].trials.pop(0)}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """When the last replicate of a point ends, tell its sampler the mean of each objective (failed
        replicates left out)."""
        point_id = self.owner.pop(trial_id, None)
        if point_id is None:
            return
        point = self.points[point_id]
        point.pending -= 1
        if not error and result and self.metric in result:
            point.objectives.append([objective(result, metric=key, mode=mode) for key, mode in self.keys])
        if point.pending > 0:
            return
        del self.points[point_id]
        if point.source is None:
            return
        optuna_search = self.sources[point.source]
        if point.objectives:
            means = [sum(values) / len(values) for values in zip(*point.objectives)]
            optuna_search.on_trial_complete(point_id, dict(zip([k for k, _ in self.keys], means)))
        else:
            optuna_search.on_trial_complete(point_id, None, error=True)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__.copy(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))

    def _draw(self, source: int) -> str:
        """Ask the source's Optuna until a point survives the constraints and the budget; returns its id."""
        for _ in range(MAX_EXCLUDED_IN_A_ROW):
            point_id = f"point_{self.drawn + self.excluded:05d}"
            params = self.sources[source].suggest(point_id)
            point = {axis.key: axis.values[params[axis.key]] if axis.categorical else params[axis.key]
                     for axis in self.axes[source]}
            key = f"{source} {json.dumps(point, sort_keys=True, default=str)}"
            trials = [] if key in self.seen else [self.study.trial_for(point, seed=seed) for seed in self.study.seeds]
            if not trials or trials[0] is None:
                self.excluded += 1
                shown = ", ".join(f"{key}={format_value(value)}" for key, value in point.items())
                reason = self.study.drop_reason(point) if trials else "drawn before"
                print(f"skipped a point {reason}: {shown}", flush=True)
                self.sources[source].on_trial_complete(point_id, None)  # no value, no error: pruned
                continue
            self.seen.add(key)
            self.kept[source] += 1
            specs = [study_trial_params(self.study, trial, design_space=self.names[source]) for trial in trials]
            self.points[point_id] = _Point(trials=specs, pending=len(specs), source=source)
            return point_id
        where = f"design space {self.names[source]!r}" if self.names[source] else "the space"
        raise StudyError(
            f"{self.study.origin.file}: constraints: {MAX_EXCLUDED_IN_A_ROW} points drawn in a row from {where} "
            "were all excluded, over the budget or drawn before; the constraints leave too little of it to sample "
            "num_samples distinct points"
        )

    def _noise(self) -> str:
        """The noise reference's point, once per each of its seeds (checked at load: it is kept)."""
        noise = self.study.noise_reference
        specs = [study_trial_params(self.study, self.study.trial_for(noise.point, seed=seed), design_space=NOISE_SPACE)
                 for seed in noise.seeds]
        self.noise_queued = True
        self.points[NOISE_SPACE] = _Point(trials=specs, pending=len(specs), source=None)
        return NOISE_SPACE
