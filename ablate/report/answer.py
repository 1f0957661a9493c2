"""The answer to a study's question in one or two sentences, and the findings as data for scripts.

The answer is built from the diagnosis (:mod:`.diagnose`), one clause per family of comparisons, each a
claim with its verdict and the numbers it rests on:

- depth (per family, e.g. plain and residual nets; its widest pair of depths): "deeper plain nets train
  worse: yes (plain8 → plain32: training error 22.10 % → 25.95 %, +3.85 pp)". The claim follows the
  verdict: *train worse* (degradation, or no difference), *overfit*, *test worse* (tests worse), *test
  better* (gain);
- shortcut against plain net (per depth): "shortcuts lower training error: yes at 32 layers (...)";
- shortcut options and block types against each other: whether any pair differs, with the largest pair;
- BN/ReLU placements and warm-up policies: the best one, and which others it is clearly better than.

The verdict words: *yes* when the difference is clear (or, with one seed, large enough: tentative),
*no* when it is under ``Tolerance.min_points``, *not clear at this budget* when it is larger than that
but within the seed-to-seed noise (more seeds or longer runs would tell). The last sentence ends with
the seeds and their spread. A sampled search (tpe, random) answers with its best configuration and
the parameter that mattered most (:mod:`.sweep`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from ablate.report.aggregate import ConfigSummary, metric_words
from ablate.report.deeper import WhyDeeper
from ablate.report.diagnose import Difference, Finding, Tolerance, depth_families, widest
from ablate.report.evidence import Verdict

__all__ = ["answer", "best_summary", "finding_record", "metric_words", "seeds_clause"]


def _change(diff: Difference, metric: str) -> str:
    """``"training error 22.10 % → 25.95 %, +3.85 pp"``."""
    return f"{metric_words(metric)} {diff.a.percent()} % → {diff.b.percent()} %, {100 * diff.delta:+.2f} pp"


def _yes_no(diff: Difference, tolerance: Tolerance, *, wanted: str) -> str:
    """``yes`` when ``diff`` goes the ``wanted`` way (higher | lower) clearly, ``no`` when it is small or goes the
    other way, ``not clear at this budget`` when it is large but within the seeds' noise."""
    direction = diff.direction(tolerance)
    if direction == wanted:
        return "yes"
    if direction != "same" or abs(100 * diff.delta) < tolerance.min_points:
        return "no"
    return "not clear at this budget"


def _family_nets(family: str) -> str:
    """``"plain"`` -> ``"plain nets"``; ``"shortcut A"`` -> ``"residual nets"``; ``"shortcut B"`` ->
    ``"residual nets (shortcut B)"``; ``""`` -> ``"nets"``."""
    parts = family.split(", ") if family else []
    if "plain" in parts:
        kind, parts = "plain nets", [p for p in parts if p != "plain"]
    elif any(p.startswith("shortcut ") for p in parts):
        kind, parts = "residual nets", [p for p in parts if p != "shortcut A"]
    else:
        kind = "nets"
    return kind + (f" ({', '.join(parts)})" if parts else "")


def _without_depth(family: str) -> str:
    """The family without its ``depth N`` part (a clause that already says the depth)."""
    return ", ".join(p for p in family.split(", ") if p and not p.startswith("depth "))


def _depth_clauses(
    findings: Sequence[Finding], tolerance: Tolerance, metric: str, gradients: Sequence[Verdict]
) -> list[str]:
    """One clause per family of depth pairs, on its widest pair; a pair with no clear difference is asked the
    study's question: train worse, or test worse when the study's metric is test error. The pair's gradient
    verdict follows (:func:`.evidence.gradient_verdicts`) where there are records."""
    by_pair = {v.labels: v for v in gradients if v.clause}
    clauses = []
    for family, pairs in depth_families(findings).items():
        nets = _family_nets(family)
        pair = widest(pairs)
        head = f"{pair.labels[0]} → {pair.labels[1]}"
        if pair.verdict == "not enough data":
            clauses.append(f"deeper {nets}: not enough data yet ({head})")
            continue
        train, test = pair.differences["train_error"], pair.differences["test_error"]
        if pair.verdict == "overfitting":
            claim, numbers = "overfit: yes", f"{_change(train, 'train_error')}; {_change(test, 'test_error')}"
        elif pair.verdict == "tests worse":
            claim = "test worse: yes, and train worse within the seeds' spread"
            numbers = f"{_change(test, 'test_error')}; {_change(train, 'train_error')}"
        elif pair.verdict == "gain" and train.direction(tolerance) == "lower":
            claim, numbers = "train and test better: yes", f"{_change(train, 'train_error')}; {_change(test, 'test_error')}"
        elif pair.verdict == "gain":
            claim, numbers = "test better: yes", _change(test, "test_error")
        elif metric == "test_error" and pair.verdict == "no clear difference":  # the study asks about test error
            claim, numbers = f"test worse: {_yes_no(test, tolerance, wanted='higher')}", _change(test, "test_error")
        else:  # degradation, or no clear difference: the paper's question, do they train worse?
            claim, numbers = f"train worse: {_yes_no(train, tolerance, wanted='higher')}", _change(train, "train_error")
        verdicts = Counter(f.verdict for f in pairs)
        count = "; depth pairs: " + ", ".join(f"{n} {v}" for v, n in verdicts.most_common()) if len(pairs) > 1 else ""
        gradient = by_pair.get(pair.labels)
        because = f", and {gradient.clause}" if gradient else ""
        clauses.append(f"deeper {nets} {claim} ({head}: {numbers}{count}){because}")
    return clauses


