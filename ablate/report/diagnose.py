"""The diagnosis: what each comparison in a study shows, computed from the numbers, and how firmly.

**Depth pairs** (configurations differing only in ``model.n``), shallower S against deeper D, decided
in this order:

1. *degradation*: D's training error is clearly higher than S's. Deeper nets that fit their own
   training set worse cannot be explained by overfitting: the degradation problem (He et al. 2015,
   sec. 1 and 4.1, Fig. 1 and 6).
2. *overfitting*: D's training error is as low as S's (higher by less than ``Tolerance.min_points``) or
   lower, but its test error is clearly higher: the paper's reading of ResNet-1202 against ResNet-110
   (sec. 4.2).
3. *tests worse*: D's test error is clearly higher and its training error higher too, by more than
   ``min_points`` but within the seeds' spread: degradation and overfitting cannot be told apart.
4. *gain*: D's test error is clearly lower.
5. *no clear difference* otherwise.

**Shortcut, block, activation and warm-up comparisons** (configurations differing only in
``model.shortcut``, ``model.block``, ``model.activation`` or ``trainer.warmup.policy``): every pair, on the
study's error metric, with the difference set against the
seed-to-seed spread. "Differing only in" allows the settings the study's own ``constraints.set``
rules tie to the compared key (warm-up for n = 18, shortcut B for bottleneck blocks); the sentence
names them.

**When a difference is clear** (:class:`Tolerance`): it is at least ``min_points`` percentage points
*and* at least ``min_spreads`` pooled standard deviations (the seeds' sample std, pooled over both
configurations). Anything smaller is "no clear difference". With a single seed on both sides the
spread is unknown: the verdict then rests on the size alone and is marked tentative, and its sentence
never calls the difference clear ("higher", "no difference of 0.5 pp or more"). Two pooled std of a
3-vs-3 comparison is a Welch t of about 2.4: a deliberately cautious bar.

**Positive quantities that vary by factors** (a stage-1/head gradient-norm ratio, a layer-response
std: :class:`FactorDifference`) go through the same rule on a log10 scale: the difference of the
seeds' mean log10 values must reach ``min_spreads`` pooled std of the log10 values, and its size
``Tolerance.min_factor`` (the counterpart of ``min_points``).

All metrics compared here are error fractions (``*_error``), written as percentages.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ablate.report.aggregate import (
    ConfigSummary,
    Stat,
    comparison_sets,
    coupled_keys,
    describe,
    differing_keys,
    metric_words,
    significant,
)

__all__ = [
    "Difference",
    "FactorDifference",
    "Finding",
    "Tolerance",
    "comparison_metric",
    "depth_families",
    "diagnose",
    "same_words",
    "widest",
]

DEPTH_VERDICTS = ("degradation", "overfitting", "tests worse", "gain", "no clear difference", "not enough data")
AXIS_VERDICTS = ("clear difference", "no clear difference", "not enough data")


@dataclass(frozen=True)
class Tolerance:
    """What counts as a clear difference between two configurations' mean errors."""

    min_points: float = 0.5  # percentage points; smaller differences are "no clear difference"
    min_spreads: float = 2.0  # pooled seed-to-seed std; smaller differences are within noise
    min_factor: float = 1.1  # ratios of positive quantities (FactorDifference): smaller factors are "no clear difference"


