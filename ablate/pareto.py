"""Multi-objective analysis on plain arrays: non-dominated sorting, Pareto fronts, 2-D hypervolume, error EDFs
and the KS distance between them, with bootstrap intervals and a seed-noise level. numpy only.

Used by the multi-objective scheduler (:mod:`ablate.search.moasha`) and by the report
(:mod:`ablate.report.front`, :mod:`ablate.report.spaces`).

Conventions: ``points`` is an ``(n, m)`` array, one row per candidate, one column per objective;
``modes`` gives ``"min"`` or ``"max"`` per column. Internally every column is turned into a quantity to
minimize (:func:`oriented`: ``max`` columns negated, NaN -> +inf, so a missing value is worst).
*a dominates b* when a is no worse in every objective and strictly better in at least one; equal
points do not dominate each other, so duplicates share a front.

Example::

    >>> import numpy as np
    >>> points = np.array([[0.10, 5e6], [0.08, 9e6], [0.12, 9e6]])  # (error, MACs)
    >>> [f.tolist() for f in non_dominated_sort(points, ("min", "min"))]
    [[0, 1], [2]]
    >>> float(hypervolume_2d(points, (0.2, 1e7), ("min", "min")))
    520000.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MAX_POINTS",
    "KSComparison",
    "bootstrap_ks",
    "compare_edfs",
    "crowding_distance",
    "dominates",
    "edf",
    "hypervolume_2d",
    "hypervolume_curve",
    "ks_distance",
    "non_dominated_sort",
    "oriented",
    "pareto_front",
    "rank_order",
    "seed_noise_ks",
]

MAX_POINTS = 20_000  # the dominance matrix is n x n booleans: 400 MB at this bound
MODES = ("min", "max")


def oriented(points: np.ndarray | Sequence[Sequence[float]], modes: Sequence[str]) -> np.ndarray:
    """``points`` as a float ``(n, m)`` array to minimize: ``max`` columns negated, NaN replaced by +inf."""
    array = np.array(points, dtype=float, ndmin=2)
    if array.size == 0:
        return array.reshape(0, len(modes))
    if array.ndim != 2 or array.shape[1] != len(modes):
        raise ValueError(f"points of shape {array.shape}: need (n, {len(modes)}), one column per mode")
    if len(array) > MAX_POINTS:
        raise ValueError(f"{len(array)} points: at most {MAX_POINTS} are sorted at once")
    bad = [mode for mode in modes if mode not in MODES]
    if bad:
        raise ValueError(f"modes {bad}: each mode is 'min' or 'max'")
    signs = np.array([1.0 if mode == "min" else -1.0 for mode in modes])
    array = array * signs
    array[np.isnan(array)] = np.inf
    return array


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when ``a`` dominates ``b`` (both already oriented to minimize)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return bool(np.all(a <= b) and np.any(a < b))


def _dominance(points: np.ndarray) -> np.ndarray:
    """``D[i, j]``: point i dominates point j (oriented points)."""
    no_worse = np.all(points[:, None, :] <= points[None, :, :], axis=2)
    better = np.any(points[:, None, :] < points[None, :, :], axis=2)
    return no_worse & better


def non_dominated_sort(points, modes: Sequence[str]) -> list[np.ndarray]:
    """The fronts, best first: ``fronts[0]`` holds the indices no point dominates, ``fronts[1]`` those only
    ``fronts[0]`` dominates, and so on (Deb et al. 2002, NSGA-II, sec. III-A). Indices ascending in each front.

    O(n^2 m) time and an n x n boolean matrix: fine for the thousands of trials a study records.
    """
    array = oriented(points, modes)
    if len(array) == 0:
        return []
    dominance = _dominance(array)
    dominated_by = dominance.sum(axis=0)  # how many points dominate each point
    assigned = np.zeros(len(array), dtype=bool)
    fronts = []
    while not assigned.all():
        front = np.flatnonzero((dominated_by == 0) & ~assigned)
        fronts.append(front)
        assigned[front] = True
        dominated_by = dominated_by - dominance[front].sum(axis=0)
    return fronts


def pareto_front(points, modes: Sequence[str]) -> np.ndarray:
    """The indices of the non-dominated points, ascending (the first front of :func:`non_dominated_sort`)."""
    fronts = non_dominated_sort(points, modes)
    return fronts[0] if fronts else np.array([], dtype=int)


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each point within its set (oriented points; Deb et al. 2002, sec. III-B).

    Per objective: sort (stably), the two extremes get +inf, each interior point adds the gap between its
    neighbours divided by the objective's range in the set (an objective with no range adds nothing).
    """
    n, m = points.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(points[:, j], kind="stable")
        values = points[order, j]
        distance[order[0]] = distance[order[-1]] = np.inf
        span = values[-1] - values[0]
        if np.isfinite(span) and span > 0:
            distance[order[1:-1]] += (values[2:] - values[:-2]) / span
    return distance


