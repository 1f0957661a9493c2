"""Figures in the style of He et al. 2015: training curves (Fig. 6) and layer responses (Fig. 7), as PNG.

Drawn through matplotlib's object API (``Figure`` rendered by the Agg canvas): no display and no
pyplot state, so reports can be made on a headless machine and from several threads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ablate.report.aggregate import ConfigSummary, describe, differing_keys, mean_curve, mean_responses, partition

__all__ = ["plot_curves", "plot_layer_responses"]

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


def plot_curves(summaries: Sequence[ConfigSummary], path: Path, *, coupled: Iterable[str] = ()) -> Path | None:
    """Fig. 6: error (%) against iterations; training error dashed, test error solid; one colour per depth.

    One panel per family of configurations that differ only in depth and the ``coupled`` keys that
    follow it (so plain and residual nets, or shortcut options, sit in separate panels); each line
    is the mean over the seeds in the means.
    Returns ``path``, or None when no trial logged a training or test error history.
    """
    families = [
        family
        for family in partition(summaries, "model.n", coupled=coupled)
        if any(mean_curve(s.used, m) for s in family for m in ("train_error", "test_error"))
    ]
    if not families:
        return None
    depths = sorted({s.depth for family in families for s in family if s.depth is not None})
    colours = {depth: f"C{i % 10}" for i, depth in enumerate(depths)}
    title_keys = differing_keys([family[0] for family in families], ignore=["model.n", *coupled])

    columns = min(len(families), 3)
    rows = math.ceil(len(families) / columns)
    figure = Figure(figsize=(_PANEL[0] * columns, _PANEL[1] * rows + 0.4))
    _set_margins(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, family in zip(axes, families):
        for summary in family:
            colour = colours.get(summary.depth, "k")
            label = summary.label + (" (partial)" if summary.partial else "")  # on the first line drawn only
            for metric, style in (("test_error", "-"), ("train_error", "--")):
                curve = mean_curve(summary.used, metric)
                if curve is not None:
                    ax.plot(curve.steps, [100 * v for v in curve.values], style, color=colour, lw=1.4, label=label)
                    label = None
        ax.set_title(describe(family[0], title_keys) or "all configurations", fontsize=10)
        ax.set_xlabel("iterations")
        ax.set_ylabel("error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(families) :]:
        ax.set_visible(False)
    figure.suptitle("Training curves: dashed = training error, solid = test error", fontsize=11)
    figure.savefig(path, dpi=_DPI)
    return path


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
