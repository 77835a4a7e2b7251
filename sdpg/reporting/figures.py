"""Figures: metric-vs-step panels, one colour per variant across every figure, mean over seeds with a 95%
bootstrap band, optional EMA; the paper's grid of benchmark and training curves. PNG + PDF."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdpg import fsio
from sdpg.reporting.runs import benchmark_metrics
from sdpg.reporting.stats import MIN_SEEDS, seed_curves

# One colour per variant across every figure (Okabe-Ito, colour-blind safe).
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


# More than eight series (sweeps): 20 distinct colours (tab20, dark shade of each hue first), then the
# same colours again with another line style, so no two series look alike.
_MANY = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#c7c7c7",
    "#dbdb8d",
    "#9edae5",
]
_STYLES = ["-", (0, (5, 2)), (0, (1, 1.5)), (0, (5, 2, 1, 2))]


def colours_for(variants: list[str]) -> dict[str, str]:
    """One colour per variant: Okabe-Ito (colour-blind safe) up to eight variants, tab20 beyond."""
    pal = PALETTE if len(variants) <= len(PALETTE) else _MANY
    return {v: pal[i % len(pal)] for i, v in enumerate(variants)}


def styles_for(variants: list[str]) -> dict[str, object]:
    """Line style per variant: solid until the colours run out, then dashed, dotted, dash-dotted."""
    pal = PALETTE if len(variants) <= len(PALETTE) else _MANY
    return {v: _STYLES[(i // len(pal)) % len(_STYLES)] for i, v in enumerate(variants)}


def _who(names: list[str], variants: list[str]) -> str:
    """Short list of variants for a panel note: every variant, or their first words (a sweep trial's number)."""
    if len(names) == len(variants) and len(names) > 1:
        return "every variant"
    short = [n.split(" ")[0] for n in names]
    return ", ".join(short) if len(short) <= 4 else f"{', '.join(short[:4])} and {len(short) - 4} more"


# The y-axis of each metric: what is measured and its unit.
Y_LABELS = {
    "train/reward": "reward",
    "train/accuracy": "fraction correct",
    "train/entropy": "nats / token",
    "train/response_length": "tokens",
    "train/opd_kl": "nats / token",
    "train/gate_fraction": "fraction of tokens",
    "train/beta": "β",
    "train/ref_kl": "nats / token",
    "train/pg_clipfrac": "fraction of tokens",
    "train/grad_norm": "L2 norm",
}
INERT_AT_ZERO_BETA = ("train/gate_fraction",)
"""Metrics that describe the distillation term: with β = 0 throughout a run they are computed but act on nothing."""


def y_label(metric: str) -> str:
    """The y-axis label of ``metric``: ``eval/<bench>/mean@k`` is an accuracy, ``timing/*`` seconds."""
    if metric.startswith("eval/"):
        stat = metric.rsplit("/", 1)[-1]
        return f"accuracy ({stat})" if stat.startswith(("mean@", "pass@", "maj@")) else stat
    if metric.startswith("timing/"):
        return "s"
    return Y_LABELS.get(metric, "")


def _beta_zero(df, variants: list[str]) -> set[str]:
    """Variants whose logged ``train/beta`` is 0 at every step of every seed (no distillation term)."""
    rows = df[df.metric == "train/beta"]
    return {v for v in variants if len(rows[rows.variant == v]) and not np.any(rows[rows.variant == v].value.to_numpy())}


@dataclass(frozen=True)
class _Look:
    """How each variant is drawn, the same in every panel of a figure."""

    variants: list[str]
    colours: dict[str, str]
    styles: dict[str, object]
    labels: dict[str, str]
    dashed: set[str]


def _draw_series(ax, df, metric: str, curves: dict, look: _Look, no_beta: set[str]) -> list[str]:
    """One panel's lines (mean over seeds, band where a variant has at least MIN_SEEDS seeds); returns the
    panel's note lines: series identically 0, variants that did not log the metric, inert gates not drawn."""
    zero, missing, inert = [], [], []
    for v in look.variants:
        if metric in INERT_AT_ZERO_BETA and v in no_beta and v in curves:
            inert.append(v)  # computed, but gates a term with weight 0: a curve would read as a finding
            continue
        if v not in curves or not len(curves[v]["step"]):
            if v in set(df.variant):
                missing.append(v)
            continue
        c = curves[v]
        ls = (0, (4, 2)) if v in look.dashed else look.styles[v]
        n = len(c["seeds"])
        label = f"{look.labels.get(v, v)} (n={n})"
        marker = "o" if len(c["step"]) < 3 else None  # a run stopped after a step or two is a point, not nothing
        if not np.any(c["per_seed"]):
            ax.plot(c["step"], c["mean"], color=look.colours[v], lw=0.9, ls=(0, (1, 1.5)), label=label, marker=marker, ms=2)
            zero.append(v)
            continue
        ax.plot(c["step"], c["mean"], color=look.colours[v], lw=1.3, ls=ls, label=label, marker=marker, ms=2.5)
        if n >= MIN_SEEDS:
            ax.fill_between(c["step"], c["lo"], c["hi"], color=look.colours[v], alpha=0.2, lw=0)
    lines = []
    if zero:
        lines.append(f"\u2261 0 (dotted): {_who(zero, look.variants)}")
    if missing:
        lines.append(f"not logged: {_who(missing, look.variants)}" if metric in set(df.metric) else "not logged by any run")
    if inert:
        lines.append(f"inert at \u03b2 = 0, not drawn: {_who(inert, look.variants)}")
    return lines


def _note(ax, lines: list[str]) -> None:
    """The panel's note in its top-left corner, outside the layout (a long note must not squeeze the panels)."""
    note = ax.text(
        0.02,
        0.97,
        "\n".join(lines),
        ha="left",
        va="top",
        transform=ax.transAxes,
        fontsize=5.8,
        color="0.35",
        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.85", "alpha": 0.85},
        wrap=True,
    )
    note.set_in_layout(False)


def _legend(fig, axes, legend_cols: int) -> None:
    """One legend below the panels, each series once."""
    handles, labs = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labs:
                handles.append(h)
                labs.append(lab)
    if handles:
        fig.legend(handles, labs, loc="outside lower center", ncol=legend_cols, fontsize=6.5, frameon=False)


def plot_curves(
    df,
    metrics: Sequence[str | None],
    out: str | Path,
    titles: dict[str, str] | None = None,
    ncols: int = 3,
    ema: float = 0.0,
    order: list[str] | None = None,
    panel_w: float = 2.3,
    panel_h: float = 1.9,
    keep_figure: bool = False,
    labels: dict[str, str] | None = None,
    dashed: Iterable[str] = (),
    notes: dict[str, list[str]] | None = None,
):
    """Metric-vs-step panels, one line per variant (mean over seeds; shaded: 95% bootstrap band over seeds,
    only where a variant has at least ``MIN_SEEDS`` seeds). PNG + PDF.

    Nothing vanishes silently: a variant whose values are identically 0 for a metric (e.g. GRPO's
    ``train/opd_kl``, a term it does not compute) is drawn as a thin dotted line at 0 and named in a note
    inside the panel; a variant that did not log the metric is named as such. ``None`` in ``metrics``
    leaves a blank cell. ``labels`` maps a variant to its legend text, ``dashed`` variants are drawn
    dashed (e.g. pruned sweep trials). If ``notes`` is given, the panel notes are added to it
    (metric -> lines) for the page's caption. The legend sits below the panels, never over them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = order or list(dict.fromkeys(df.variant))
    look = _Look(variants, colours_for(variants), styles_for(variants), labels or {}, set(dashed))
    ncols = max(1, min(ncols, len(metrics)))
    nrows = int(np.ceil(len(metrics) / ncols))
    # legend below the panels, in as many columns as fit; the figure is widened if one entry is wider
    legend_text = [look.labels.get(v, v) for v in variants]
    entry_w = (max((len(t) for t in legend_text), default=10) + 7) * 3.3 / 72 + 0.35  # inches at 6.5 pt
    width = max(panel_w * ncols, entry_w + 0.2)
    legend_cols = max(1, min(len(variants), int(width / entry_w)))
    legend_h = 0.15 * int(np.ceil(len(variants) / legend_cols)) + 0.15
    plt.rcParams.update({"font.size": 7})
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, panel_h * nrows + legend_h), squeeze=False, layout="constrained")
    no_beta = _beta_zero(df, variants)
    for ax, metric in zip(axes.flat, metrics):
        if metric is None:  # a blank cell of the grid
            ax.axis("off")
            continue
        lines = _draw_series(ax, df, metric, seed_curves(df, metric, ema), look, no_beta)
        if lines:
            _note(ax, lines)
            if notes is not None:
                notes.setdefault(metric, []).extend(lines)
        ax.set_title((titles or {}).get(metric, metric), fontsize=7.5)
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel(y_label(metric), fontsize=6.5)
        ax.tick_params(labelsize=6.5)
        ax.grid(alpha=0.3, lw=0.5)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    _legend(fig, axes, legend_cols)
    out = Path(out)
    fsio.ensure_dir(out.parent)
    fsio.save_figure(fig, out)
    if keep_figure:
        return out.with_suffix(".png"), fig
    plt.close(fig)
    return out.with_suffix(".png")


def paper_grid(
    df,
    out: str | Path,
    ema: float = 0.0,
    order: list[str] | None = None,
    keep_figure: bool = False,
    benchmarks: list[str] | None = None,
    **kwargs,
):
    """The paper's figure: each benchmark's mean@k, then reward, entropy, response length. With three or
    more benchmarks the benchmarks fill the top row and the training curves the bottom row, as in the
    paper; with one or two benchmarks everything is one row, so no panel is left empty. ``benchmarks``:
    the benchmark names in panel order (default: as they appear)."""
    benches = benchmark_metrics(df, benchmarks)
    bottom = ["train/reward", "train/entropy", "train/response_length"]
    metrics: list[str | None]
    if len(benches) >= 3:
        ncols = len(benches)
        metrics = [*benches, *bottom, *([None] * (ncols - 3))]
    else:
        ncols = len(benches) + 3
        metrics = [*benches, *bottom]
    titles = {m: f"{m.split('/')[1]} {m.split('/')[2]}" for m in benches}
    titles.update({"train/reward": "reward", "train/entropy": "entropy", "train/response_length": "response length"})
    return plot_curves(df, metrics, out, titles, ncols=ncols, ema=ema, order=order, keep_figure=keep_figure, **kwargs)
