"""Why, measured: the gradient evidence behind each depth verdict, and the Fig. 7 responses of plain and residual nets.

Both read the recorded metrics only (``grad_norm/<part>`` histories and ``layer_responses.json``), never a
model; both judge with the report's one noise rule, on a log10 scale (:class:`~.diagnose.FactorDifference`).

**Gradient ratio** (He et al. 2015, sec. 4.1: the plain nets' difficulty is "unlikely to be caused by
vanishing gradients"; BN keeps the backward gradients at healthy norms). Per trial,
``r = grad_norm/stage1 / grad_norm/head``: at each evaluation point the trainer records each part's mean
gradient norm since the previous point; ``r`` is the geometric mean of their quotient over the points in
the first half of the run (iterations up to half the last one recorded): where degradation already shows,
before the learning-rate drops. Points with a zero or non-finite head norm are skipped (no quotient); a zero
stage-1 norm over a non-zero head norm counts as :data:`RATIO_FLOOR` (vanished). Per depth pair (shallow S,
deep D, as :func:`~.diagnose.diagnose` pairs them): D's gradients *vanish* relative to S's when D's ratio
is clearly lower; otherwise they do not.

**Layer responses** (Fig. 7: "ResNets have generally smaller responses than their plain counterparts").
Per trial, the mean over its 3x3 layers of the response std; per plain/residual pair of the same depth,
the residual net's responses are *smaller* when that mean is clearly lower.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ablate.metrics import GRAD_NORM_PREFIX
from ablate.report.aggregate import ConfigSummary, Stat
from ablate.report.diagnose import FactorDifference, Finding, Tolerance
from ablate.tracking.reader import TrialRecord

__all__ = [
    "HEAD",
    "RATIO_FLOOR",
    "STAGE1",
    "Verdict",
    "gradient_verdicts",
    "response_verdicts",
    "trial_ratio",
    "trial_response",
    "verdict_record",
]

STAGE1 = GRAD_NORM_PREFIX + "stage1"  # the first stage of residual (or plain) blocks, after the stem
HEAD = GRAD_NORM_PREFIX + "head"  # the final fully connected layer
RATIO_FLOOR = 1e-12  # a stage-1 norm of exactly zero: the ratio counts as this (log10 of 0 is undefined)


def trial_ratio(trial: TrialRecord) -> float | None:
    """The trial's stage-1/head gradient-norm ratio (module docstring); None without usable records."""
    stage1, head = trial.history.get(STAGE1), trial.history.get(HEAD)
    if stage1 is None or head is None or not head.steps:
        return None
    heads = dict(zip(head.steps, head.values))
    half = max(head.steps) / 2
    logs = []
    for step, value in zip(stage1.steps, stage1.values):
        below = heads.get(step)
        if step > half or below is None or not (math.isfinite(below) and below > 0) or not math.isfinite(value):
            continue
        logs.append(math.log10(max(value / below, RATIO_FLOOR)))
    return 10 ** statistics.fmean(logs) if logs else None


def trial_response(trial: TrialRecord) -> float | None:
    """The mean over the trial's 3x3 layers of the Fig. 7 response std; None without a positive one."""
    responses = trial.layer_responses
    if responses is None or not responses.std:
        return None
    mean = statistics.fmean(responses.std)
    return mean if math.isfinite(mean) and mean > 0 else None


@dataclass(frozen=True)
class Verdict:
    """One comparison of a measured quantity between two configurations, and the sentence that states it."""

    kind: str  # "gradients" | "responses"
    labels: tuple[str, str]  # (shallow, deep) for gradients; (plain, residual) for responses
    verdict: str  # gradients: vanish | no vanishing | larger; responses: smaller | no clear difference | larger;
    #               both: not enough data
    tentative: bool  # one seed on both sides: the spread is unknown
    text: str  # the sentence of the report's section
    clause: str  # the same, short, for the answer
    stats: tuple[Stat | None, Stat | None] = (None, None)  # the quantity per configuration, over seeds
    difference: FactorDifference | None = None
    depth: int | None = None  # responses: the pair's depth

    @property
    def clear(self) -> bool:
        """Beyond the seed spread (never with one seed)."""
        return self.difference is not None and not self.tentative and self.verdict not in (
            "no vanishing", "no clear difference", "not enough data")


def _pairs(findings: Sequence[Finding], summaries: Sequence[ConfigSummary], keep) -> Iterator[tuple]:
    """(finding, its reference summary, its compared summary) for the findings ``keep`` accepts."""
    by_label = {s.label: s for s in summaries}
    for finding in findings:
        if keep(finding) and all(label in by_label for label in finding.labels):
            yield finding, by_label[finding.labels[0]], by_label[finding.labels[1]]


@dataclass(frozen=True)
class _Measured:
    """A quantity measured per trial on both sides of a pair, judged by :class:`FactorDifference`."""

    difference: FactorDifference | None  # None: no value on one side
    stats: tuple[Stat | None, Stat | None]
    evidence: str  # the factor and the spread, with "beyond the seed spread" when clear
    short: str  # the factor and the verdict on it, for the answer: "100 times smaller, beyond the seed spread"
    notes: str  # " (plain56: 1 of 3 trial(s) without ...)" when some trials lack a value
    direction: str  # FactorDifference.direction, "same" without a difference
    tentative: bool


