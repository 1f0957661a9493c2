"""Reports: a study's MLflow records turned into the answer a researcher would write up, with the evidence beside it.

Operation order of :func:`make_report`: read the study back from the tracking store
(:func:`ablate.tracking.reader.load_study_records`) -> replicates to mean ± std per configuration
(:mod:`.aggregate`) -> the diagnosis (:mod:`.diagnose`), the measured evidence behind it: gradient
verdicts of the depth pairs and Fig. 7 responses of plain against residual nets (:mod:`.evidence`), and
for residual depth pairs on test error the three-measurement diagnosis (:mod:`.deeper`); for a sampled
search, its best configuration and importances (:mod:`.sweep`) -> the answer (:mod:`.answer`) -> PNGs:
Fig. 6 / gradient norms / Fig. 7 style (:mod:`.plots`), or the sweep's; the lesion figure where ``ablate lesion`` has run (:mod:`.lesion`) -> ``report.md`` and a self-contained ``report.html``
(:mod:`.document`, :mod:`.render`) in ``out_dir/NAME/`` -> onto the study's latest parent run: the folder
as artifacts ``report/``, the question and answer as its description, the headline numbers as metrics.

Example::

    >>> from ablate.report import make_report
    >>> report = make_report("shortcuts", tracking_uri="sqlite:///mlflow.db")  # doctest: +SKIP
    >>> print(report.summary)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ablate.errors import UserError
from ablate.report.aggregate import ConfigSummary, summarize
from ablate.report.answer import answer, best_summary, finding_record, seeds_clause
from ablate.report.deeper import WhyDeeper, why_applies, why_deeper
from ablate.report.diagnose import Finding, Tolerance, comparison_metric, diagnose
from ablate.report.document import document, format_counts, terminal_summary
from ablate.report.evidence import Verdict, gradient_verdicts, response_verdicts, verdict_record
from ablate.report.lesion import lesion_blocks, lesion_sentence, lesion_views, plot_lesion
from ablate.report.plots import plot_curves, plot_grad_norms, plot_layer_responses
from ablate.report.sweep import SweepView, plot_sweep, plot_sweep_curves, sampled_axes, sweep_answer, sweep_view
from ablate.console import text_table
from ablate.metrics import ERROR_METRICS
from ablate.report.render import to_html, to_markdown
from ablate.tracking import layout, ui
from ablate.tracking.reader import StudyRecords, UnknownStudyError, list_studies, load_study_records
from ablate.tracking.writer import record_answer, study_note

__all__ = ["Report", "ReportError", "UnknownStudyError", "format_studies", "list_studies", "make_report"]

FIGURES = {  # key -> file name in the report folder
    "curves": "curves.png",
    "gradients": "grad_norms.png",
    "responses": "layer_responses.png",
    "sweep": "hyperparameters.png",
    "sweep_curves": "sweep_curves.png",
    "lesion": "lesion.png",
}


class ReportError(UserError):
    """A report that cannot be written where asked (a study name that is not a plain folder name)."""


@dataclass(frozen=True)
class Report:
    """Where a report was written, and what the terminal should show."""

    path: Path  # the report folder, out_dir/NAME
    summary: str  # the terminal summary
    files: tuple[Path, ...]  # report.md, report.html and the PNGs, all inside `path`
    findings: tuple[Finding, ...]
    logged_to: str | None  # the parent run holding the artifacts under report/; None when logging failed
    answer: str = ""  # the Answer section's sentences
    data: dict[str, Any] | None = None  # the findings for scripts (`ablate report --json`)

    @property
    def html(self) -> Path:
        return self.path / "report.html"


def make_report(study_name: str, *, tracking_uri: str | None = None, out_dir: str | Path = "reports") -> Report:
    """Write ``out_dir/study_name/{report.md, report.html, *.png}`` and log them to the study's latest parent run.

    Reads only the tracking store (``tracking_uri``, default
    :func:`ablate.tracking.layout.default_tracking_uri`); an unknown study raises
    :class:`UnknownStudyError` listing the recorded ones.
    """
    folder = _report_folder(Path(out_dir), study_name)
    uri = tracking_uri or layout.default_tracking_uri()
    records = load_study_records(study_name, uri)
    metric = comparison_metric(records.metric)
    summaries = summarize(records, metrics=(*ERROR_METRICS, metric))
    tolerance = Tolerance()
    findings = diagnose(summaries, metric=metric, tolerance=tolerance, study=records.study)
    gradients = gradient_verdicts(findings, summaries, tolerance=tolerance)
    responses = response_verdicts(findings, summaries, tolerance=tolerance)
    why = (why_deeper(findings, summaries, gradients, tolerance=tolerance, study=study_name)
           if why_applies(summaries, findings, metric) else [])
    axes = sampled_axes(records.study)
    sweep = sweep_view(summaries, axes, metric=metric, mode=records.mode) if axes and summaries else None
    text = answer(summaries, findings, metric=metric, mode=records.mode, tolerance=tolerance,
                  sweep=_sweep_sentence(sweep, summaries, metric), partial=records.partial, gradients=gradients,
                  responses=responses, why=why)
    lesions = lesion_views(summaries)  # empty unless `ablate lesion` has run on the study
    if lesions:
        text = f"{text} {lesion_sentence(lesions)}"

    folder.mkdir(parents=True, exist_ok=True)
    for name in FIGURES.values():  # a figure from an earlier report must not outlive its data
        (folder / name).unlink(missing_ok=True)
    figures = _figures(records, summaries, findings, sweep, folder, metric)
    lesion_figure = plot_lesion(lesions, folder / FIGURES["lesion"])
    blocks = document(records, summaries, findings, figures, metric=metric, tolerance=tolerance, answer=text,
                      sweep=sweep, gradients=gradients, responses=responses, why=why,
                      lesion=lesion_blocks(lesions, lesion_figure))
    markdown, page = folder / "report.md", folder / "report.html"
    markdown.write_text(to_markdown(blocks), encoding="utf-8")
    page.write_text(to_html(blocks, title=f"Study {study_name}"), encoding="utf-8")
    files = (markdown, page, *(path for path in (*figures.values(), lesion_figure) if path is not None))

    parent = records.latest_parent.run_id
    try:
        MlflowClient(uri).log_artifacts(parent, str(folder), artifact_path=layout.ARTIFACT_REPORT_DIR)
        record_answer(uri, parent, note=study_note(records.question or "", text),
                      metrics=_headline(summaries, sweep, metric, records.mode))
        where = f"Report: {page} (also on run {parent}: its description, metrics and {layout.ARTIFACT_REPORT_DIR}/)"
        logged_to: str | None = parent
    except (MlflowException, OSError) as err:
        where = f"Report: {page} (not logged to run {parent}: {err})"
        logged_to = None
    summary = terminal_summary(records, summaries, findings, metric=metric, where=where, answer=text, sweep=sweep)
    data = _data(records, text, findings, metric, [*gradients, *responses], why)
    return Report(folder, summary, files, tuple(findings), logged_to, text, data)


def _sweep_sentence(sweep: SweepView | None, summaries: list[ConfigSummary], metric: str) -> str | None:
    if sweep is None:
        return None
    seeds = seeds_clause(summaries, metric, [])
    return sweep_answer(sweep.best, sweep.axes, sweep.importances, metric=metric, sampled=len(summaries), seeds=seeds,
                        at_step=sweep.importance_step)


def _figures(
    records: StudyRecords,
    summaries: list[ConfigSummary],
    findings: list[Finding],
    sweep: SweepView | None,
    folder: Path,
    metric: str,
) -> dict[str, Path | None]:
    """The sweep's two figures for a sampled search; else Fig. 6 curves, the gradient norms of the nets in depth
    pairs (when there are any) and Fig. 7 responses."""
    if sweep is not None:
        best = sweep.best.group if sweep.best else None
        return {
            "sweep": plot_sweep(records.trials, sweep.axes, folder / FIGURES["sweep"], metric=metric, best_group=best),
            "sweep_curves": plot_sweep_curves(records.trials, folder / FIGURES["sweep_curves"], metric=metric,
                                              best_group=best),
        }
    figures = {"curves": plot_curves(summaries, folder / FIGURES["curves"], study=records.study)}
    compared = {label for f in findings if f.kind == "depth" for label in f.labels}
    if compared:
        figures["gradients"] = plot_grad_norms([s for s in summaries if s.label in compared],
                                               folder / FIGURES["gradients"])
    figures["responses"] = plot_layer_responses(summaries, folder / FIGURES["responses"])
    return figures


def _headline(
    summaries: list[ConfigSummary], sweep: SweepView | None, metric: str, mode: str | None
) -> dict[str, float]:
    """The parent run's metrics: the best configuration's mean; for a grid, every configuration's mean."""
    best = sweep.best if sweep is not None else best_summary(summaries, metric, mode)
    values = {} if best is None else {layout.BEST_PREFIX + metric: best.stats[metric].mean}
    if sweep is None:
        values |= {f"{layout.MEAN_PREFIX}{metric}/{s.label}": s.stats[metric].mean for s in summaries
                   if metric in s.stats}
    return values


