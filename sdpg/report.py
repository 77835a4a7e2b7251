"""Turning MLflow runs into tidy frames, curves with seed spread, and Last/Best numbers.

``load_runs`` reads every child run of an experiment (optionally filtered by tags) with full metric
histories into one long frame: one row per (run, metric, step), with the run's variant, method and
seed, metric names mapped back to the paper's (``mean@32``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from sdpg import tracking

# One colour per method / variant across every figure (Okabe-Ito, colour-blind safe).
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def load_runs(uri: str, experiment: str, metrics: Iterable[str] | None = None, tags: dict[str, str] | None = None):
    """Long frame [run_id, run_name, variant, method, seed, metric, step, value] of every child run."""
    import pandas as pd

    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking.redact(uri)}")
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()) or ""
    runs = tracking.retry(c.search_runs, [exp.experiment_id], filter_string=flt, max_results=5000)
    rows = []
    for r in runs:
        if "sdpg.run_hash" not in r.data.tags:
            continue  # parent runs
        keys = [tracking.to_mlflow_key(m) for m in metrics] if metrics else list(r.data.metrics)
        for key in keys:
            for m in tracking.retry(c.get_metric_history, r.info.run_id, key):
                rows.append((r.info.run_id, r.info.run_name, r.data.tags.get("variant", r.info.run_name),
                             r.data.tags.get("method", ""), int(r.data.tags.get("seed", 0)),
                             tracking.from_mlflow_key(key), int(m.step), float(m.value)))
    return pd.DataFrame(rows, columns=["run_id", "run_name", "variant", "method", "seed", "metric", "step", "value"])


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over seeds (rows of ``values``)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), float(v.mean())
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def seed_curves(df, metric: str, ema: float = 0.0):
    """Per variant: steps, mean over seeds, and the 95% bootstrap band, from the long frame."""
    out = {}
    sub = df[df.metric == metric]
    for variant, g in sub.groupby("variant", sort=False):
        table = g.pivot_table(index="step", columns="seed", values="value").sort_index()  # [steps, seeds]
        if ema > 0:
            table = table.ewm(alpha=1 - ema).mean()
        table = table.dropna()
        vals = table.to_numpy()
        lo_hi = np.array([bootstrap_ci(row) for row in vals]) if len(vals) else np.zeros((0, 2))
        out[variant] = {"step": table.index.to_numpy(), "mean": vals.mean(axis=1), "lo": lo_hi[:, 0] if len(vals) else [],
                        "hi": lo_hi[:, 1] if len(vals) else [], "per_seed": vals, "seeds": list(table.columns)}
    return out


def steps_to_threshold(steps: np.ndarray, values: np.ndarray, threshold: float) -> float:
    """First step at which ``values`` reaches ``threshold``; NaN if never."""
    hit = np.nonzero(np.asarray(values) >= threshold)[0]
    return float(steps[hit[0]]) if len(hit) else float("nan")


def plot_curves(df, metrics: list[str], out: str | Path, titles: dict[str, str] | None = None, ncols: int = 3,
                ema: float = 0.0, order: list[str] | None = None) -> Path:
    """A grid of metric-vs-step panels, one line per variant (mean over seeds) with its 95% band.
    Writes PNG and PDF; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = order or list(dict.fromkeys(df.variant))
    colours = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}
    nrows = int(np.ceil(len(metrics) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        curves = seed_curves(df, metric, ema)
        for v in variants:
            if v not in curves or not np.any(curves[v]["per_seed"]):
                continue  # absent, or identically 0: a term this method does not compute
            c = curves[v]
            n = len(c["seeds"])
            ax.plot(c["step"], c["mean"], color=colours[v], lw=1.6, label=f"{v} (n={n})")
            ax.fill_between(c["step"], c["lo"], c["hi"], color=colours[v], alpha=0.18, lw=0)
        ax.set_title((titles or {}).get(metric, metric), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08 if nrows == 1 else 0.05, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out.with_suffix(".png"), dpi=160)
    fig.savefig(out.with_suffix(".pdf"))
    plt.close(fig)
    return out.with_suffix(".png")
