"""Why a deeper residual net tests differently: the ResNet-1202 vs ResNet-110 question, on three measurements.

The paper reads ResNet-1202's higher test error as overfitting (He et al. 2015, sec. 4.2: similar training
error, higher test error, 19.4M parameters on 50k images). For a study that compares residual nets of
different depths on test error (``studies/deep_1202.yaml``, ``studies/fmnist/overfitting.yaml``), the
widest depth pair of each family (shallow S, deep D) is set against three measured things, each judged
with the report's one noise rule (:class:`~.diagnose.Difference`, :class:`~.diagnose.FactorDifference`):

1. *train/test gap*: per trial, final ``test_error - train_error``; does D's gap differ from S's?
2. *lesion curves* (``ablate lesion``, records :class:`~ablate.tracking.reader.LesionRecord`): per trial,
   the mean increase of test error when one unit is deleted (over the deletable units), and the mean test
   error of the random draws at the largest number k of deleted units that every trial of both nets has;
   does D depend less (or more) on each unit, and on k of them?
3. *gradients*: the stage-1/head gradient-norm ratio (:mod:`.evidence`).

Then which of them tell S and D apart beyond the seeds' spread.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ablate.report.aggregate import ConfigSummary, Stat
from ablate.report.diagnose import Difference, Finding, Tolerance, depth_families, widest
from ablate.report.evidence import Verdict
from ablate.tracking.reader import LesionRecord, TrialRecord

__all__ = ["Measured", "WhyDeeper", "single_increase", "why_applies", "why_deeper"]


@dataclass(frozen=True)
class Measured:
    """One of the three measurements for a depth pair: does it tell the two nets apart beyond noise?"""

    name: str  # "train/test gap" | "lesion curves" | "gradients"
    distinguishes: bool | None  # None: no records to judge
    text: str


@dataclass(frozen=True)
class WhyDeeper:
    """The diagnosis of one depth pair: its three measurements, and which of them tell the two nets apart."""

    labels: tuple[str, str]  # (shallow, deep)
    measured: tuple[Measured, ...]

    @property
    def distinguishing(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.measured if m.distinguishes)

    def summary(self, *, detailed: bool = False) -> str:
        """``"What tells resnet20 and resnet56 apart beyond the seed spread: the train/test gap; not the
        gradients; not judged (no records): the lesion curves."``; ``detailed``: with the numbers of those that
        do, and what to run for those without records (the answer's sentence)."""
        def named(m: Measured, with_text: bool) -> str:
            return f"the {m.name}" + (f" ({m.text.removeprefix(m.name + ': ')})" if with_text else "")

        yes = [named(m, detailed) for m in self.measured if m.distinguishes]
        no = [named(m, False) for m in self.measured if m.distinguishes is False]
        unknown = [named(m, detailed) for m in self.measured if m.distinguishes is None]
        parts = [" and ".join(yes) if yes else "none of the measured things"]
        if no:
            parts.append("not " + " nor ".join(no))
        if unknown:
            parts.append("not judged: " + " and ".join(unknown))
        return f"What tells {self.labels[0]} and {self.labels[1]} apart beyond the seed spread: " + "; ".join(parts) + "."


def why_applies(summaries: Sequence[ConfigSummary], findings: Sequence[Finding], metric: str) -> bool:
    """Test error is the study's metric and every depth pair is of residual nets (no plain net among them)."""
    by_label = {s.label: s for s in summaries}
    depth = [f for f in findings if f.kind == "depth" and f.verdict != "not enough data"]
    return metric == "test_error" and bool(depth) and all(
        by_label[label].params.get("model.shortcut", "none") != "none" for f in depth for label in f.labels
        if label in by_label
    )


def single_increase(lesion: LesionRecord) -> float | None:
    """Mean over the deletable units of (test error with the unit deleted - base error); None without one."""
    increases = [error - lesion.base_error for error in lesion.single if error is not None]
    return statistics.fmean(increases) if increases else None


def _draws_at(lesion: LesionRecord, k: int) -> float | None:
    draws = lesion.draws[lesion.k.index(k)] if k in lesion.k else ()
    return statistics.fmean(draws) if draws else None


def _judged(a: Sequence[float], b: Sequence[float], deep: str, tolerance: Tolerance, words: str, unit: str = "pp"
            ) -> tuple[bool, str]:
    """(clearly different, ``"{words} 2.10 ± 0.40 pp → 5.20 ± 0.30 pp (evidence): clearly higher for D"``):
    error fractions, :class:`Difference`'s rule; with one seed never "clearly"."""
    diff = Difference(Stat.of(a), Stat.of(b))
    direction = diff.direction(tolerance)
    numbers = f"{words} {diff.a.percent()} {unit} → {diff.b.percent()} {unit} ({diff.evidence(tolerance)})"
    if direction == "same":
        return False, f"{numbers}: no clear difference"
    if diff.spreads is None:
        return False, f"{numbers}: {direction} for {deep}, tentative (one seed)"
    return True, f"{numbers}: clearly {direction} for {deep}"


def _gap(trial: TrialRecord) -> float | None:
    train, test = trial.value("train_error"), trial.value("test_error")
    return None if train is None or test is None else test - train


def _gap_measured(shallow: ConfigSummary, deep: ConfigSummary, tolerance: Tolerance) -> Measured:
    gaps = [[g for t in s.used if (g := _gap(t)) is not None] for s in (shallow, deep)]
    if not all(gaps):
        return Measured("train/test gap", None, "train/test gap: not enough data (training and test error on both)")
    clear, text = _judged(*gaps, deep.label, tolerance, "final test error - training error")
    return Measured("train/test gap", clear, "train/test gap: " + text)


def _lesion_measured(shallow: ConfigSummary, deep: ConfigSummary, tolerance: Tolerance, study: str) -> Measured:
    lesions = [[t.lesion for t in s.used if t.lesion is not None] for s in (shallow, deep)]
    if not all(lesions):
        without = " and ".join(s.label for s, found in zip((shallow, deep), lesions) if not found)
        return Measured("lesion curves", None,
                        f"lesion curves: no lesion records for {without}: run `ablate lesion --study {study}`")
    parts, clear = [], False
    singles = [[v for lesion in side if (v := single_increase(lesion)) is not None] for side in lesions]
    if all(singles):
        differs, text = _judged(*singles, deep.label, tolerance, "mean test-error increase per deleted unit")
        parts.append(text)
        clear |= differs
    common = set.intersection(*(set(lesion.k) for side in lesions for lesion in side))
    if common:
        k = max(common)
        errors = [[v for lesion in side if (v := _draws_at(lesion, k)) is not None] for side in lesions]
        if all(errors):
            differs, text = _judged(*errors, deep.label, tolerance, f"test error with {k} random units deleted",
                                    unit="%")
            parts.append(text)
            clear |= differs
    if not parts:
        return Measured("lesion curves", None, "lesion curves: the records hold no deletable unit or draw")
    return Measured("lesion curves", clear, "lesion curves: " + "; ".join(parts))


def _gradient_measured(verdict: Verdict | None) -> Measured:
    if verdict is None or verdict.verdict == "not enough data":
        return Measured("gradients", None, "gradients: no grad_norm/stage1 and grad_norm/head records")
    return Measured("gradients", verdict.clear, "gradients: " + verdict.clause)


def why_deeper(
    findings: Sequence[Finding],
    summaries: Sequence[ConfigSummary],
    gradients: Sequence[Verdict],
    *,
    tolerance: Tolerance,
    study: str,
) -> list[WhyDeeper]:
    """The diagnosis of each family's widest depth pair (module docstring); call when :func:`why_applies`."""
    by_label = {s.label: s for s in summaries}
    by_pair = {v.labels: v for v in gradients}
    diagnoses = []
    for pairs in depth_families([f for f in findings if f.verdict != "not enough data"]).values():
        pair = widest(pairs)
        shallow, deep = (by_label[label] for label in pair.labels)
        measured = (
            _gap_measured(shallow, deep, tolerance),
            _lesion_measured(shallow, deep, tolerance, study),
            _gradient_measured(by_pair.get(pair.labels)),
        )
        diagnoses.append(WhyDeeper(pair.labels, measured))
    return diagnoses