def _data(
    records: StudyRecords, text: str, findings: list[Finding], metric: str, evidence: list[Verdict],
    why: list[WhyDeeper],
) -> dict[str, Any]:
    """What ``ablate report --json`` prints: the findings, the measured evidence (gradient verdicts of the depth
    pairs, Fig. 7 responses of plain/residual pairs) and the deeper-net diagnoses."""
    return {
        "study": records.name,
        "question": records.question,
        "metric": metric,
        "status": records.status,
        "answer": text,
        "runs_url": ui.runs_url(records.experiment_id, records.tracking_uri),
        "findings": [finding_record(f) for f in findings],
        "evidence": [verdict_record(v) for v in evidence],
        "why_deeper": [
            {"a": d.labels[0], "b": d.labels[1], "distinguishing": list(d.distinguishing), "text": d.summary(),
             "measured": [{"name": m.name, "distinguishes": m.distinguishes, "text": m.text} for m in d.measured]}
            for d in why
        ],
    }


def _report_folder(out_dir: Path, study_name: str) -> Path:
    """``out_dir/study_name``, refusing a name that would put the report anywhere else (``..``, ``a/b``)."""
    if study_name in ("", ".", "..") or any(sep in study_name for sep in ("/", "\\", "\0")):
        raise ReportError(
            f"--study {study_name!r}: not usable as the report's folder name under {out_dir}; a study name is "
            "letters, digits, '_', '.' and '-' (rename the MLflow experiment)"
        )
    return out_dir / study_name


def format_studies(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`list_studies` as a terminal table."""
    if not rows:
        return "No studies recorded yet."
    header = ("study", "status", "invocations", "trials", "last start (UTC)")
    lines = [
        (r["name"], r["status"], str(r["parent_runs"]), format_counts(r["trials"]), f"{r['last_start']:%Y-%m-%d %H:%M}")
        for r in rows
    ]
    return text_table(header, lines)