def _measure(a: ConfigSummary, b: ConfigSummary, measure, what: str, tolerance: Tolerance) -> _Measured:
    values, notes = [], []
    for summary in (a, b):
        measured = [measure(t) for t in summary.used]
        values.append(tuple(v for v in measured if v is not None))
        if None in measured:
            notes.append(f"{summary.label}: {measured.count(None)} of {len(measured)} trial(s) without {what}")
    extra = f" ({'; '.join(notes)})" if notes else ""
    if not all(values):
        return _Measured(None, (None, None), "", "", extra, "same", False)
    diff = FactorDifference(*values)
    direction = diff.direction(tolerance)
    tentative = diff.log.spreads is None
    evidence, size = diff.evidence(tolerance), diff.size_words()
    if tentative:
        evidence, short = evidence + "; tentative: one seed per configuration", size + ", tentative: one seed"
    elif direction != "same":
        evidence, short = evidence + ": beyond the seed spread", size + ", beyond the seed spread"
    else:
        short = f"{size}, {diff.reason(tolerance).split(': ')[-1]}"
    return _Measured(diff, (Stat.of(values[0]), Stat.of(values[1])), evidence, short, extra, direction, tentative)


def gradient_verdicts(
    findings: Sequence[Finding], summaries: Sequence[ConfigSummary], *, tolerance: Tolerance
) -> list[Verdict]:
    """One :class:`Verdict` per depth pair of ``findings``: do the deeper net's early-stage gradients vanish?"""
    verdicts = []
    for finding, shallow, deep in _pairs(findings, summaries, lambda f: f.kind == "depth"):
        labels = finding.labels
        m = _measure(shallow, deep, trial_ratio, f"{STAGE1} and {HEAD} records", tolerance)
        if m.difference is None:
            text = (f"Gradients: not enough data for {labels[0]} → {labels[1]} (no {STAGE1} / {HEAD} records: an "
                    "older store, or trials that did not log them).")
            verdicts.append(Verdict("gradients", labels, "not enough data", False, text, ""))
            continue
        verdict = {"lower": "vanish", "higher": "larger"}.get(m.direction, "no vanishing")
        said = f"{labels[1]}'s early-stage gradients {'vanish' if verdict == 'vanish' else 'do not vanish'} " \
               f"relative to {labels[0]}'s"
        numbers = f"stage-1/head gradient-norm ratio {m.stats[0].digits()} → {m.stats[1].digits()}"
        text = f"Gradients (sec. 4.1): {said} ({numbers}: {m.evidence}).{m.notes}"
        clause = f"{said} ({numbers}, {m.short})"
        verdicts.append(Verdict("gradients", labels, verdict, m.tentative, text, clause, m.stats, m.difference))
    return verdicts


def _plain_reference(finding: Finding) -> bool:
    shortcuts = finding.differing.get("model.shortcut")
    return finding.kind == "shortcut" and bool(shortcuts) and shortcuts[0] == "none"


def response_verdicts(
    findings: Sequence[Finding], summaries: Sequence[ConfigSummary], *, tolerance: Tolerance
) -> list[Verdict]:
    """One :class:`Verdict` per plain/residual pair of ``findings`` (kind shortcut, reference plain): Fig. 7."""
    verdicts = []
    for finding, plain, residual in _pairs(findings, summaries, _plain_reference):
        labels, depth = finding.labels, finding.depths[0]
        m = _measure(plain, residual, trial_response, "layer responses", tolerance)
        if m.difference is None:
            text = f"{labels[0]} → {labels[1]}: not enough data (no layer_responses.json on one side)."
            verdicts.append(Verdict("responses", labels, "not enough data", False, text, "", depth=depth))
            continue
        verdict = {"lower": "smaller", "higher": "larger"}.get(m.direction, "no clear difference")
        reading = {
            "smaller": "the residual net's responses are smaller, as in Fig. 7",
            "larger": "the residual net's responses are larger, unlike Fig. 7",
        }.get(verdict, "the responses are not distinguishable")
        numbers = f"mean layer-response std {m.stats[0].digits()} → {m.stats[1].digits()}"
        text = f"{labels[0]} → {labels[1]} ({numbers}; {m.evidence}): {reading}.{m.notes}"
        clause = f"at {depth} layers ({labels[0]} → {labels[1]}: {numbers}, {m.short})"
        verdicts.append(Verdict("responses", labels, verdict, m.tentative, text, clause, m.stats, m.difference, depth))
    return verdicts


def verdict_record(verdict: Verdict) -> dict[str, Any]:
    """One verdict as plain data (``ablate report --json``)."""
    diff = verdict.difference
    stats = [None if s is None else {"mean": s.mean, "std": s.std, "n": s.n} for s in verdict.stats]
    return {
        "kind": verdict.kind,
        "a": verdict.labels[0],
        "b": verdict.labels[1],
        "a_value": stats[0],
        "b_value": stats[1],
        "factor": None if diff is None else diff.factor,
        "pooled_std_log10": None if diff is None else diff.log.pooled_std,
        "verdict": verdict.verdict,
        "beyond_spread": verdict.clear,
        "tentative": verdict.tentative,
        "text": verdict.text,
    }