@dataclass(frozen=True)
class Difference:
    """``b`` against ``a``, for one error metric: ``delta = b.mean - a.mean`` (a fraction)."""

    a: Stat
    b: Stat

    @property
    def delta(self) -> float:
        return self.b.mean - self.a.mean

    @property
    def pooled_std(self) -> float | None:
        """sqrt(((na-1) sa^2 + (nb-1) sb^2) / (na+nb-2)); None with one seed on both sides."""
        dof = self.a.n + self.b.n - 2
        if dof < 1:
            return None
        return math.sqrt(((self.a.n - 1) * (self.a.std or 0.0) ** 2 + (self.b.n - 1) * (self.b.std or 0.0) ** 2) / dof)

    @property
    def spreads(self) -> float | None:
        """The difference in pooled std (inf when the seeds agree exactly); None when the spread is unknown."""
        pooled = self.pooled_std
        if pooled is None:
            return None
        if pooled == 0:
            return 0.0 if self.delta == 0 else math.copysign(math.inf, self.delta)
        return self.delta / pooled

    def direction(self, tolerance: Tolerance) -> str:
        """``"higher"`` / ``"lower"`` (b against a) when the difference is clear, else ``"same"``."""
        if abs(100 * self.delta) < tolerance.min_points:
            return "same"
        if self.spreads is not None and abs(self.spreads) < tolerance.min_spreads:
            return "same"
        return "higher" if self.delta > 0 else "lower"

    def evidence(self, tolerance: Tolerance) -> str:
        """The numbers behind :meth:`direction`: ``"+4.20 pp, 21.0 pooled std, 3 vs 3 seeds"``."""
        size = f"{100 * self.delta:+.2f} pp"
        seeds = f"{self.a.n} vs {self.b.n} seeds"
        spread = self.spread_text()
        reason = ""
        if self.direction(tolerance) == "same" and abs(100 * self.delta) < tolerance.min_points:
            reason = f"; under {tolerance.min_points:g} pp"
        elif self.direction(tolerance) == "same":
            reason = f"; under {tolerance.min_spreads:g} pooled std"
        return f"{size}, {spread}, {seeds}{reason}"

    def spread_text(self, unit: str = "pooled std") -> str:
        """``"21.0 pooled std"``, ``"the seeds agree exactly"`` or ``"spread unknown"``."""
        spreads = self.spreads
        if spreads is None:
            return "spread unknown"
        if math.isinf(spreads):
            return "the seeds agree exactly"
        return f"{abs(spreads):.1f} {unit}"


@dataclass(frozen=True)
class FactorDifference:
    """``b`` against ``a`` for a positive quantity measured once per seed, judged on a log10 scale.

    :meth:`direction` is :meth:`Difference.direction` on the seeds' log10 values, with the size bar
    ``log10(tolerance.min_factor)`` in place of ``min_points``: the one noise rule, for factors.
    """

    a: tuple[float, ...]  # one positive value per seed
    b: tuple[float, ...]

    @property
    def log(self) -> Difference:
        return Difference(Stat.of([math.log10(v) for v in self.a]), Stat.of([math.log10(v) for v in self.b]))

    @property
    def factor(self) -> float:
        """b / a, of the geometric means over seeds."""
        return 10 ** self.log.delta

    def direction(self, tolerance: Tolerance) -> str:
        """``"higher"`` / ``"lower"`` (b against a) when the factor is clear, else ``"same"``."""
        return self.log.direction(replace(tolerance, min_points=100 * math.log10(tolerance.min_factor)))

    def size_words(self) -> str:
        """``"100 times smaller"`` / ``"1.30 times larger"``: b against a."""
        factor = self.factor
        return f"{significant(1 / factor, 3)} times smaller" if factor < 1 else f"{significant(factor, 3)} times larger"

    def reason(self, tolerance: Tolerance) -> str:
        """Why the factor is not clear (``"under a factor 1.1"``, ``"within the seed spread"``); "" when it is."""
        if self.direction(tolerance) != "same":
            return ""
        if max(self.factor, 1 / self.factor) < tolerance.min_factor:
            return f"under a factor {tolerance.min_factor:g}"
        return f"under {tolerance.min_spreads:g} pooled std: within the seed spread"

    def evidence(self, tolerance: Tolerance) -> str:
        """``"100 times smaller, 25.1 pooled std of log10, 3 vs 3 seeds"``, with the reason when not clear."""
        reason = self.reason(tolerance)
        spread = self.log.spread_text("pooled std of log10")
        return f"{self.size_words()}, {spread}, {len(self.a)} vs {len(self.b)} seeds" + (f"; {reason}" if reason else "")


