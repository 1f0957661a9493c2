"""What a report says, section by section: the answer first, then the evidence it rests on.

Sections, in order, one heading per topic: header (question, metric, status, invocations, trial
counts, where the records are, the paper that sections and figures refer to, partial warning) ->
answer (a few sentences, :mod:`.answer`) -> results table in the paper's form (a sampled
search: every trial, with the value at the stop for stopped ones, :mod:`.sweep`) -> depth (each pair
with its gradient verdict, :mod:`.evidence`) -> why the deeper residual net tests differently
(:mod:`.deeper`) -> shortcut options (findings and the option table per depth) -> block types ->
sampled search (best configuration, importances, figures) -> Fig. 6 curves -> per-part gradient norms ->
Fig. 7 layer responses (with the plain/residual verdicts) -> lesions (after
``ablate lesion``) -> trials outside the means or still running
-> how differences are judged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ablate.report.answer import best_summary
from ablate.report.aggregate import (
    EXCLUDED_STATUSES,
    SHORTCUT_ORDER,
    ConfigSummary,
    Stat,
    comparison_sets,
    coupled_keys,
    describe,
    differing_keys,
    metric_words,
)
from ablate.report.deeper import WhyDeeper
from ablate.report.diagnose import AXES, Finding, Tolerance
from ablate.report.evidence import HEAD, STAGE1, Verdict
from ablate.report.render import Block, Bullets, Heading, Image, Paragraph, Table
from ablate.report.sweep import MIN_COMPLETE, SweepView, trial_value
from ablate.console import text_table
from ablate.metrics import Status
from ablate.tracking import layout, ui
from ablate.tracking.reader import PARTIAL_STATUSES, StudyRecords, TrialRecord

__all__ = ["PAPER", "document", "format_counts", "store_text", "terminal_summary"]

_DASH = "—"
PAPER = 'He et al. 2015, "Deep Residual Learning for Image Recognition"'  # what "sec." and "Fig." refer to


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


def store_text(tracking_uri: str) -> str:
    """The tracking store as a reader wants it: the database file of a SQLite store, else the URI."""
    database = layout.sqlite_path(tracking_uri)
    return str(database) if database is not None else tracking_uri


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
        f"Tracking store: {store_text(records.tracking_uri)}",
        f"In MLflow: {ui.runs_url(records.experiment_id, records.tracking_uri)}",
        f"Paper: sections (sec.) and figures (Fig.) cited below are those of {PAPER}.",
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


def _best(summaries: Sequence[ConfigSummary], metric: str, mode: str | None) -> str | None:
    """``"Lowest test error: resnet56-B, 6.90 ± 0.10 % over 3 seed(s)."``; None when no configuration has it."""
    best = best_summary(summaries, metric, mode)
    if best is None:
        return None
    stat = best.stats[metric]
    partial = " (partial)" if best.partial else ""
    which = "Highest" if mode == "max" else "Lowest"
    return f"{which} {metric_words(metric)}: {best.label}{partial}, {stat.percent()} % over {stat.n} seed(s)."


def _answer(text: str, findings: Sequence[Finding], sweep: SweepView | None) -> list[Block]:
    blocks: list[Block] = [Heading("Answer"), Paragraph(text)]
    if not findings and sweep is None:
        blocks.append(Paragraph("No two configurations differ in depth, shortcut or block alone: nothing to diagnose."))
    return blocks


def _findings(findings: Sequence[Finding], kind: str, gradients: Sequence[Verdict] = ()) -> list[Block]:
    """The findings of ``kind`` as bullets; a depth pair's bullet ends with its gradient verdict."""
    by_pair = {v.labels: v.text for v in gradients}
    texts = tuple(" ".join(filter(None, (f.text, by_pair.get(f.labels)))) for f in findings if f.kind == kind)
    return [Bullets(texts)] if texts else []


