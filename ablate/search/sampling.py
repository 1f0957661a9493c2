"""Sampled searches (``search.method`` tpe | random): Optuna proposes points, each runs once per seed.

How seeds combine with sampling: a *point* is one configuration of the space; it runs once per seed
of ``study.seeds`` (replicates share the point, so they share the group), and the sampler is told the
mean of the replicates' objective once all of them have ended. The sampler thus ranks
configurations, not lucky seeds, and ``search.num_samples`` counts points: the study runs
``num_samples x len(seeds)`` trials.

Operation order of :meth:`StudySearcher.suggest`: the pending replicates of the current point first;
else ask Optuna (through Ray Tune's ``OptunaSearch``, its sampler seeded with ``search.seed``) for a
point -> the study's constraints (:meth:`~ablate.study.Study.trial_for`) -> an excluded point never
trains: it is printed, told to Optuna as pruned (TPE then ranks its region below every completed
point), and a new point is drawn -> a kept point becomes one trial per seed.

Categorical axes are sampled by index (Optuna's categorical choices must be plain scalars; an axis's
values may be dicts, e.g. ``trainer.warmup`` sections); ranges by Optuna's float or int distributions.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ablate.search.trainable import trial_params
from ablate.study import Axis, Study, StudyError
from ablate.study.core import format_value
from ablate.study.schema import Search

__all__ = ["StudySearcher", "optuna_space", "sampler"]

MAX_EXCLUDED_IN_A_ROW = 1000  # draws excluded one after another before the study is declared unsatisfiable


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


def sampler(search: Search) -> optuna.samplers.BaseSampler:
    """The study's Optuna sampler, seeded with ``search.seed``: TPE or uniform random."""
    if search.method == "tpe":
        return optuna.samplers.TPESampler(seed=search.seed)
    if search.method == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    raise ValueError(f"search.method {search.method!r} is not sampled; allowed: tpe, random")


@dataclass
class _Point:
    """One drawn point: its replicates still to hand out, and the objectives of those that ended."""

    trials: list[dict[str, Any]]  # trial params (see trial_params), one per seed, not yet suggested
    pending: int  # replicates not yet ended
    objectives: list[float] = field(default_factory=list)  # of ended replicates that reported one


class StudySearcher(Searcher):
    """A Ray Tune searcher over a sampled study; see the module docstring for the order of operations."""

    def __init__(self, study: Study, *, metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self.study = study
        self.optuna = OptunaSearch(space=optuna_space(study.axes), metric=metric, mode=mode, sampler=sampler(study.search))
        self.points: dict[str, _Point] = {}  # point id (Optuna's trial id) -> point
        self.owner: dict[str, str] = {}  # Tune trial id -> point id
        self.drawn = 0  # points kept so far
        self.excluded = 0  # points the constraints dropped

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        current = next((pid for pid, point in self.points.items() if point.trials), None)
        if current is None:
            if self.drawn >= self.study.search.num_samples:
                return Searcher.FINISHED
            current = self._draw()
        self.owner[trial_id] = current
        return {"trial": self.points[current].trials.pop(0)}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """When the last replicate of a point ends, tell Optuna the mean objective (failed replicates left out)."""
        point_id = self.owner.pop(trial_id, None)
        if point_id is None:
            return
        point = self.points[point_id]
        point.pending -= 1
        if not error and result and self.metric in result:
            point.objectives.append(float(result[self.metric]))
        if point.pending == 0:
            del self.points[point_id]
            if point.objectives:
                mean = sum(point.objectives) / len(point.objectives)
                self.optuna.on_trial_complete(point_id, {self.metric: mean})
            else:
                self.optuna.on_trial_complete(point_id, None, error=True)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__.copy(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))

    def _draw(self) -> str:
        """Ask Optuna until a point survives the constraints; returns its id, its replicates queued."""
        for _ in range(MAX_EXCLUDED_IN_A_ROW):
            point_id = f"point_{self.drawn + self.excluded:05d}"
            point = self._decode(self.optuna.suggest(point_id))
            trials = [self.study.trial_for(point, seed=seed) for seed in self.study.seeds]
            if trials[0] is None:
                self.excluded += 1
                shown = ", ".join(f"{key}={format_value(value)}" for key, value in point.items())
                print(f"skipped a point excluded by constraints.exclude: {shown}", flush=True)
                self.optuna.on_trial_complete(point_id, None)  # no value, no error: pruned
                continue
            self.drawn += 1
            params = [trial_params(trial, self.study.metric) for trial in trials]
            self.points[point_id] = _Point(trials=params, pending=len(params))
            return point_id
        raise StudyError(
            f"{self.study.origin.file}: constraints.exclude: {MAX_EXCLUDED_IN_A_ROW} points drawn in a row were "
            "all excluded; the constraints leave (almost) nothing of the space to sample"
        )

    def _decode(self, params: dict[str, Any]) -> dict[str, Any]:
        """Optuna's params -> a point: categorical indices back to the axis values."""
        return {
            axis.key: axis.values[params[axis.key]] if axis.categorical else params[axis.key] for axis in self.study.axes
        }