@dataclass(frozen=True)
class Finding:
    """One sentence of the diagnosis, the verdict it states and the numbers it rests on."""

    kind: str  # "depth" | "shortcut" | "block" | "activation" | "warm-up"
    verdict: str  # one of DEPTH_VERDICTS (kind "depth") or AXIS_VERDICTS
    labels: tuple[str, str]  # (reference, compared): (shallower, deeper) for depth pairs
    tentative: bool  # one seed on both sides: the seed-to-seed spread is unknown
    text: str
    depths: tuple[int | None, int | None] = (None, None)  # weighted layers of (reference, compared)
    family: str = ""  # what the pair shares that other pairs of its kind do not, e.g. "plain", "shortcut A"
    differing: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # key -> (reference, compared) values
    metric: str | None = None  # the metric the verdict rests on; None: not enough data
    differences: dict[str, Difference] = field(default_factory=dict)  # metric -> compared against reference

    @property
    def difference(self) -> Difference | None:
        """The difference on :attr:`metric`."""
        return self.differences.get(self.metric) if self.metric else None


def depth_families(findings: Sequence[Finding]) -> dict[str, list[Finding]]:
    """The depth findings by family (e.g. plain, residual), in the order found."""
    families: dict[str, list[Finding]] = {}
    for finding in findings:
        if finding.kind == "depth":
            families.setdefault(finding.family, []).append(finding)
    return families


def widest(pairs: Sequence[Finding]) -> Finding:
    """The pair of a family whose depths lie furthest apart: the one the answer speaks of."""
    return max(pairs, key=lambda f: (f.depths[1] or 0) - (f.depths[0] or 0))


def comparison_metric(metric: str | None) -> str:
    """The study's metric when it is an error (``*_error``), else ``test_error``."""
    return metric if metric and metric.endswith("_error") else "test_error"


AXES = (  # axis -> Finding.kind
    ("model.n", "depth"),
    ("model.shortcut", "shortcut"),
    ("model.block", "block"),
    ("model.activation", "activation"),
    ("trainer.warmup.policy", "warm-up"),
)


def diagnose(
    summaries: Sequence[ConfigSummary],
    *,
    metric: str = "test_error",
    tolerance: Tolerance = Tolerance(),
    study: Mapping[str, Any] | None = None,
) -> list[Finding]:
    """Depth pairs, then shortcut, block and warm-up comparisons, each as one :class:`Finding`.

    ``study``: the recorded study file; keys its ``constraints.set`` rules tie to an axis do not keep
    configurations apart along that axis (:func:`~ablate.report.aggregate.coupled_keys`).
    """
    findings = []
    for axis, kind in AXES:
        coupled = coupled_keys(study, axis)
        parts = comparison_sets(summaries, axis, coupled=coupled)
        apart = differing_keys([part[0] for part in parts], ignore=[axis, *coupled])  # what tells the parts apart
        if not apart and axis != "model.shortcut":
            apart = ["model.shortcut"]  # one family: still say whether its nets are plain or residual
        for part in parts:
            family = describe(part[0], apart)
            for a, b in itertools.combinations(part, 2):
                if kind == "depth":
                    finding = _depth_finding(a, b, tolerance, coupled)
                else:
                    finding = _axis_finding(kind, axis, a, b, metric, tolerance, coupled)
                differing = {key: (a.params.get(key), b.params.get(key)) for key in (axis, *sorted(coupled))
                             if str(a.params.get(key)) != str(b.params.get(key))}
                findings.append(replace(finding, family=family, differing=differing, depths=(a.depth, b.depth)))
    return findings


_TENTATIVE = (
    " Tentative: one seed per configuration, so the seed-to-seed spread is unknown and this rests on the size of"
    " the differences alone."
)


def same_words(diff: Difference, tolerance: Tolerance) -> str:
    """How to say that ``diff`` is not a clear difference: never "clear" when the spread is unknown."""
    if diff.spreads is None:
        return f"no difference of {tolerance.min_points:g} pp or more"
    return "no clear difference"


def _caveats(a: ConfigSummary, b: ConfigSummary, tentative: bool, coupled: frozenset[str]) -> str:
    """The sentences that qualify a finding: one seed, coupled settings, unfinished trials at their latest values."""
    text = _TENTATIVE if tentative else ""
    for key in sorted(coupled):
        if str(a.params.get(key)) != str(b.params.get(key)):
            text += f" The study sets {key} with it: {a.params.get(key)} → {b.params.get(key)}."
    partial = [s.label for s in (a, b) if s.partial]
    if partial:
        verb = "include" if len(partial) > 1 else "includes"
        text += f" Partial: {' and '.join(partial)} {verb} unfinished trials, compared at their latest values."
    return text