def _plain_vs_residual(findings: Sequence[Finding], tolerance: Tolerance) -> str | None:
    """"shortcuts lower test error: yes at 32 layers (...), no at 8 layers (...)"; None without such pairs."""
    pairs = [f for f in findings if f.differing.get("model.shortcut", ("", ""))[0] == "none" and f.difference]
    if not pairs:
        return None
    by_depth: dict[Any, Finding] = {}
    for finding in sorted(pairs, key=lambda f: str(f.differing["model.shortcut"][1])):
        by_depth.setdefault((finding.depths[0], finding.family), finding)  # option A first where there is one
    metric = pairs[0].metric
    parts = []
    for (depth, family), finding in sorted(by_depth.items(), key=lambda item: -(item[0][0] or 0)):
        rest = _without_depth(family)
        where = f"at {depth} layers" + (f", {rest}" if rest else "")
        verdict = _yes_no(finding.difference, tolerance, wanted="lower")
        parts.append(f"{verdict} {where} ({' → '.join(finding.labels)}: {_change(finding.difference, metric)})")
    return f"shortcuts lower {metric_words(metric)}: " + ", ".join(parts)


def _responses_clause(responses: Sequence[Verdict]) -> str | None:
    """"responses of the residual net are smaller than the plain net's, as in Fig. 7: at 56 layers (...)" where
    the records show it beyond the seed spread (and "larger ..., unlike Fig. 7" where they show that); else None."""
    parts = []
    for verdict, reading in (("smaller", "smaller than the plain net's, as in Fig. 7"),
                             ("larger", "larger than the plain net's, unlike Fig. 7")):
        clear = [v for v in responses if v.verdict == verdict and v.clear]
        if clear:
            where = ", ".join(v.clause for v in sorted(clear, key=lambda v: -(v.depth or 0)))
            parts.append(f"responses of the residual net are {reading}: {where}")
    return "; ".join(parts) or None


def _any_differs(findings: Sequence[Finding], what: str, tolerance: Tolerance) -> str | None:
    """"shortcut options differ: no (largest: resnet20 → resnet20-B, test error ...)"; None without pairs."""
    pairs = [f for f in findings if f.difference]
    if not pairs:
        return None
    largest = max(pairs, key=lambda f: abs(f.difference.delta))
    clear = [f for f in pairs if f.verdict == "clear difference"]
    if clear:
        verdict = "yes" + (f", in {len(clear)} of {len(pairs)} pairs" if len(pairs) > 1 else "")
    elif abs(100 * largest.difference.delta) < tolerance.min_points:
        verdict = "no"
    else:
        verdict = "not clear at this budget"
    head = " → ".join(largest.labels)
    return f"{what} differ: {verdict} (largest: {head}, {_change(largest.difference, largest.metric)})"


def _best_of(findings: Sequence[Finding], axis: str, what: str, *, mode: str | None) -> list[str]:
    """Per family: "warm-up policies: best linear (training error 40.89 ± 11.12 %), clearly better than none;
    not clearly better than paper"; a family whose pairs lack data is left out."""
    families: dict[str, list[Finding]] = {}
    for finding in findings:
        if finding.difference and axis in finding.differing:
            families.setdefault(finding.family, []).append(finding)
    clauses = []
    for family, pairs in families.items():
        stats = {}
        for finding in pairs:
            first, second = finding.differing[axis]
            stats[str(first)], stats[str(second)] = finding.difference.a, finding.difference.b
        pick = max if mode == "max" else min
        best = pick(stats, key=lambda value: stats[value].mean)
        beaten, close = [], []
        for finding in pairs:
            values = [str(value) for value in finding.differing[axis]]
            if best in values:
                other = values[1 - values.index(best)]
                (beaten if finding.verdict == "clear difference" else close).append(other)
        clearly = "" if any(f.tentative for f in pairs) else "clearly "  # one seed: never "clearly"
        where = f" ({family})" if len(families) > 1 and family else ""
        text = f"{what}{where}: best {best} ({metric_words(pairs[0].metric)} {stats[best].percent()} %)"
        if beaten:
            text += f", {clearly}better than {', '.join(beaten)}"
        if close:
            text += f"{';' if beaten else ','} not clearly better than {', '.join(close)}"
        clauses.append(text)
    return clauses


