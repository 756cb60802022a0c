"""Report figures (matplotlib, Agg canvas, PNG + PDF); no pyplot state, nothing left open.

- :func:`metric_plot`: one metric against generation, a line per policy (the mean over
  seeds) with a band of mean ± sample std where at least 2 seeds were measured (the x label
  says so; with one seed there is no band), the human reference dashed.
- :func:`composition_plot`: a population's pool per generation, stacked by writer.
- :func:`histogram_plot`: Shumailov et al. (2023) Fig. 1 style histograms of the
  generation-0 perplexity of each generation's corpus, log x axis.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lmcollapse import files


def _figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.pdf``; returns both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"]
    for path, kwargs in zip(paths, ({"dpi": 150}, {"metadata": {"CreationDate": None}}),
                            strict=True):
        tmp = path.with_name(f".{path.name}.tmp")  # a killed report leaves no half figure
        fig.savefig(tmp, format=path.suffix[1:], **kwargs)
        os.replace(tmp, path)
        os.chmod(path, 0o666 & ~files.UMASK)
    fig.clear()
    return paths


def _lines(ax: Any, series: dict[str, dict[Any, Sequence[float]]],
           positions: dict[Any, float] | None = None) -> set[int]:
    """Draw one line per label (band: mean ± std where n >= 2); returns the seed counts."""
    counts: set[int] = set()
    for i, (label, points) in enumerate(series.items()):
        xs = sorted(points, key=lambda x: positions[x] if positions else x)
        if not xs:
            continue
        pos = [positions[x] if positions else x for x in xs]
        mean = np.array([points[x][0] for x in xs], dtype=float)
        std = np.array([points[x][1] for x in xs], dtype=float)
        n = np.array([points[x][2] for x in xs])
        spread = (n >= 2) & np.isfinite(std)
        color = f"C{i % 10}"
        ax.plot(pos, mean, marker="o", ms=4, color=color, label=label)
        if spread.any():
            std = np.where(spread, std, 0.0)
            ax.fill_between(pos, mean - std, mean + std, color=color, alpha=0.18, lw=0)
            counts.update(int(k) for k in n[spread])
    return counts


def _spread_text(counts: set[int]) -> str:
    if not counts:
        return "1 seed: no spread, no band"
    lo, hi = min(counts), max(counts)
    seeds = f"{lo} seeds" if lo == hi else f"{lo}–{hi} seeds"
    return f"line: mean, band: mean ± sample std over {seeds}"


def _references(ax: Any, references: dict[str, float]) -> None:
    for j, (label, value) in enumerate(references.items()):
        if value is not None and math.isfinite(value):
            ax.axhline(value, color="0.2" if j == 0 else f"C{(j + 5) % 10}", ls="--", lw=1.2,
                       label=label)


def _finish(ax: Any, fig: Figure, xlabel: str, ylabel: str, title: str, stem: Path,
            **legend: Any) -> list[Path]:
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        # a light box: a line through the legend (a reference at 0) must not cross its text
        ax.legend(fontsize="small", frameon=True, framealpha=0.85, edgecolor="none",
                  **legend)
    return _save(fig, stem)


def metric_plot(series: dict[str, dict[int, Sequence[float]]], references: dict[str, float],
                title: str, ylabel: str, stem: Path) -> list[Path]:
    """One metric against generation.

    Args:
        series: ``{line label: {generation: (mean, std, n)}}``; the band is drawn where
            n >= 2 and std is finite (zero width elsewhere), not at all when that is nowhere.
        references: ``{label: value}`` drawn as dashed horizontal lines (NaN skipped).
        title: figure title (display name and direction arrow).
        ylabel: y axis label.
        stem: output path without suffix.
    """
    fig, ax = _figure()
    counts = _lines(ax, series)
    _references(ax, references)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(ax, fig, f"generation ({_spread_text(counts)})", ylabel, title, stem)


def sweep_plot(series: dict[str, dict[Any, Sequence[float]]], references: dict[str, float],
               title: str, axis: str, ylabel: str, stem: Path) -> list[Path]:
    """One metric at the final generation against the values of one grid axis.

    Args:
        series: ``{line label (policy and the other axes): {axis value: (mean, std, n)}}``;
            numbers are placed at their value, anything else (a rule name) in given order.
        references: dashed horizontal lines (the human reference).
        axis: the swept config key (x label).
    """
    fig, ax = _figure()
    values = list(dict.fromkeys(v for points in series.values() for v in points))
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    positions = None if numeric else {v: float(i) for i, v in enumerate(values)}
    counts = _lines(ax, series, positions)
    _references(ax, references)
    if positions:
        ax.set_xticks(list(positions.values()), [str(v) for v in positions])
    return _finish(ax, fig, f"{axis} ({_spread_text(counts)})", ylabel, title, stem)


def histogram_plot(scores: list[tuple[str, np.ndarray]], title: str, stem: Path) -> list[Path]:
    """Step histograms (fraction of samples per log-spaced bin) of per-sample perplexity.

    Args:
        scores: ``[(label, values)]``, generations in order; a label ``"human"`` is drawn
            dashed in black, generations from dark to light.
        title: figure title.
        stem: output path without suffix.
    """
    fig, ax = _figure()
    clean = [(lbl, v[np.isfinite(v) & (v > 0)]) for lbl, v in scores]
    clean = [(lbl, v) for lbl, v in clean if v.size]
    if clean:
        allv = np.concatenate([v for _, v in clean])
        lo, hi = allv.min(), allv.max()
        bins = np.geomspace(lo, hi * 1.0001 if hi > lo else lo * 2, 50)
        gens = [lbl for lbl, _ in clean if lbl != "human"]
        for lbl, v in clean:
            human = lbl == "human"
            k = gens.index(lbl) if not human else 0
            color = "black" if human else colormaps["viridis"](0.85 * k / max(len(gens) - 1, 1))
            ax.hist(v, bins=bins, weights=np.full(v.size, 1 / v.size), histtype="step",
                    lw=1.6, ls="--" if human else "-", color=color,
                    label=f"{lbl} (n={v.size}, median {np.median(v):.3g})")
    ax.set_xscale("log")
    ax.set(xlabel="perplexity under the generation-0 model", ylabel="fraction of samples",
           title=title)
    ax.grid(alpha=0.3)
    if clean:
        ax.legend(fontsize="small", frameon=False)
    return _save(fig, stem)


def composition_plot(shares: dict[int, dict[str, float]], title: str, stem: Path) -> list[Path]:
    """The pool each generation crawled, as stacked bars of each writer's share (human
    text grey, then one colour per participant).

    Args:
        shares: ``{generation: {writer: share}}`` (the shares of one generation sum to 1).
        title: figure title.
        stem: output path without suffix.
    """
    fig, ax = _figure()
    gens = sorted(shares)
    writers = list(dict.fromkeys(w for k in gens for w in shares[k]))
    bottom = np.zeros(len(gens))
    for i, w in enumerate(writers):
        height = np.array([shares[k].get(w, 0.0) for k in gens])
        ax.bar(gens, height, bottom=bottom, width=0.7, label=w,
               color="0.75" if w == "human" else f"C{i % 10}")
        bottom += height
    ax.set_ylim(0, 1.18)  # room above the bars for the legend
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(ax, fig, "generation (mean over seeds)", "share of the crawled pool", title,
                   stem, loc="upper center", ncols=len(writers))