def rank_order(points, modes: Sequence[str]) -> np.ndarray:
    """All indices, best first: by front (:func:`non_dominated_sort`), then by crowding distance within the
    front (larger first: the front's extremes and its sparse stretches), then by index (earlier first)."""
    array = oriented(points, modes)
    keys = []
    for rank, front in enumerate(non_dominated_sort(array, ("min",) * array.shape[1])):
        crowding = crowding_distance(array[front])
        keys += [(rank, -c, int(i)) for i, c in zip(front, crowding)]
    return np.array([key[2] for key in sorted(keys)], dtype=int)


def hypervolume_2d(points, reference: Sequence[float], modes: Sequence[str]) -> float:
    """The area dominated by ``points`` and bounded by ``reference`` (2 objectives).

    Points not strictly better than the reference in both objectives add nothing. Sweep over the front
    sorted by the first objective: sum of (next x - x) * (reference y - y).
    """
    if len(modes) != 2:
        raise ValueError(f"hypervolume_2d takes 2 objectives, not {len(modes)}")
    array = oriented(points, modes)
    ref = oriented([reference], modes)[0]
    if not np.all(np.isfinite(ref)):
        raise ValueError(f"reference {tuple(reference)}: must be finite")
    inside = array[np.all(array < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    front = inside[pareto_front(inside, ("min", "min"))]
    front = front[np.lexsort((front[:, 1], front[:, 0]))]
    xs = np.append(front[:, 0], ref[0])
    return float(np.sum((xs[1:] - xs[:-1]) * (ref[1] - front[:, 1])))


def hypervolume_curve(points, reference: Sequence[float], modes: Sequence[str]) -> np.ndarray:
    """``curve[k]`` = :func:`hypervolume_2d` of the first ``k + 1`` points (in the order given: trial order).

    Incremental: a point that the current front dominates (or that misses the reference box) leaves the
    value as it was; otherwise it joins the front, the points it dominates leave, and the area is recomputed
    on the front alone.
    """
    array = oriented(points, modes)
    ref = oriented([reference], modes)[0]
    curve = np.zeros(len(array))
    front = np.empty((0, 2))
    value = 0.0
    for k, point in enumerate(array):
        if np.all(point < ref) and not any(dominates(q, point) or np.array_equal(q, point) for q in front):
            keep = [not dominates(point, q) for q in front]
            front = np.vstack([front[keep], point])
            value = hypervolume_2d(front, ref, ("min", "min"))
        curve[k] = value
    return curve


# -- error EDFs (Radosavovic et al. 2019, "On Network Design Spaces for Visual Recognition", sec. 3) --------


def edf(values) -> tuple[np.ndarray, np.ndarray]:
    """The empirical distribution function as steps: ``(x, F)`` with x the distinct values, ascending, and
    ``F[i]`` the fraction of values <= x[i]. Non-finite values are dropped."""
    x = np.sort(np.asarray(values, dtype=float).ravel())
    x = x[np.isfinite(x)]
    steps = np.unique(x)
    return steps, np.searchsorted(x, steps, side="right") / max(len(x), 1)


def _signed_ks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(sup (F_a - F_b), sup (F_b - F_a)) over all values, for sorted finite samples."""
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(fa - fb)), float(np.max(fb - fa))


def _sorted_finite(values) -> np.ndarray:
    x = np.sort(np.asarray(values, dtype=float).ravel())
    x = x[np.isfinite(x)]
    if len(x) == 0:
        raise ValueError("an EDF needs at least one finite value")
    return x


def ks_distance(a, b) -> float:
    """The two-sample Kolmogorov-Smirnov distance sup_x |F_a(x) - F_b(x)| (``scipy.stats.ks_2samp``'s statistic)."""
    return max(_signed_ks(_sorted_finite(a), _sorted_finite(b)))


def bootstrap_ks(
    a, b, *, resamples: int = 1000, level: float = 0.95, rng: np.random.Generator | None = None
) -> tuple[float, float, float]:
    """The KS distance between ``a`` and ``b`` with a percentile bootstrap interval: ``(D, low, high)``.

    Each resample draws ``len(a)`` values from ``a`` and ``len(b)`` from ``b`` with replacement (models
    resampled within each space). ``rng`` defaults to a fixed seed, so a report is reproducible.
    """
    d, low, high, _ = _bootstrap(_sorted_finite(a), _sorted_finite(b), resamples, level, rng)
    return d, low, high


def _bootstrap(a, b, resamples, level, rng):
    rng = rng if rng is not None else np.random.default_rng(0)
    up, down = _signed_ks(a, b)
    draws, a_above = np.empty(resamples), 0
    for r in range(resamples):
        pa, pb = _signed_ks(np.sort(rng.choice(a, len(a))), np.sort(rng.choice(b, len(b))))
        draws[r] = max(pa, pb)
        a_above += pa > pb
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return max(up, down), float(low), float(high), a_above / resamples


def seed_noise_ks(
    pooled,
    deviations,
    *,
    sizes: tuple[int, int],
    resamples: int = 1000,
    level: float = 0.95,
    rng: np.random.Generator | None = None,
) -> float:
    """The KS distance that model sampling and seed noise alone give: the ``level`` quantile of D between two
    samples of ``sizes`` drawn from the SAME ``pooled`` errors (both spaces together: the null that the
    spaces do not differ), each drawn model re-seeded: its error plus (e_new - e_old), two draws from
    ``deviations`` (the noise reference's seed errors minus their mean), as if it were trained again.

    KS compares ranks, so this level barely moves with the size of the seed noise (the recorded errors
    already carry one seed's noise each); the size of the noise enters the verdict through the shift rule
    of :func:`compare_edfs`. Without ``deviations`` (no noise reference recorded) it is the level of
    model sampling alone.
    """
    rng = rng if rng is not None else np.random.default_rng(1)
    pooled = _sorted_finite(pooled)
    noise = _finite(deviations)
    if len(noise) == 0:
        noise = np.zeros(1)
    draws = np.empty(resamples)
    for r in range(resamples):
        a, b = (rng.choice(pooled, n) + rng.choice(noise, n) - rng.choice(noise, n) for n in sizes)
        draws[r] = max(_signed_ks(np.sort(a), np.sort(b)))
    return float(np.percentile(draws, 100 * level))


def _finite(values) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


@dataclass(frozen=True)
class KSComparison:
    """Two error samples compared by their EDFs (see :func:`compare_edfs`)."""

    d: float  # KS distance between the two samples
    low: float  # bootstrap interval of d
    high: float
    noise: float  # the seed-noise level of d (:func:`seed_noise_ks`)
    a_lower: float  # share of resamples in which a's EDF is above b's at the largest gap (a: more low errors)
    shift: float  # median(b) - median(a)
    seed_std: float | None  # sample std of the noise reference's seed errors; None without one
    verdict: str  # "a better" | "b better" | "not distinguishable"


def compare_edfs(
    a,
    b,
    *,
    deviations=(),
    min_spreads: float = 2.0,
    resamples: int = 1000,
    level: float = 0.95,
    rng: np.random.Generator | None = None,
) -> KSComparison:
    """Is one design space's error EDF better than the other's, beyond what seed noise alone gives?

    Operation order: D = KS distance of ``a`` and ``b`` with its bootstrap ``level`` interval (models
    resampled within each space) -> the noise level (:func:`seed_noise_ks`: the pooled models, resampled
    and re-seeded) -> the verdict. *a better* when all three hold: the interval's lower end exceeds the
    noise level; a's EDF lies above b's at the largest gap (more models at low error) in at least
    ``level`` of the resamples; and the medians differ by at least ``min_spreads`` seed std (the std of
    ``deviations``; the project's rule for a clear difference, :class:`ablate.report.diagnose.Tolerance`),
    so a real but smaller shift is not called better. *b better* likewise; else *not distinguishable*.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    xa, xb = _sorted_finite(a), _sorted_finite(b)
    d, low, high, a_above = _bootstrap(xa, xb, resamples, level, rng)
    noise = seed_noise_ks(np.concatenate([xa, xb]), deviations, sizes=(len(xa), len(xb)), resamples=resamples,
                          level=level, rng=rng)
    shift = float(np.median(xb) - np.median(xa))
    spread = _finite(deviations)
    seed_std = float(np.std(spread, ddof=1)) if len(spread) > 1 else None
    large = seed_std is None or abs(shift) >= min_spreads * seed_std
    verdict = "not distinguishable"
    if low > noise and large and a_above >= level and shift > 0:
        verdict = "a better"
    elif low > noise and large and 1 - a_above >= level and shift < 0:
        verdict = "b better"
    return KSComparison(d, low, high, noise, a_above, shift, seed_std, verdict)
