"""Asynchronous successive halving on several objectives at once (MOASHA), as a Ray Tune trial scheduler.

Ray Tune's ASHA ranks trials by one metric. This scheduler follows Syne Tune's MOASHA (Schmucker et al.
2021, "Multi-objective multi-fidelity hyperparameter optimization with application to fairness";
Salinas et al. 2021, "A multi-objective perspective on jointly tuning hardware and hyperparameters"):
rungs at ``grace_period * reduction_factor**k`` (below ``max_t``), and at each rung a trial continues
only when it is among the best ``1 / reduction_factor`` of the trials recorded at that rung.

"Best" is the order of :func:`ablate.pareto.rank_order` on the objective vectors recorded at the rung,
the new trial's included: non-dominated front first, then crowding distance within the front (NSGA-II;
Syne Tune uses an epsilon-net there), then arrival order (the earlier trial first, so on exact ties the
newcomer yields). Position p (from 0) among n recorded trials continues when p < n / reduction_factor:
the first trial at a rung always continues, as in Ray's ASHA. A trial reaching ``max_t`` is stopped
(its run is complete). A result missing ``time_attr`` or an objective is passed over (CONTINUE), as Ray's
ASHA does; a NaN objective counts as worst.

Example::

    >>> scheduler = MultiObjectiveASHA(objectives=[("val_error", "min"), ("macs", "min")],
    ...                                max_t=64, grace_period=4, reduction_factor=4)
    >>> scheduler.rungs
    (4, 16)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from ablate.pareto import MODES, rank_order

__all__ = ["MultiObjectiveASHA"]


class MultiObjectiveASHA(FIFOScheduler):
    """Stop a trial at a rung when its non-dominated rank is outside the best ``1 / reduction_factor``.

    ``objectives``: (result key, "min" | "max") pairs, two or more; ``time_attr``: the result key that
    counts progress (the trainer's ``iteration``). Trials are chosen to run first in, first out
    (:class:`~ray.tune.schedulers.FIFOScheduler`).
    """

    def __init__(
        self,
        *,
        objectives: Sequence[tuple[str, str]],
        time_attr: str = "iteration",
        max_t: int,
        grace_period: int,
        reduction_factor: float = 4,
    ):
        objectives = tuple((str(name), str(mode)) for name, mode in objectives)
        if len(objectives) < 2:
            raise ValueError(f"objectives {objectives}: MultiObjectiveASHA needs two or more (else use ASHA)")
        if any(mode not in MODES for _, mode in objectives):
            raise ValueError(f"objectives {objectives}: each mode is 'min' or 'max'")
        if not (0 < grace_period <= max_t):
            raise ValueError(f"grace_period {grace_period}, max_t {max_t}: need 0 < grace_period <= max_t")
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor {reduction_factor}: must be > 1")
        super().__init__()
        self._objectives = objectives
        self._time_attr = time_attr
        self._max_t = max_t
        self._reduction_factor = float(reduction_factor)
        milestones, k = [], 0
        while grace_period * reduction_factor**k < max_t:
            milestones.append(grace_period * reduction_factor**k)
            k += 1
        self.rungs = tuple(int(m) if float(m).is_integer() else m for m in milestones)
        self._recorded: dict[Any, dict[str, tuple[float, ...]]] = {m: {} for m in self.rungs}  # rung -> trial -> vector
        self._num_stopped = 0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        """Accept Tune's metric and mode (the first objective, for its progress table); the objectives rule."""
        if metric:
            self._metric = metric
        return True

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        """CONTINUE or STOP (see the module docstring)."""
        action = self.decide(trial.trial_id, result)
        self._num_stopped += action == TrialScheduler.STOP
        return action

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        """A completed trial's last result still counts at the rung it reached (for trials that come later)."""
        if result:
            self.decide(trial.trial_id, result)

    def decide(self, trial_id: str, result: dict) -> str:
        """The decision for one result of ``trial_id``; records its objective vector at the rung it reached."""
        progress = result.get(self._time_attr)
        vector = self._vector(result)
        if progress is None or vector is None:
            return TrialScheduler.CONTINUE
        if progress >= self._max_t:
            return TrialScheduler.STOP
        for milestone in reversed(self.rungs):  # the highest rung reached and not yet recorded for this trial
            recorded = self._recorded[milestone]
            if progress < milestone or trial_id in recorded:
                continue
            recorded[trial_id] = vector
            ids = list(recorded)
            order = rank_order([recorded[i] for i in ids], [mode for _, mode in self._objectives]).tolist()
            position = order.index(ids.index(trial_id))
            return TrialScheduler.CONTINUE if position < len(ids) / self._reduction_factor else TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _vector(self, result: dict) -> tuple[float, ...] | None:
        values = []
        for name, _ in self._objectives:
            value = result.get(name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                return None
            values.append(float(value) if math.isfinite(value) else math.nan)
        return tuple(values)

    def debug_string(self) -> str:
        counts = ", ".join(f"rung {m}: {len(self._recorded[m])}" for m in self.rungs)
        return f"Using MultiObjectiveASHA: num_stopped={self._num_stopped}; {counts}"
