"""Tables: the paper's layout (one row per variant, Last and Best per benchmark) as Markdown, LaTeX (booktabs)
or CSV, the best cell bold and the second underlined; differences to a reference variant."""

from __future__ import annotations

import math
from pathlib import Path

from sdpg.reporting.stats import MIN_SEEDS


def ranks(values: list[float], higher_is_better: bool = True) -> list[int]:
    """Dense rank per value (1 = best); ties share a rank, so two equal best values are both bold and
    the next distinct value is underlined."""
    distinct = sorted({round(v, 12) for v in values if not math.isnan(v)}, reverse=higher_is_better)
    return [distinct.index(round(v, 12)) + 1 if not math.isnan(v) else 0 for v in values]


def table_matrix(lb, metrics: list[str], order: list[str] | None = None, labels: dict[str, str] | None = None):
    """(row labels, column labels, cells) with cells[i][j] = (mean, lo, hi, n): the paper's layout,
    one row per variant, Last and Best per benchmark."""
    variants = order or list(dict.fromkeys(lb.variant))
    cols = [(m, k) for m in metrics for k in ("Last", "Best")]
    cells = []
    for v in variants:
        row = []
        for m, k in cols:
            hit = lb[(lb.variant == v) & (lb.metric == m) & (lb.kind == k)]
            row.append(tuple(hit.iloc[0][["mean", "lo", "hi", "n"]]) if len(hit) else (float("nan"),) * 3 + (0,))
        cells.append(row)
    col_labels = [((labels or {}).get(m, m), k) for m, k in cols]
    return variants, col_labels, cells


def ranked(column) -> bool:
    """Whether a table column's cells ``(mean, lo, hi, n)`` may be marked best / second: every variant with a
    value has at least MIN_SEEDS seeds (the paper's own numbers, n unknown, count as given)."""
    return all(n is None or n >= MIN_SEEDS for mean, _lo, _hi, n in column if not math.isnan(mean))


def render_table(
    variants,
    col_labels,
    cells,
    fmt: str = "markdown",
    digits: int = 3,
    higher_is_better: bool = True,
    seeds: list[str] | None = None,
) -> str:
    """Best cell per column bold, second underlined; mean ± half-width of the 95% CI when n >= MIN_SEEDS.
    A column where a variant has fewer than MIN_SEEDS seeds gets no marks: one seed cannot order variants
    (``ranked``). ``seeds`` (one entry per variant) adds a column stating each row's sample size."""
    marks = [[0] * len(col_labels) for _ in variants]
    for j in range(len(col_labels)):
        if not ranked([cells[i][j] for i in range(len(variants))]):
            continue
        rk = ranks([cells[i][j][0] for i in range(len(variants))], higher_is_better)
        for i in range(len(variants)):
            marks[i][j] = rk[i]

    def cell(i, j):
        mean, lo, hi, n = cells[i][j]
        if math.isnan(mean):
            return "–"
        s = f"{mean:.{digits}f}"
        if n and n >= MIN_SEEDS and not math.isnan(lo):
            pm = (hi - lo) / 2
            s += f" ± {pm:.{digits}f}" if fmt != "latex" else f" $\\pm$ {pm:.{digits}f}"
        if fmt == "csv":
            return s
        if marks[i][j] == 1:
            return f"**{s}**" if fmt == "markdown" else f"\\textbf{{{s}}}"
        if marks[i][j] == 2:
            return f"<u>{s}</u>" if fmt == "markdown" else f"\\underline{{{s}}}"
        return s

    if fmt == "csv":
        head = "variant," + ("seeds," if seeds else "") + ",".join(f"{b} {k}" for b, k in col_labels)
        if seeds:
            head += "," + ",".join(f"{b} {k} {e}" for b, k in col_labels for e in ("ci_lo", "ci_hi"))
        lines = [head]
        for i, v in enumerate(variants):
            row = v + ("," + seeds[i] if seeds else "") + "," + ",".join(f"{cells[i][j][0]:.6f}" for j in range(len(col_labels)))
            if seeds:
                row += "," + ",".join(
                    "" if math.isnan(x) else f"{x:.6f}" for j in range(len(col_labels)) for x in cells[i][j][1:3]
                )
            lines.append(row)
        return "\n".join(lines) + "\n"
    if fmt == "markdown":
        extra = ["Seeds"] if seeds else []
        head = "| " + " | ".join(["Method", *extra] + [f"{b} {k}" for b, k in col_labels]) + " |"
        lines = [head, "|---" * (len(col_labels) + 1 + len(extra)) + "|"]
        for i, v in enumerate(variants):
            lines.append(
                f"| {v} | " + (f"{seeds[i]} | " if seeds else "") + " | ".join(cell(i, j) for j in range(len(col_labels))) + " |"
            )
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        benches = list(dict.fromkeys(b for b, _ in col_labels))
        lines = [
            "\\begin{tabular}{l" + "cc" * len(benches) + "}",
            "\\toprule",
            "Method & " + " & ".join(f"\\multicolumn{{2}}{{c}}{{{b}}}" for b in benches) + " \\\\",
            "".join(f"\\cmidrule(lr){{{2 + 2 * k}-{3 + 2 * k}}}" for k in range(len(benches))),
            " & " + " & ".join("Last & Best" for _ in benches) + " \\\\",
            "\\midrule",
        ]
        for i, v in enumerate(variants):
            lines.append(v.replace("_", "\\_") + " & " + " & ".join(cell(i, j) for j in range(len(col_labels))) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown table format {fmt!r}")


def delta_table(
    lb, metrics: list[str], reference: str, digits: int = 3, order: list[str] | None = None, labels: dict[str, str] | None = None
) -> str:
    """Markdown table of each variant's Last / Best minus the reference variant's, per benchmark."""
    variants = order or [v for v in dict.fromkeys(lb.variant)]
    if reference not in variants:
        raise ValueError(f"reference variant {reference!r} not among {variants}")
    head = "| Variant | " + " | ".join(f"{(labels or {}).get(m, m)} {k}" for m in metrics for k in ("Last", "Best")) + " |"
    lines = [head, "|---" * (2 * len(metrics) + 1) + "|"]

    def get(v, m, k):
        hit = lb[(lb.variant == v) & (lb.metric == m) & (lb.kind == k)]
        return float(hit.iloc[0]["mean"]) if len(hit) else float("nan")

    for v in variants:
        cells = []
        for m in metrics:
            for k in ("Last", "Best"):
                val = get(v, m, k)
                cells.append(f"{val:.{digits}f}" if v == reference else f"{val - get(reference, m, k):+.{digits}f}")
        lines.append(f"| {v}{' (reference)' if v == reference else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_from_csv(path: str | Path) -> tuple[list[str], list[tuple[str, ...]], list[list[tuple]]]:
    """A table given as CSV (``method, <bench> Last, <bench> Best, ...``) in the matrix form of
    ``table_matrix``, e.g. the paper's Table 1 (analysis/paper_table1.csv)."""
    import csv

    with open(path) as f:
        rows = list(csv.reader(f))
    head, body = rows[0], rows[1:]
    col_labels = [tuple(h.rsplit(" ", 1)) for h in head[1:]]
    variants = [r[0] for r in body]
    cells = [[(float(x), float("nan"), float("nan"), None) for x in r[1:]] for r in body]  # n: not stated
    return variants, col_labels, cells
