"""From MLflow runs to paper-style figures and tables: the names analysis scripts and notebooks import.

The work is split by responsibility; this module gathers their public names under one roof
(``from sdpg.reporting import report; report.last_best(...)``):

* ``sdpg.reporting.runs``: ``load_runs`` (every child run's metric histories as one long frame, cached per
  finished run), ``run_table``, ``resolve`` / ``Source`` (where an experiment's runs live), ``benchmark_metrics``.
* ``sdpg.reporting.stats``: ``bootstrap_ci``, ``seed_curves``, ``last_best``, ``run_scores``, ``stability``,
  ``improvement`` (IQM, its difference and the probability of improvement, stratified bootstrap over seeds).
* ``sdpg.reporting.tables``: ``table_matrix``, ``render_table`` (Markdown, LaTeX, CSV; best bold, second
  underlined), ``delta_table``, ``table_from_csv``.
* ``sdpg.reporting.figures``: ``plot_curves``, ``paper_grid``, the colours and axis labels.
* ``sdpg.reporting.build``: the report itself, one function per section.
"""

from __future__ import annotations

from sdpg.orchestration import tracking
from sdpg.orchestration.specs import COMPARE
from sdpg.reporting.figures import (
    INERT_AT_ZERO_BETA,
    PALETTE,
    Y_LABELS,
    colours_for,
    paper_grid,
    plot_curves,
    styles_for,
    y_label,
)
from sdpg.reporting.runs import (
    COLUMNS,
    Source,
    benchmark_metrics,
    group_label,
    load_runs,
    resolve,
    resolve_source,
    run_table,
    store_exists,
)
from sdpg.reporting.stats import (
    MIN_SEEDS,
    _prob_improvement,
    bootstrap_ci,
    improvement,
    iqm,
    last_best,
    run_scores,
    seed_curves,
    stability,
    stability_summary,
    steps_to_threshold,
)
from sdpg.reporting.tables import delta_table, ranked, ranks, render_table, table_from_csv, table_matrix

__all__ = [
    "COLUMNS",
    "COMPARE",
    "INERT_AT_ZERO_BETA",
    "MIN_SEEDS",
    "PALETTE",
    "Y_LABELS",
    "Source",
    "iqm",
    "_prob_improvement",
    "benchmark_metrics",
    "bootstrap_ci",
    "colours_for",
    "delta_table",
    "group_label",
    "improvement",
    "last_best",
    "load_runs",
    "paper_grid",
    "plot_curves",
    "ranked",
    "ranks",
    "render_table",
    "resolve",
    "resolve_source",
    "run_scores",
    "run_table",
    "seed_curves",
    "stability",
    "stability_summary",
    "steps_to_threshold",
    "store_exists",
    "styles_for",
    "table_from_csv",
    "table_matrix",
    "tracking",
    "y_label",
]