_RATIO_NOTE = (
    f"Gradients: r = {STAGE1} / {HEAD} per trial, the geometric mean over the evaluation points of the run's first "
    "half of the quotient of the two mean gradient norms the trainer records (before the learning-rate drops); "
    "shown as mean ± std over seeds, judged on log10 r with the rule under \"How differences are judged\". The "
    "paper (sec. 4.1) argues that plain nets' degradation is unlikely to be caused by vanishing gradients."
)


def _gradient_note(findings: Sequence[Finding], gradients: Sequence[Verdict]) -> list[Block]:
    if not any(f.kind == "depth" for f in findings):
        return []
    if gradients and all(v.verdict == "not enough data" for v in gradients):
        return [Paragraph(f"Gradients: no trial of these depth pairs recorded {STAGE1} and {HEAD} (an older store, "
                          "or trials that did not log them): no gradient verdict.")]
    return [Paragraph(_RATIO_NOTE)] if gradients else []


def _why(why: Sequence[WhyDeeper]) -> list[Block]:
    """The deeper residual net against the shallower one, on the three measurements (sec. 4.2)."""
    if not why:
        return []
    blocks: list[Block] = [Heading("Why the deeper residual net tests differently")]
    blocks.append(Paragraph(
        "The paper reads ResNet-1202's higher test error against ResNet-110 as overfitting (sec. 4.2: similar "
        "training error, higher test error, 19.4M parameters on 50k images). Three measured things, each against "
        "the seed spread: the train/test gap (final test error - training error), the lesion curves "
        "(`ablate lesion`: test error with one unit, and with k random units, deleted) and the gradients."))
    for diagnosis in why:
        blocks += [Bullets(tuple(m.text[:1].upper() + m.text[1:] + "." for m in diagnosis.measured)),
                   Paragraph(diagnosis.summary())]
    return blocks


def _results(summaries: Sequence[ConfigSummary], metric: str, mode: str | None) -> list[Block]:
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
    best = _best(summaries, metric, mode)
    return [Heading("Results"), Table(header, rows), Paragraph(note + (f" {best}" if best else ""))]


