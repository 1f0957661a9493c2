"""The report's "Lesion" section: test error of the trained nets with units deleted (Veit, Wilber and
Belongie, NeurIPS 2016, Figs. 3 and 5), from the ``lesion.json`` that ``ablate lesion`` logs per trial.

Operation order: per configuration, its trials' :class:`~ablate.tracking.reader.LesionRecord` ->
per seed, the mean increase when one deletable unit is deleted, and the mean over draws at each k ->
mean ± std over seeds (:class:`LesionView`) -> the figure (left: error against the number of deleted
units, k = 0 the intact net; right: the error with each single unit deleted, network order, stage
transitions marked) -> the section's table and the Answer's sentence. Drawn only when some trial has a
lesion record; the rest of the report does not change.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ablate.report.aggregate import ConfigSummary, Stat
from ablate.report.render import Block, Heading, Image, Paragraph, Table
from ablate.tracking.reader import LesionRecord

__all__ = ["LesionView", "lesion_blocks", "lesion_sentence", "lesion_views", "plot_lesion"]

CITATION = 'Veit, Wilber and Belongie 2016, "Residual Networks Behave Like Ensembles of Relatively Shallow Networks"'


@dataclass(frozen=True)
class LesionView:
    """One configuration's lesion sweeps over its seeds; errors are fractions, statistics over seeds."""

    label: str
    residual: bool
    base: Stat  # the intact net
    increase: Stat  # mean over deletable units of (error with it deleted - base)
    largest: Stat  # the largest single-unit increase
    curve: tuple[Stat, ...]  # k = 0, 1, ..., K: the intact net, then the mean over draws at each k
    units: tuple[str, ...]  # network order
    transitions: tuple[bool, ...]
    single: tuple[Stat | None, ...]  # per unit over seeds; None: not deletable (a plain transition unit)


def _increases(record: LesionRecord) -> list[float]:
    return [e - record.base_error for e in record.single if e is not None]


def lesion_views(summaries: Sequence[ConfigSummary]) -> list[LesionView]:
    """A view per configuration whose trials in the means have lesion records with the same units; residual first."""
    views = []
    for summary in summaries:
        records = [t.lesion for t in summary.used if t.lesion is not None and _increases(t.lesion)]
        if not records or len({r.unit_names for r in records}) != 1:
            continue
        depth = min(len(r.k) for r in records)
        curve = [Stat.of([r.base_error for r in records])]
        curve += [Stat.of([statistics.fmean(r.draws[i]) for r in records]) for i in range(depth)]
        first = records[0]
        single = tuple(
            None if first.single[u] is None else Stat.of([r.single[u] for r in records if r.single[u] is not None])
            for u in range(len(first.unit_names))
        )
        views.append(LesionView(
            label=summary.label,
            residual=summary.params.get("model.shortcut") != "none",
            base=curve[0],
            increase=Stat.of([statistics.fmean(_increases(r)) for r in records]),
            largest=Stat.of([max(_increases(r)) for r in records]),
            curve=tuple(curve),
            units=first.unit_names,
            transitions=first.transitions,
            single=single,
        ))
    return sorted(views, key=lambda v: not v.residual)


def _points(stat: Stat) -> str:
    """``"0.8 ± 0.3 pp"`` (percentage points) from a fraction; the mean alone with one seed."""
    spread = "" if stat.std is None else f" ± {100 * stat.std:.1f}"
    return f"{100 * stat.mean:.1f}{spread} pp"


def lesion_sentence(views: Sequence[LesionView]) -> str | None:
    """``Deleting one unit raises resnet20's test error by 0.8 ± 0.3 pp on average, plain20's by 52 ± 9 pp ...``."""
    if not views:
        return None
    parts = [f"{v.label}'s by {_points(v.increase)}" for v in views]
    parts[0] = parts[0].replace("'s by ", "'s test error by ", 1)
    seeds = sorted({v.base.n for v in views})
    over = f"mean ± std over {'/'.join(map(str, seeds))} seeds" if max(seeds) > 1 else "one seed"
    return f"Deleting one unit raises {', '.join(parts)} on average ({over})."


def plot_lesion(views: Sequence[LesionView], path: Path) -> Path | None:
    """Two panels: error against deleted units (k = 0: intact), and error per single deleted unit."""
    if not views:
        return None
    figure = Figure(figsize=(11.0, 4.0), dpi=110)
    by_k, by_unit = figure.subplots(1, 2)
    for index, view in enumerate(views):
        colour = f"C{index}"
        style = "-" if view.residual else "--"
        ks = range(len(view.curve))
        by_k.errorbar(ks, [100 * s.mean for s in view.curve], yerr=[100 * (s.std or 0) for s in view.curve],
                      fmt=f"o{style}", color=colour, capsize=3, label=view.label)
        kept = [(u, s) for u, s in enumerate(view.single) if s is not None]
        by_unit.errorbar([u for u, _ in kept], [100 * s.mean for _, s in kept],
                         yerr=[100 * (s.std or 0) for _, s in kept], fmt=f".{style}", color=colour, capsize=2,
                         label=view.label)
        by_unit.axhline(100 * view.base.mean, color=colour, linewidth=0.8, linestyle=":")
        for u, transition in enumerate(view.transitions):
            if transition:
                by_unit.axvline(u, color=colour, linewidth=0.8, alpha=0.5)
                marked = view.single[u]
                if marked is not None:
                    by_unit.plot([u], [100 * marked.mean], marker="s", color=colour, markersize=7, fillstyle="none")
    by_k.set(xlabel="units deleted (k; 0: the intact net)", ylabel="test error (%)",
             title="Error against deleted units (random draws)")
    by_unit.set(xlabel="deleted unit (network order)", ylabel="test error (%)",
                title="One unit deleted (vertical lines: stage transitions)")
    for axes in (by_k, by_unit):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_k.legend(fontsize=8)
    by_unit.legend(fontsize=8)
    figure.suptitle("Lesions: mean ± std over seeds; dotted: intact nets; plain nets dashed (cf. Veit et al. 2016 Fig. 3)",
                    fontsize=9)
    figure.subplots_adjust(left=0.07, right=0.98, top=0.82, bottom=0.14, wspace=0.25)
    figure.savefig(path)
    return path


def lesion_blocks(views: Sequence[LesionView], figure: Path | None) -> list[Block]:
    """The section: what was deleted, the sentence, a table per configuration, the figure."""
    if not views:
        return []
    rows = tuple(
        (v.label, str(v.base.n), v.base.percent(), _points(v.increase), _points(v.largest),
         f"{len(v.curve) - 1}", v.curve[-1].percent(), ", ".join(n for n, t in zip(v.units, v.transitions) if t))
        for v in views
    )
    text = (
        f"Test error of the trained nets with residual units deleted ({CITATION}, sec. 4): a deleted unit keeps "
        "its shortcut (identity, zero-padding or projection) and loses its residual branch; in a plain net only "
        "the units that keep the shape can be deleted (the stage-transition units cannot). Random draws of k "
        "distinct deletable units for each k. " + (lesion_sentence(views) or "")
    )
    return [
        Heading("Lesion"),
        Paragraph(text),
        Table(("net", "seeds", "intact test err (%)", "one unit deleted: mean rise", "largest rise", "K",
               "K deleted: test err (%)", "stage-transition units"), rows),
        Image(figure, "Left: mean over draws at each k; right: each single unit deleted, transition units "
                      "marked (squares where deletable).") if figure else Paragraph("No figure."),
    ]
