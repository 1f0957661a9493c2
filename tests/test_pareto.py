"""ablate.pareto: non-dominated sorting against brute force, 2-D hypervolume by hand, EDF and KS against scipy,
and the design-space verdict on spaces that do and do not differ."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ablate import pareto


def _brute_fronts(points: np.ndarray, modes) -> list[list[int]]:
    """Peel fronts by the definition: a point is in the current front when no remaining point dominates it."""
    array = pareto.oriented(points, modes)
    remaining, fronts = list(range(len(array))), []
    while remaining:
        front = [i for i in remaining if not any(pareto.dominates(array[j], array[i]) for j in remaining)]
        fronts.append(front)
        remaining = [i for i in remaining if i not in front]
    return fronts


@pytest.mark.parametrize("seed", range(12))
def test_sort_matches_brute_force_on_random_sets_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 40)), int(rng.integers(2, 4))
    points = rng.integers(0, 5, size=(n, m)).astype(float)  # few values: many ties and duplicates
    modes = tuple(rng.choice(["min", "max"], size=m))
    fronts = pareto.non_dominated_sort(points, modes)
    assert [f.tolist() for f in fronts] == _brute_fronts(points, modes)
    assert sorted(itertools.chain.from_iterable(f.tolist() for f in fronts)) == list(range(n))


def test_duplicates_share_a_front_and_one_point_is_its_own_front():
    points = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 3.0]])
    assert [f.tolist() for f in pareto.non_dominated_sort(points, ("min", "min"))] == [[0, 1], [2]]
    assert [f.tolist() for f in pareto.non_dominated_sort([[3.0, 4.0]], ("min", "max"))] == [[0]]
    assert pareto.non_dominated_sort(np.empty((0, 2)), ("min", "min")) == []


def test_all_dominated_but_one_gives_one_point_per_front_on_a_chain():
    points = np.array([[3.0, 3.0], [0.0, 0.0], [2.0, 2.0], [1.0, 1.0]])
    assert [f.tolist() for f in pareto.non_dominated_sort(points, ("min", "min"))] == [[1], [3], [2], [0]]
    assert pareto.pareto_front(points, ("min", "min")).tolist() == [1]
    assert pareto.pareto_front(points, ("max", "max")).tolist() == [0]


def test_nan_counts_as_worst():
    points = np.array([[np.nan, 1.0], [5.0, 1.0]])
    assert pareto.pareto_front(points, ("min", "min")).tolist() == [1]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="'min' or 'max'"):
        pareto.non_dominated_sort([[1.0, 2.0]], ("min", "lowest"))
    with pytest.raises(ValueError, match="shape"):
        pareto.non_dominated_sort([[1.0, 2.0, 3.0]], ("min", "min"))


def test_hypervolume_2d_by_hand():
    # one point: the rectangle to the reference
    assert pareto.hypervolume_2d([[1.0, 2.0]], (3.0, 5.0), ("min", "min")) == pytest.approx(2 * 3)
    # a staircase (1,3), (2,1) to (4,4): 1*1 + 2*3 = 7; a dominated point (3,3) adds nothing
    staircase = [[1.0, 3.0], [2.0, 1.0], [3.0, 3.0]]
    assert pareto.hypervolume_2d(staircase, (4.0, 4.0), ("min", "min")) == pytest.approx(7.0)
    # max on the second objective: throughput 1 and 3 against reference 0 -> (1, -1), (2, -3), ref (4, 0)
    assert pareto.hypervolume_2d([[1.0, 1.0], [2.0, 3.0]], (4.0, 0.0), ("min", "max")) == pytest.approx(
        1 * 1 + 2 * 3)
    # a point outside the reference box adds nothing; none inside: zero
    assert pareto.hypervolume_2d([[5.0, 1.0], [1.0, 3.0]], (4.0, 4.0), ("min", "min")) == pytest.approx(3.0)
    assert pareto.hypervolume_2d([[5.0, 5.0]], (4.0, 4.0), ("min", "min")) == 0.0


def test_hypervolume_curve_is_the_prefix_hypervolume_and_never_falls():
    rng = np.random.default_rng(3)
    points = rng.random((60, 2))
    curve = pareto.hypervolume_curve(points, (1.1, 1.1), ("min", "min"))
    expected = [pareto.hypervolume_2d(points[: k + 1], (1.1, 1.1), ("min", "min")) for k in range(len(points))]
    assert curve == pytest.approx(expected)
    assert np.all(np.diff(curve) >= -1e-12)


def test_rank_order_puts_front_then_crowding_then_index():
    # front: (0,4), (1,2), (2,1.5), (4,0); (1,2) is most crowded in the middle; then (3,3) in front 2
    points = np.array([[1.0, 2.0], [0.0, 4.0], [3.0, 3.0], [2.0, 1.5], [4.0, 0.0]])
    order = pareto.rank_order(points, ("min", "min")).tolist()
    assert order[:2] == [1, 4]  # the extremes (infinite crowding distance), by index
    assert set(order[2:4]) == {0, 3} and order[4] == 2


scipy_stats = pytest.importorskip("scipy.stats", reason="scipy is needed for the reference KS")


@pytest.mark.parametrize("seed", range(5))
def test_ks_distance_and_edf_match_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.1, 0.02, size=int(rng.integers(3, 50))).round(3)  # rounded: ties across samples
    b = rng.normal(0.11, 0.03, size=int(rng.integers(3, 50))).round(3)
    assert pareto.ks_distance(a, b) == pytest.approx(scipy_stats.ks_2samp(a, b).statistic)
    x, f = pareto.edf(a)
    assert f == pytest.approx(scipy_stats.ecdf(a).cdf.evaluate(x))


def test_design_spaces_that_differ_are_told_apart_and_same_ones_are_not():
    rng = np.random.default_rng(7)
    noise = rng.normal(0, 0.004, size=5)
    good, bad = rng.normal(0.08, 0.01, size=60), rng.normal(0.11, 0.01, size=60)
    apart = pareto.compare_edfs(good, bad, deviations=noise - noise.mean(), resamples=300)
    assert apart.verdict == "a better" and apart.low > apart.noise
    assert pareto.compare_edfs(bad, good, deviations=noise, resamples=300).verdict == "b better"
    twin = rng.normal(0.08, 0.01, size=60)
    same = pareto.compare_edfs(good, twin, deviations=noise - noise.mean(), resamples=300)
    assert same.verdict == "not distinguishable"


def test_seed_noise_hides_a_shift_smaller_than_the_noise():
    rng = np.random.default_rng(11)
    a, b = rng.normal(0.080, 0.002, size=40), rng.normal(0.083, 0.002, size=40)
    assert pareto.compare_edfs(a, b, resamples=300).verdict == "a better"  # no noise reference: sampling alone
    seeds = rng.normal(0.0, 0.01, size=6)  # seed noise five times the spread between models
    hidden = pareto.compare_edfs(a, b, deviations=seeds - seeds.mean(), resamples=300)
    assert hidden.verdict == "not distinguishable" and hidden.low > hidden.noise  # real, but under 2 seed std
    assert abs(hidden.shift) < 2 * hidden.seed_std