def seeds_clause(summaries: Sequence[ConfigSummary], metric: str, findings: Sequence[Finding]) -> str:
    """How many seeds the numbers rest on, and their spread."""
    stats = [s.stats[metric] for s in summaries if metric in s.stats]
    if not stats:
        return "no configuration has finished trials yet"
    counts = sorted({stat.n for stat in stats})
    spreads = [stat.std for stat in stats if stat.std is not None]
    if counts == [1] or (findings and all(f.tentative for f in findings)):
        if not findings:
            return "one seed per configuration: the seed spread is unknown"
        return "one seed per configuration, so the seed spread is unknown and every verdict is tentative"
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    spread = f"seed-to-seed std of {metric_words(metric)} up to {100 * max(spreads):.2f} pp"
    return f"{seeds} seeds per configuration ({spread})"


def best_summary(summaries: Sequence[ConfigSummary], metric: str, mode: str | None) -> ConfigSummary | None:
    """The configuration with the best mean of ``metric`` (``mode`` min unless "max")."""
    ranked = [s for s in summaries if metric in s.stats]
    if not ranked:
        return None
    pick = max if mode == "max" else min
    return pick(ranked, key=lambda s: s.stats[metric].mean)


def _sentence(clauses: Sequence[str]) -> str:
    text = "; ".join(clauses)
    return text[:1].upper() + text[1:] + "."


def answer(
    summaries: Sequence[ConfigSummary],
    findings: Sequence[Finding],
    *,
    metric: str,
    mode: str | None,
    tolerance: Tolerance,
    sweep: str | None = None,
    partial: bool = False,
    gradients: Sequence[Verdict] = (),
    responses: Sequence[Verdict] = (),
    why: Sequence[WhyDeeper] = (),
) -> str:
    """A few sentences: the depth clauses (each with its gradient verdict), what tells the deeper residual net
    apart (``why``), then the shortcut clauses (with the Fig. 7 responses where they differ beyond the spread)
    and block clauses, then the seeds.

    ``sweep``: the sentence of a sampled search (:func:`.sweep.sweep_answer`), used when no pair of
    configurations differs in depth, shortcut or block alone; ``partial``: some trials have not
    finished (said at the end); ``gradients``, ``responses``: :mod:`.evidence`; ``why``: :mod:`.deeper`.
    """
    depth = _depth_clauses([f for f in findings if f.kind == "depth"], tolerance, metric, gradients)
    other = [
        clause
        for clause in (
            _plain_vs_residual([f for f in findings if f.kind == "shortcut"], tolerance),
            _responses_clause(responses),
            _any_differs(
                [f for f in findings if f.kind == "shortcut" and "none" not in f.differing.get("model.shortcut", ())],
                "shortcut options", tolerance,
            ),
            _any_differs([f for f in findings if f.kind == "block"], "block types", tolerance),
        )
        if clause
    ]
    options = [f for f in findings if f.kind == "shortcut" and "none" not in f.differing.get("model.shortcut", ())]
    if any(f.verdict == "clear difference" for f in options):  # they differ: which is best
        other += _best_of(options, "model.shortcut", "shortcut options", mode=mode)
    other += _best_of([f for f in findings if f.kind == "activation"], "model.activation", "BN/ReLU placements",
                      mode=mode)
    other += _best_of([f for f in findings if f.kind == "warm-up"], "trainer.warmup.policy", "warm-up policies",
                      mode=mode)
    seeds = seeds_clause(summaries, metric, findings)
    if partial:
        seeds += "; partial results: unfinished trials count with their latest values"
    if not depth and not other:
        if sweep:
            return sweep
        best = best_summary(summaries, metric, mode)
        if best is None:
            return "Not answered yet: no configuration has a value of " + metric_words(metric) + "."
        stat = best.stats[metric]
        return _sentence([f"best configuration: {best.label}, {metric_words(metric)} {stat.percent()} %", seeds])
    sentences = [clauses for clauses in (depth, other) if clauses]
    sentences[-1] = [*sentences[-1], seeds]
    texts = [_sentence(clauses) for clauses in sentences]
    if depth:  # after the depth sentence: what tells the deeper residual net apart
        texts[1:1] = [diagnosis.summary(detailed=True) for diagnosis in why]
    return " ".join(texts)


def finding_record(finding: Finding) -> dict[str, Any]:
    """One finding as plain data: both configurations, the keys that differ, the metric, the difference in
    percentage points, the pooled std, the seeds per side, the verdict."""
    diff = finding.difference
    pooled = None if diff is None else diff.pooled_std
    return {
        "kind": finding.kind,
        "family": finding.family,
        "a": {"label": finding.labels[0], "depth": finding.depths[0],
              **{key: values[0] for key, values in finding.differing.items()}},
        "b": {"label": finding.labels[1], "depth": finding.depths[1],
              **{key: values[1] for key, values in finding.differing.items()}},
        "differing_keys": list(finding.differing),
        "metric": finding.metric,
        "difference_pp": None if diff is None else round(100 * diff.delta, 4),
        "pooled_std_pp": None if pooled is None else round(100 * pooled, 4),
        "seeds": None if diff is None else [diff.a.n, diff.b.n],
        "verdict": finding.verdict,
        "tentative": finding.tentative,
        "text": finding.text,
    }