def _sweep_table(
    records: StudyRecords, sweep: SweepView, metric: str, mode: str | None
) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Every trial of a sampled search, best first: its sampled values, its value (at the stop when stopped)."""
    def order(trial: TrialRecord) -> tuple:
        value = trial_value(trial, metric)
        return (value is None, -value if (value is not None and mode == "max") else (value or 0.0))

    header = (*(axis.key for axis in sweep.axes), f"{metric_words(metric)} (%)", "how it ended", "seed")
    rows = []
    for trial in sorted(records.trials, key=order):
        value = trial_value(trial, metric)
        ended = trial.status if trial.status != "stopped" else f"stopped at iteration {trial.last_step}"
        cells = [_value_cell(axis.value(trial.params)) for axis in sweep.axes]
        rows.append((*cells, _DASH if value is None else f"{100 * value:.2f}", ended, str(trial.seed)))
    return header, rows


def _sweep_results(records: StudyRecords, sweep: SweepView, metric: str, mode: str | None) -> list[Block]:
    header, rows = _sweep_table(records, sweep, metric, mode)
    note = (
        "One row per trial, best first. A trial the scheduler stopped early (ASHA) shows its value when it was "
        "stopped: it trained for fewer iterations than the others, so it is not in the best configuration's running."
    )
    return [Heading("Results"), Table(header, tuple(rows)), Paragraph(note)]


def _value_cell(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _sweep(sweep: SweepView, figures: Mapping[str, Path | None], metric: str) -> list[Block]:
    blocks: list[Block] = [Heading("Sampled search")]
    if sweep.best is not None:
        stat = sweep.best.stats[metric]
        values = ", ".join(f"{axis.key} = {_value_cell(axis.value(sweep.best.params))}" for axis in sweep.axes)
        blocks.append(Paragraph(f"Best configuration: {values}: {metric_words(metric)} {stat.percent()} % over "
                                f"{stat.n} seed(s) ({sweep.complete} configuration(s) finished all their seeds)."))
    if sweep.importances:
        if sweep.importance_step is None:
            over = f"over the {sweep.complete} configurations that finished (stopped ones are left out)"
        else:
            over = (f"at iteration {sweep.importance_step}, the last evaluation every trial reached (only "
                    f"{sweep.complete} configuration(s) finished: too few on their own)")
        rows = tuple((name, f"{share:.2f}") for name, share in sweep.importances.items())
        blocks += [
            Table(("hyper-parameter", "importance (fANOVA)"), rows),
            Paragraph(f"Optuna's fANOVA importance evaluator on an Optuna study rebuilt from the records: the share "
                      f"of the variance of {metric_words(metric)} each hyper-parameter explains, {over}. With few "
                      "configurations it is a rough guide."),
        ]
    else:
        blocks.append(Paragraph(f"Parameter importances need at least {MIN_COMPLETE} configurations with a value "
                                "at a common iteration."))
    for key, caption in (
        ("sweep", f"{metric_words(metric)} against each sampled hyper-parameter; hollow markers: stopped early "
                  "(value at the stop); star: the best configuration."),
        ("sweep_curves", f"{metric_words(metric)} of every trial during training; red: the best configuration."),
    ):
        if figures.get(key):
            blocks.append(Image(figures[key], caption))
    return blocks


def _shortcut_tables(summaries: Sequence[ConfigSummary], metric: str, coupled: frozenset[str]) -> list[Block]:
    """The A/B/C (+ plain) table per depth, for the comparison metric and for training error."""
    sets = comparison_sets(summaries, "model.shortcut", coupled=coupled)
    if not sets:
        return []
    options = [o for o in SHORTCUT_ORDER if any(s.params.get("model.shortcut") == o for part in sets for s in part)]
    context = differing_keys([part[0] for part in sets], ignore=["model.shortcut", "model.n", *coupled])
    blocks: list[Block] = []
    for name in dict.fromkeys((metric, "train_error")):
        rows = []
        for part in sets:
            by_option = {s.params.get("model.shortcut"): s for s in part}
            where = describe(part[0], context)
            first = f"{part[0].depth}" + (f" ({where})" if where else "")
            cells = [_cell(by_option[o].stats.get(name)) if o in by_option else _DASH for o in options]
            rows.append((first, *cells))
        titles = ["plain" if o == "none" else o for o in options]
        blocks += [Paragraph(f"{metric_words(name)} (%)"), Table(("depth", *titles), tuple(rows))]
    return blocks


_FIGURE_TEXT = {  # key of `figures` -> (heading, caption, what to say when there is no figure)
    "curves": (
        "Training curves",
        "Mean over seeds; dashed: training error, solid: test error; one colour per depth (cf. Fig. 6).",
        "No trial has logged training or test error yet.",
    ),
    "gradients": (
        "Gradient norms",
        "Mean gradient norm of each part of the network (stem, stages, head) over training, mean over seeds, log "
        "scale; one panel per net of the depth pairs (sec. 4.1).",
        "No trial of the depth pairs recorded grad_norm/<part> histories (an older store).",
    ),
    "responses": (
        "Layer responses",
        "Std of each 3x3 layer's response, network order (top) and sorted (bottom) (cf. Fig. 7).",
        "No trial's layer_responses.json could be read: none logged yet (trials log it when they finish), or the "
        "artifact folder is not reachable from this machine.",
    ),
}


def _figures(figures: Mapping[str, Path | None], responses: Sequence[Verdict] = ()) -> list[Block]:
    """The figures' sections; the layer responses' ends with the plain/residual verdicts (Fig. 7)."""
    blocks: list[Block] = []
    for key, (title, caption, missing) in _FIGURE_TEXT.items():
        if key in figures:  # not drawn at all for a sampled search
            path = figures[key]
            blocks += [Heading(title), Image(path, caption) if path else Paragraph(missing)]
            if key == "responses" and responses:
                blocks += [Paragraph("Plain against residual nets of the same depth: the mean over layers of the "
                                     "response std, per trial, judged on its log10 over seeds (Fig. 7: residual "
                                     "nets have generally smaller responses)."),
                           Bullets(tuple(v.text for v in responses))]
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
        "difference. With one seed on both sides the spread is unknown: a verdict then rests on the size alone "
        f"(at least {tolerance.min_points:g} points) and is marked tentative. Depth pairs: degradation = the deeper "
        "net's training error is higher; overfitting = its training error is as low (within "
        f"{tolerance.min_points:g} points) or lower while its test error is higher; tests worse = its test error is "
        "higher and its training error higher too, within the noise (degradation and overfitting cannot be told "
        "apart); gain = its test error is lower. In the answer, \"not clear at this budget\" means a difference "
        "above the size threshold but within the seed-to-seed noise: more seeds or longer runs would decide it. "
        "Quantities that vary by factors (the stage-1/head gradient-norm ratio, the mean layer-response std) follow "
        "the same rule on their log10: clear when the factor is at least "
        f"{tolerance.min_factor:g} and at least {tolerance.min_spreads:g} pooled std of the seeds' log10 values."
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
    answer: str,
    sweep: SweepView | None = None,
    gradients: Sequence[Verdict] = (),
    responses: Sequence[Verdict] = (),
    why: Sequence[WhyDeeper] = (),
    lesion: Sequence[Block] = (),
) -> list[Block]:
    """The report's blocks; ``figures`` maps ``"curves"``, ``"gradients"``, ``"responses"`` (grid) or
    ``"sweep"``, ``"sweep_curves"`` (sampled) to a PNG, or None when there was nothing to draw;
    ``gradients``, ``responses``: :mod:`.evidence`; ``why``: :mod:`.deeper`; ``lesion``: the Lesion
    section (:mod:`.lesion`), after the figures."""
    if not summaries:
        return _header(records) + [Paragraph("No trial has been recorded yet.")]
    mode = records.mode
    blocks = _header(records) + _answer(answer, findings, sweep)
    blocks += _sweep_results(records, sweep, metric, mode) if sweep else _results(summaries, metric, mode)
    shortcut_tables = _shortcut_tables(summaries, metric, coupled_keys(records.study, "model.shortcut"))
    recorded = gradients if any(v.verdict != "not enough data" for v in gradients) else ()  # else one note says so
    for kind, title in _KINDS:
        body = _findings(findings, kind, recorded) + (shortcut_tables if kind == "shortcut" else [])
        if kind == "depth":
            body += _gradient_note(findings, gradients)
        if body:
            blocks += [Heading(title), *body]
        if kind == "depth":
            blocks += _why(why)
    if sweep:
        blocks += _sweep(sweep, figures, metric)
    return (blocks + _figures(figures, responses) + list(lesion) + _trial_status(records.trials)
            + _method(tolerance, records.study))


def terminal_summary(
    records: StudyRecords,
    summaries: Sequence[ConfigSummary],
    findings: Sequence[Finding],
    *,
    metric: str,
    where: str,
    answer: str,
    sweep: SweepView | None = None,
) -> str:
    """The terminal's lines: status, the error columns (a sampled search: its trials, best first), the answer,
    the diagnosis, the report's place, the runs."""
    lines = [
        f"Study {records.name!r}: {records.status}, {len(records.parents)} invocation(s), "
        + format_counts(Counter(t.status for t in records.trials))
        + (" [PARTIAL]" if records.partial else "")
    ]
    if records.question:
        lines.append(f"Question: {records.question}")
    if sweep is not None:
        header, rows = _sweep_table(records, sweep, metric, records.mode)
        lines += ["", text_table(header, rows)]
    elif summaries:
        header = ("label", "depth", "train err (%)", "test err (%)", "seeds")
        rows = [
            (s.label, str(s.depth or _DASH), *(_cell(s.stats.get(m)) for m in ("train_error", "test_error")), _seeds(s))
            for s in summaries
        ]
        lines += ["", text_table(header, rows)]
    lines += ["", f"Answer: {answer}"]
    for kind, title in _KINDS:
        texts = [f"- {f.text}" for f in findings if f.kind == kind]
        if texts:
            lines += ["", f"{title}:", *texts]
    lines += ["", where, ui.where_to_look(records.experiment_id, records.tracking_uri)]
    return "\n".join(lines)
