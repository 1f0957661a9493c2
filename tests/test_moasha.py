"""MultiObjectiveASHA on hand-made rungs: who continues and who stops, without a Ray cluster."""

from __future__ import annotations

import pytest
from ray.tune.schedulers import TrialScheduler

from ablate.search.moasha import MultiObjectiveASHA

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def _scheduler(**kwargs) -> MultiObjectiveASHA:
    settings = {"objectives": [("val_error", "min"), ("macs", "min")], "max_t": 64, "grace_period": 4,
                "reduction_factor": 2} | kwargs
    return MultiObjectiveASHA(**settings)


def _result(iteration: int, error: float, macs: float) -> dict:
    return {"iteration": iteration, "val_error": error, "macs": macs}


def test_rungs_are_grace_period_times_powers_of_the_reduction_factor_below_max_t():
    assert _scheduler().rungs == (4, 8, 16, 32)
    assert _scheduler(reduction_factor=4).rungs == (4, 16)


def test_a_dominated_trial_stops_and_a_front_member_continues():
    scheduler = _scheduler()
    assert scheduler.decide("a", _result(4, 0.10, 5e6)) == CONTINUE  # first at the rung
    assert scheduler.decide("b", _result(4, 0.20, 9e6)) == STOP  # dominated by a; position 1 of 2, keep 1
    assert scheduler.decide("c", _result(4, 0.05, 9e6)) == CONTINUE  # on the front (cheaper a, better c)
    # four at the rung keep two: d is on the front but, front ranked by crowding then arrival, lies third
    assert scheduler.decide("d", _result(4, 0.07, 7e6)) == STOP


def test_the_rule_reads_each_objectives_mode():
    scheduler = _scheduler(objectives=[("val_error", "min"), ("images_per_s", "max")])
    assert scheduler.decide("a", {"iteration": 4, "val_error": 0.10, "images_per_s": 100.0}) == CONTINUE
    assert scheduler.decide("b", {"iteration": 4, "val_error": 0.10, "images_per_s": 50.0}) == STOP
    assert scheduler.decide("c", {"iteration": 4, "val_error": 0.10, "images_per_s": 400.0}) == CONTINUE


def test_between_rungs_nothing_is_decided_and_a_rung_is_decided_once():
    scheduler = _scheduler()
    scheduler.decide("a", _result(4, 0.05, 1e6))
    assert scheduler.decide("b", _result(4, 0.20, 9e6)) == STOP
    assert scheduler.decide("b", _result(6, 0.20, 9e6)) == CONTINUE  # no new rung reached
    assert scheduler.decide("a", _result(8, 0.04, 1e6)) == CONTINUE  # first at rung 8


def test_max_t_stops_missing_values_pass_and_nan_is_worst():
    scheduler = _scheduler()
    assert scheduler.decide("a", _result(64, 0.10, 1e6)) == STOP
    assert scheduler.decide("a", {"iteration": 4, "val_error": 0.1}) == CONTINUE  # no macs: passed over
    assert scheduler.decide("a", _result(4, 0.10, 5e6)) == CONTINUE
    assert scheduler.decide("n", _result(4, float("nan"), 1e6)) == STOP  # cheaper, but no error: worst


def test_the_best_quarter_continues_with_reduction_factor_four():
    scheduler = _scheduler(reduction_factor=4)
    decisions = [scheduler.decide(str(i), _result(4, 0.30 - 0.01 * i, 9e6)) for i in range(8)]
    # each newcomer dominates every earlier one (lower error, equal cost): it is first, so it continues
    assert decisions == [CONTINUE] * 8
    worse = scheduler.decide("w", _result(4, 0.25, 9e6))  # 9 at the rung keep 3: w is 6th
    assert worse == STOP


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="two or more"):
        _scheduler(objectives=[("val_error", "min")])
    with pytest.raises(ValueError, match="'min' or 'max'"):
        _scheduler(objectives=[("val_error", "min"), ("macs", "least")])
    with pytest.raises(ValueError, match="grace_period"):
        _scheduler(grace_period=0)
    assert _scheduler().set_search_properties("val_error", "min") is True
