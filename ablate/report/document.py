"""What a report says, section by section: the answer first, then the evidence it rests on.

Sections, in order: header (question, metric, status, invocations, trial counts, partial warning)
-> answer (the best configuration and the diagnosis) -> results table in the paper's form ->
shortcut-option tables (when configurations differ only in ``model.shortcut``) -> Fig. 6 curves ->
Fig. 7 layer responses -> trials outside the means or still running -> how differences are judged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ablate.report.aggregate import (
    EXCLUDED_STATUSES,
    SHORTCUT_ORDER,
    ConfigSummary,
    Stat,
    comparison_sets,
    coupled_keys,
    describe,
    differing_keys,
)
from ablate.report.diagnose import AXES, Finding, Tolerance
from ablate.report.render import Block, Bullets, Heading, Image, Paragraph, Table
from ablate.console import text_table
from ablate.metrics import Status
from ablate.tracking import layout
from ablate.tracking.reader import PARTIAL_STATUSES, StudyRecords, TrialRecord

__all__ = ["document", "format_counts", "terminal_summary"]

_DASH = "—"


def format_counts(counts: Mapping[str, int]) -> str:
    """``{"finished": 12, "diverged": 1}`` -> ``"13 trials (12 finished, 1 diverged)"``."""
    total = sum(counts.values())
    detail = ", ".join(f"{n} {status}" for status, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{total} trial{'s' if total != 1 else ''}" + (f" ({detail})" if detail else "")


def _cell(stat: Stat | None) -> str:
    return _DASH if stat is None else stat.percent()


def _seeds(summary: ConfigSummary) -> str:
    """Seeds in the means, how many of them still run, and those left out: ``"3 (1 running) +1 diverged"``."""
    text = str(len(summary.used))
    partial = [f"{summary.count(status)} {status}" for status in PARTIAL_STATUSES if summary.count(status)]
    if partial:
        text += f" ({', '.join(partial)})"
    for status in EXCLUDED_STATUSES:
        if summary.count(status):
            text += f" +{summary.count(status)} {status}"
    return text


def _millions(value: object, digits: int) -> str:
    return f"{value / 1e6:.{digits}f}M" if isinstance(value, (int, float)) else _DASH


def _header(records: StudyRecords) -> list[Block]:
    trials = format_counts(Counter(t.status for t in records.trials))
    if records.superseded:
        trials += f"; {records.superseded} older run(s) replaced by re-runs"
    metric = f"{records.metric} ({records.mode})" if records.mode else str(records.metric)
    facts = [
        f"Question: {records.question or _DASH}",
        f"Metric: {metric}",
        f"Status: {records.status}; {len(records.parents)} invocation(s), latest run {records.latest_parent.run_id}",
        f"Trials: {trials}",
        f"Tracking store: {records.tracking_uri}",
    ]
    blocks: list[Block] = [Heading(f"Study {records.name}", 1), Bullets(tuple(facts))]
    if records.partial:
        unfinished = sum(t.status in PARTIAL_STATUSES for t in records.trials)
        blocks.append(
            Paragraph(
                f"PARTIAL RESULTS: the study is {records.status} and {unfinished} trial(s) have not finished (running "
                "or interrupted); their latest values are in the means and their rows say so."
            )
        )
    return blocks


_KINDS = (  # Finding.kind -> title
    ("depth", "Depth"),
    ("shortcut", "Shortcut options"),
    ("block", "Block types"),
    ("activation", "Activation placements"),
    ("warm-up", "Warm-up policies"),
)


def _best(summaries: Sequence[ConfigSummary], metric: str) -> str | None:
    """``"Lowest test error: resnet56-B, 6.90 ± 0.10 % over 3 seed(s)."``; None when no configuration has it."""
    ranked = [s for s in summaries if metric in s.stats]
    if not ranked:
        return None
    best = min(ranked, key=lambda s: s.stats[metric].mean)
    stat = best.stats[metric]
    partial = " (partial)" if best.partial else ""
    return f"Lowest {metric.replace('_', ' ')}: {best.label}{partial}, {stat.percent()} % over {stat.n} seed(s)."


def _answer(summaries: Sequence[ConfigSummary], findings: Sequence[Finding], metric: str) -> list[Block]:
    best = _best(summaries, metric)
    blocks: list[Block] = [Heading("Answer")] + ([Paragraph(best)] if best else [])
    for kind, title in _KINDS:
        texts = tuple(f.text for f in findings if f.kind == kind)
        if texts:
            blocks += [Heading(title, 3), Bullets(texts)]
    if not findings:
        blocks.append(Paragraph("No two configurations differ in depth, shortcut or block alone: nothing to diagnose."))
    return blocks


def _results(summaries: Sequence[ConfigSummary]) -> list[Block]:
    header = ("label", "depth", "params", "MACs", "train err (%)", "val err (%)", "test err (%)", "seeds")
    rows = tuple(
        (
            s.label,
            str(s.depth or _DASH),
            _millions(s.params.get(layout.PARAM_MODEL_PARAMS), 2),
            _millions(s.params.get(layout.PARAM_MODEL_MACS), 1),
            _cell(s.stats.get("train_error")),
            _cell(s.stats.get("val_error")),
            _cell(s.stats.get("test_error")),
            _seeds(s),
        )
        for s in summaries
    )
    note = (
        "Mean ± sample standard deviation over seeds, in %; a single seed shows the mean alone. Diverged, stopped "
        "(early, by the scheduler) and failed trials are counted in the seeds column (+N) but left out of the means; "
        "running and interrupted trials enter with their latest values."
    )
    return [Heading("Results"), Table(header, rows), Paragraph(note)]


def _shortcut_tables(summaries: Sequence[ConfigSummary], metric: str, coupled: frozenset[str]) -> list[Block]:
    """The A/B/C (+ plain) table per depth, for the comparison metric and for training error."""
    sets = comparison_sets(summaries, "model.shortcut", coupled=coupled)
    if not sets:
        return []
    options = [o for o in SHORTCUT_ORDER if any(s.params.get("model.shortcut") == o for part in sets for s in part)]
    context = differing_keys([part[0] for part in sets], ignore=["model.shortcut", "model.n", *coupled])
    blocks: list[Block] = [Heading("Shortcut options")]
    for name in dict.fromkeys((metric, "train_error")):
        rows = []
        for part in sets:
            by_option = {s.params.get("model.shortcut"): s for s in part}
            where = describe(part[0], context)
            first = f"{part[0].depth}" + (f" ({where})" if where else "")
            cells = [_cell(by_option[o].stats.get(name)) if o in by_option else _DASH for o in options]
            rows.append((first, *cells))
        titles = ["plain" if o == "none" else o for o in options]
        blocks += [Paragraph(f"{name.replace('_', ' ')} (%)"), Table(("depth", *titles), tuple(rows))]
    return blocks


_FIGURE_TEXT = {  # key of `figures` -> (heading, caption, what to say when there is no figure)
    "curves": (
        "Training curves",
        "Mean over seeds; dashed: training error, solid: test error; one colour per depth (cf. Fig. 6).",
        "No trial has logged training or test error yet.",
    ),
    "responses": (
        "Layer responses",
        "Std of each 3x3 layer's response, network order (top) and sorted (bottom) (cf. Fig. 7).",
        "No trial's layer_responses.json could be read: none logged yet (trials log it when they finish), or the "
        "artifact folder is not reachable from this machine.",
    ),
}


def _figures(figures: Mapping[str, Path | None]) -> list[Block]:
    blocks: list[Block] = []
    for key, (title, caption, missing) in _FIGURE_TEXT.items():
        path = figures.get(key)
        blocks += [Heading(title), Image(path, caption) if path else Paragraph(missing)]
    return blocks


def _trial_status(trials: Sequence[TrialRecord]) -> list[Block]:
    unfinished = [t for t in trials if t.status != Status.FINISHED]
    blocks: list[Block] = [Heading("Trials outside the means or still running")]
    if not unfinished:
        return blocks + [Paragraph(f"None: all {len(trials)} trials finished.")]
    rows = tuple((t.label, str(t.seed), t.status, t.run_id) for t in unfinished)
    return blocks + [Table(("label", "seed", "status", "run id"), rows)]


def _method(tolerance: Tolerance, study: Mapping[str, Any] | None) -> list[Block]:
    text = (
        f"A difference counts as clear when it is at least {tolerance.min_points:g} percentage points and at least "
        f"{tolerance.min_spreads:g} pooled seed-to-seed standard deviations; anything smaller is reported as no clear "
        "difference. With one seed on both sides the spread is unknown and verdicts are marked tentative. Depth "
        "pairs: degradation = the deeper net's training error is clearly higher; overfitting = its training error is "
        "as low or lower while its test error is clearly higher; gain = its test error is clearly lower."
    )
    for axis, _ in AXES:
        coupled = coupled_keys(study, axis)
        if coupled:
            text += f" The study sets {', '.join(sorted(coupled))} from {axis}, so they go with it in comparisons."
    return [Heading("How differences are judged"), Paragraph(text)]


def document(
    records: StudyRecords,
    summaries: Sequence[ConfigSummary],
    findings: Sequence[Finding],
    figures: Mapping[str, Path | None],
    *,
    metric: str,
    tolerance: Tolerance,
) -> list[Block]:
    """The report's blocks; ``figures`` maps ``"curves"`` / ``"responses"`` to a PNG (or None when not drawn)."""
    if not summaries:
        return _header(records) + [Paragraph("No trial has been recorded yet.")]
    return (
        _header(records)
        + _answer(summaries, findings, metric)
        + _results(summaries)
        + _shortcut_tables(summaries, metric, coupled_keys(records.study, "model.shortcut"))
        + _figures(figures)
        + _trial_status(records.trials)
        + _method(tolerance, records.study)
    )


def terminal_summary(
    records: StudyRecords, summaries: Sequence[ConfigSummary], findings: Sequence[Finding], *, metric: str, where: str
) -> str:
    """The terminal's lines: status, the error columns, the best configuration, the diagnosis, the report's place."""
    lines = [
        f"Study {records.name!r}: {records.status}, {len(records.parents)} invocation(s), "
        + format_counts(Counter(t.status for t in records.trials))
        + (" [PARTIAL]" if records.partial else "")
    ]
    if records.question:
        lines.append(f"Question: {records.question}")
    if summaries:
        header = ("label", "depth", "train err (%)", "test err (%)", "seeds")
        rows = [
            (s.label, str(s.depth or _DASH), *(_cell(s.stats.get(m)) for m in ("train_error", "test_error")), _seeds(s))
            for s in summaries
        ]
        lines += ["", text_table(header, rows)]
    best = _best(summaries, metric)
    if best:
        lines += ["", best]
    for kind, title in _KINDS:
        texts = [f"- {f.text}" for f in findings if f.kind == kind]
        if texts:
            lines += ["", f"{title}:", *texts]
    lines += ["", where]
    return "\n".join(lines)