_DEPTH_READING = {
    "degradation": "The deeper net fits its own training set worse: degradation (sec. 4.1), not overfitting.",
    "overfitting": (
        "The deeper net fits the training set as well or better yet tests worse: overfitting, the paper's reading of"
        " ResNet-1202 vs ResNet-110 (sec. 4.2)."
    ),
    "tests worse": (
        "The deeper net tests worse, and trains worse too though within the seeds' spread: degradation and"
        " overfitting cannot be told apart at this budget."
    ),
    "gain": "The deeper net tests better without training worse: depth pays here.",
}


def _depth_finding(
    shallow: ConfigSummary, deep: ConfigSummary, tolerance: Tolerance, coupled: frozenset[str]
) -> Finding:
    labels = (shallow.label, deep.label)
    head = f"{shallow.label} (depth {shallow.depth}) → {deep.label} (depth {deep.depth})"
    pairs = {m: (shallow.stats.get(m), deep.stats.get(m)) for m in ("train_error", "test_error")}
    if any(a is None or b is None for a, b in pairs.values()):
        text = f"{head}: not enough data, training and test error are needed on both sides (no trial in the means)."
        return Finding("depth", "not enough data", labels, False, text)
    train = Difference(*pairs["train_error"])
    test = Difference(*pairs["test_error"])
    tentative = train.spreads is None
    if train.direction(tolerance) == "higher":
        verdict = "degradation"
    elif test.direction(tolerance) == "higher":
        verdict = "overfitting" if 100 * train.delta < tolerance.min_points else "tests worse"
    elif test.direction(tolerance) == "lower":
        verdict = "gain"
    else:
        verdict = "no clear difference"
    clearly = "" if tentative else "clearly "
    if verdict == "no clear difference":
        trained = train.direction(tolerance)
        said = same_words(test, tolerance)
        reading = f"Test error: {said}" + (
            "; nor training error." if trained == "same" else f"; training error is {clearly}{trained}."
        )
    else:
        reading = _DEPTH_READING[verdict]
    said = same_words(train, tolerance) if verdict == "no clear difference" else verdict
    text = (
        f"{head}: {said}. Training error {train.a.percent()} % → {train.b.percent()} % "
        f"({train.evidence(tolerance)}); test error {test.a.percent()} % → {test.b.percent()} % "
        f"({test.evidence(tolerance)}). {reading}" + _caveats(shallow, deep, tentative, coupled)
    )
    decided_by = "train_error" if verdict == "degradation" else "test_error"
    differences = {"train_error": train, "test_error": test}
    return Finding("depth", verdict, labels, tentative, text, metric=decided_by, differences=differences)


def _axis_finding(
    kind: str,
    axis: str,
    a: ConfigSummary,
    b: ConfigSummary,
    metric: str,
    tolerance: Tolerance,
    coupled: frozenset[str],
) -> Finding:
    labels = (a.label, b.label)
    name_a, name_b = describe(a, [axis]), describe(b, [axis])
    head = f"{a.label} → {b.label} ({name_a} → {name_b}, {metric_words(metric)})"
    stat_a, stat_b = a.stats.get(metric), b.stats.get(metric)
    if stat_a is None or stat_b is None:
        return Finding(kind, "not enough data", labels, False, f"{head}: not enough data (no trial in the means).")
    diff = Difference(stat_a, stat_b)
    direction = diff.direction(tolerance)
    tentative = diff.spreads is None
    numbers = f"{stat_a.percent()} % → {stat_b.percent()} % ({diff.evidence(tolerance)})"
    if direction == "same":
        verdict, reading = "no clear difference", f"{same_words(diff, tolerance)}."
    else:
        clearly = "" if tentative else "clearly "
        verdict, reading = "clear difference", f"{name_b} has {clearly}{direction} {metric_words(metric)}."
    text = f"{head}: {numbers}: {reading}" + _caveats(a, b, tentative, coupled)
    return Finding(kind, verdict, labels, tentative, text, metric=metric, differences={metric: diff})
