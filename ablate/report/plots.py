"""Figures in the style of He et al. 2015: training curves (Fig. 6), layer responses (Fig. 7), and the
per-part gradient norms behind the sec. 4.1 argument, as PNG.

Drawn through matplotlib's object API (``Figure`` rendered by the Agg canvas): no display and no
pyplot state, so reports can be made on a headless machine and from several threads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ablate.metrics import GRAD_NORM_PREFIX
from ablate.report.aggregate import (
    ConfigSummary,
    comparison_sets,
    coupled_keys,
    describe,
    differing_keys,
    mean_curve,
    mean_responses,
    partition,
)

__all__ = ["plot_curves", "plot_grad_norms", "plot_layer_responses"]

_DPI = 110
_PANEL = (5.0, 3.6)  # inches per panel (width, height)


def _set_margins(figure: Figure, *, left=0.7, right=0.2, top=0.75, bottom=0.55) -> None:
    """Fixed outer margins in inches (room for the suptitle, panel titles and axis labels).

    Cheaper than matplotlib's constrained layout, which measures every text twice per save.
    """
    width, height = figure.get_size_inches()
    figure.subplots_adjust(
        left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height, wspace=0.3, hspace=0.5
    )


_AXIS_WORDS = {
    "model.shortcut": "shortcut options",
    "model.block": "block types",
    "model.activation": "BN/ReLU placements",
    "trainer.warmup.policy": "warm-up policies",
}


def _panels(summaries: Sequence[ConfigSummary], study: Mapping[str, Any] | None) -> tuple[str, list[list[ConfigSummary]]]:
    """The axis the panels compare along, and the panels.

    Depth families (Fig. 6) when one holds two depths; else, for each other compared axis, the sets of
    configurations that differ only in it (a configuration may sit in two panels, as the reference of
    both); else one panel per configuration.
    """
    families = partition(summaries, "model.n", coupled=coupled_keys(study, "model.n"))
    if any(len(family) > 1 for family in families):
        return "model.n", families
    panels = [part for axis in _AXIS_WORDS for part in comparison_sets(summaries, axis, coupled=coupled_keys(study, axis))]
    return ("", panels) if panels else ("model.n", families)


def _panel_axis(panel: Sequence[ConfigSummary]) -> str | None:
    """The one compared axis whose values differ within ``panel`` (None for depth panels and singletons)."""
    differing = [axis for axis in _AXIS_WORDS if len({str(s.params.get(axis)) for s in panel}) > 1]
    return differing[0] if len(differing) == 1 else None


def plot_curves(
    summaries: Sequence[ConfigSummary], path: Path, *, study: Mapping[str, Any] | None = None
) -> Path | None:
    """Fig. 6: error (%) against iterations; training error dashed, test error solid.

    Panels (:func:`_panels`): one per family of configurations that differ only in depth (and the settings
    ``study``'s ``constraints.set`` ties to it), one colour per depth; a study without depth pairs gets one
    panel per compared axis instead (shortcut options, BN/ReLU placements, warm-up policies), one colour per
    configuration. Each line is the mean over the seeds in the means.
    Returns ``path``, or None when no trial logged a training or test error history.
    """
    along, panels = _panels(summaries, study)
    panels = [
        panel for panel in panels if any(mean_curve(s.used, m) for s in panel for m in ("train_error", "test_error"))
    ]
    if not panels:
        return None
    if along == "model.n":
        depths = sorted({s.depth for panel in panels for s in panel if s.depth is not None})
        colours = {depth: f"C{i % 10}" for i, depth in enumerate(depths)}
        colour_of = lambda summary: colours.get(summary.depth, "k")  # noqa: E731
        title_keys = differing_keys([panel[0] for panel in panels], ignore=["model.n", *coupled_keys(study, "model.n")])
    else:
        labels = list(dict.fromkeys(s.label for panel in panels for s in panel))
        colour_of = lambda summary: f"C{labels.index(summary.label) % 10}"  # noqa: E731

    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(_PANEL[0] * columns, _PANEL[1] * rows + 0.4))
    _set_margins(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        for summary in panel:
            label = summary.label + (" (partial)" if summary.partial else "")  # on the first line drawn only
            for metric, style in (("test_error", "-"), ("train_error", "--")):
                curve = mean_curve(summary.used, metric)
                if curve is not None:
                    ax.plot(curve.steps, [100 * v for v in curve.values], style, color=colour_of(summary), lw=1.4,
                            label=label)
                    label = None
        ax.set_title(_title(panel, summaries, study) if along != "model.n"
                     else describe(panel[0], title_keys) or "all configurations", fontsize=10)
        ax.set_xlabel("iterations")
        ax.set_ylabel("error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle("Training curves: dashed = training error, solid = test error", fontsize=11)
    figure.savefig(path, dpi=_DPI)
    return path


def _title(panel: Sequence[ConfigSummary], summaries: Sequence[ConfigSummary], study: Mapping[str, Any] | None) -> str:
    """``"shortcut options (activation original)"``: the panel's axis and what its configurations share."""
    axis = _panel_axis(panel)
    if axis is None:
        return describe(panel[0], differing_keys(summaries)) or "all configurations"
    keys = differing_keys(summaries, ignore=[axis, *coupled_keys(study, axis)])
    shared = [key for key in keys if len({str(s.params.get(key)) for s in panel}) == 1]
    return _AXIS_WORDS[axis] + (f" ({describe(panel[0], shared)})" if shared else "")


def plot_layer_responses(summaries: Sequence[ConfigSummary], path: Path) -> Path | None:
    """Fig. 7: std of each 3x3 layer's response, in network order (top) and sorted descending (bottom).

    One line per configuration (mean over its seeds). Returns ``path``, or None when no trial logged
    ``layer_responses.json``.
    """
    lines = [(s, r) for s in summaries if (r := mean_responses(s.used)) is not None]
    if not lines:
        return None
    figure = Figure(figsize=(7.0, 6.0))
    _set_margins(figure)
    top, bottom = figure.subplots(2, 1)
    for summary, std in lines:
        layers = range(1, len(std) + 1)
        top.plot(layers, std, lw=1.2, label=summary.label)
        bottom.plot(layers, sorted(std, reverse=True), lw=1.2, label=summary.label)
    top.set_xlabel("layer index (original)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    for ax in (top, bottom):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
    top.legend(fontsize=8, ncols=2)
    figure.suptitle("Layer responses: std of each 3x3 layer's output after BN, before addition/ReLU", fontsize=10)
    figure.savefig(path, dpi=_DPI)
    return path


def _part_order(part: str) -> tuple:
    """stem, stage1, stage2, ..., head: the order of the network."""
    if part == "stem":
        return (0, 0, part)
    if part.startswith("stage") and part.removeprefix("stage").isdigit():
        return (1, int(part.removeprefix("stage")), part)
    return (2, 0, part)


def plot_grad_norms(summaries: Sequence[ConfigSummary], path: Path) -> Path | None:
    """Per-part gradient norms (``grad_norm/<part>``) against iterations, log y: one panel per configuration.

    Each line is one part of the network (stem, stage1..K, head), the mean over the seeds in the means
    (sec. 4.1: do the plain nets' early-stage gradients vanish?). Returns ``path``, or None when no trial of
    ``summaries`` logged a gradient-norm history.
    """
    panels = []
    for summary in summaries:
        parts = sorted({key.removeprefix(GRAD_NORM_PREFIX) for t in summary.used for key in t.history
                        if key.startswith(GRAD_NORM_PREFIX)}, key=_part_order)
        curves = [(part, curve) for part in parts if (curve := mean_curve(summary.used, GRAD_NORM_PREFIX + part))]
        if curves:
            panels.append((summary, curves))
    if not panels:
        return None
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(_PANEL[0] * columns, _PANEL[1] * rows + 0.4))
    _set_margins(figure, left=0.9)
    axes = figure.subplots(rows, columns, squeeze=False, sharey=True).ravel()  # one scale: nets compare by eye
    for ax, (summary, curves) in zip(axes, panels):
        for index, (part, curve) in enumerate(curves):
            ax.plot(curve.steps, curve.values, color=f"C{index % 10}", lw=1.3, label=part)
        ax.set_yscale("log")
        ax.set_title(summary.label + (" (partial)" if summary.partial else ""), fontsize=10)
        ax.set_xlabel("iterations")
        ax.set_ylabel("gradient norm")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, ncols=2)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle("Gradient norm of each part of the network, mean over seeds (log scale)", fontsize=11)
    figure.savefig(path, dpi=_DPI)
    return path
