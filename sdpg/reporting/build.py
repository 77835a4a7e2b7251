"""sdpg-report SOURCE --out DIR: figures, tables and an index page from an experiment's MLflow runs.

SOURCE is an ablation spec, a sweep spec, an output folder with ``mlflow.db``, or ``URI#EXPERIMENT``.
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

import numpy as np

from sdpg.reporting import report

TRAIN_PANELS = [
    "train/accuracy",
    "train/opd_kl",
    "train/gate_fraction",
    "train/beta",
    "train/ref_kl",
    "train/pg_clipfrac",
    "train/grad_norm",
    "timing/step",
]


def build_report(
    source: str,
    out: str | Path,
    tags: dict[str, str] | None = None,
    reference: str | None = None,
    baseline: str | None = None,
    ema: float = 0.0,
    order: list[str] | None = None,
    threshold: float | None = None,
    log=print,
) -> Path:
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    uri, exp = report.resolve_source(source)
    log(f"[sdpg-report] loading runs of {exp!r} from {report.tracking.redact(uri)}")
    df = report.load_runs(uri, exp, tags=tags, cache_dir=out / ".cache")
    if df.empty:
        raise ValueError(f"experiment {exp!r} has no runs with metrics")
    variants = order or list(dict.fromkeys(df.variant))
    benches = report.benchmark_metrics(df)
    log(f"[sdpg-report] {df.run_id.nunique()} runs, {len(variants)} variants, benchmarks: {', '.join(benches) or 'none'}")
    sections: list[tuple[str, str]] = []

    # figures
    grid = report.paper_grid(df, out / "figures" / "curves", ema=ema, order=variants)
    sections.append(("Curves", f"![curves](figures/{grid.name})\n\n[PDF](figures/{grid.with_suffix('.pdf').name})"))
    present = [m for m in TRAIN_PANELS if m in set(df.metric)]
    if present:
        tr = report.plot_curves(df, present, out / "figures" / "training", ncols=4, ema=ema, order=variants)
        sections.append(("Training signals", f"![training](figures/{tr.name})"))

    # tables
    if benches:
        lb = report.last_best(df, benches)
        labels = {m: m.split("/")[1] for m in benches}
        v, cols, cells = report.table_matrix(lb, benches, variants, labels)
        for fmt, ext in (("markdown", "md"), ("latex", "tex"), ("csv", "csv")):
            (out / "tables" / f"last_best.{ext}").write_text(report.render_table(v, cols, cells, fmt))
        sections.append(
            (
                "Last and Best (mean ± 95% CI over seeds; best bold, second underlined)",
                report.render_table(v, cols, cells, "markdown") + "\n[LaTeX](tables/last_best.tex) · [CSV](tables/last_best.csv)",
            )
        )
        ref = reference or variants[0]
        if ref in variants and len(variants) > 1:
            d = report.delta_table(lb, benches, ref, order=variants)
            (out / "tables" / "ablation_delta.md").write_text(d)
            sections.append((f"Differences to {ref}", d))
        base = baseline or next((x for x in variants if x in ("grpo", "dapo", "dr_grpo")), variants[0])
        scores = {}
        for var in variants:
            last = lb[(lb.variant == var) & (lb.kind == "Last")]
            per = [np.asarray(last[last.metric == m].iloc[0]["per_seed"]) for m in benches if (last.metric == m).any()]
            if len(per) == len(benches) and len({len(p) for p in per}) == 1:
                scores[var] = np.stack(per, axis=1)  # [seeds, benchmarks]
        if base in scores and len(scores) > 1:
            imp = report.improvement(scores, base)
            lines = [f"| Variant | IQM (Last) | 95% CI | P(improve over {base}) | 95% CI |", "|---|---|---|---|---|"]
            for _, r in imp.iterrows():
                pi = "–" if np.isnan(r.get("p_improve", np.nan)) else f"{r['p_improve']:.2f}"
                pci = "–" if np.isnan(r.get("p_lo", np.nan)) else f"[{r['p_lo']:.2f}, {r['p_hi']:.2f}]"
                lines.append(f"| {r['variant']} | {r['iqm']:.3f} | [{r['iqm_lo']:.3f}, {r['iqm_hi']:.3f}] | {pi} | {pci} |")
            text = "\n".join(lines) + "\n\nStratified bootstrap over seeds within each benchmark (2,000 resamples).\n"
            (out / "tables" / "improvement.md").write_text(text)
            sections.append((f"Against {base}: IQM and probability of improvement", text))

    per_run, summary = report.stability(df, benches[0] if benches else None, threshold=threshold)
    per_run.to_csv(out / "tables" / "stability_runs.csv", index=False)
    cols = [c for c in summary.columns if not c.endswith("_never")]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for _, r in summary.iterrows():
        lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    stab = (
        "\n".join(lines) + "\n\nMeans over seeds (NaN: no seed reached the event). Entropy collapse: first step below 25% of "
        "the initial entropy; length collapse: below 50% of the initial response length; drawdown: largest fall of "
        "train/reward from its running maximum; late variance: variance of the first benchmark over the last quarter of "
        "evaluations. Per run: [stability_runs.csv](tables/stability_runs.csv).\n"
    )
    (out / "tables" / "stability.md").write_text(stab)
    sections.append(("Stability", stab))

    md = [f"# Report: {exp}", "", f"Source: `{source}` · {df.run_id.nunique()} runs · variants: {', '.join(variants)}", ""]
    for title, body in sections:
        md += [f"## {title}", "", body, ""]
    (out / "index.md").write_text("\n".join(md))
    (out / "index.html").write_text(_html(exp, sections))
    log(f"[sdpg-report] wrote {out / 'index.md'} and {out / 'index.html'}")
    return out / "index.md"


def _html(title: str, sections: list[tuple[str, str]]) -> str:
    body = []
    for t, b in sections:
        body.append(f"<h2>{html.escape(t)}</h2>")
        for block in b.split("\n\n"):
            if block.startswith("!["):
                src = block[block.index("(") + 1 : block.index(")")]
                body.append(f'<img src="{html.escape(src)}" style="max-width:100%">')
            else:
                body.append(f"<pre>{html.escape(block)}</pre>")
    return f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>" + "\n".join(
        body
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sdpg-report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source")
    p.add_argument("--out", required=True)
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="only runs with this MLflow tag")
    p.add_argument("--reference", help="variant the ablation deltas are taken against (default: the first)")
    p.add_argument("--baseline", help="RLVR baseline for IQM / probability of improvement (default: grpo if present)")
    p.add_argument("--ema", type=float, default=0.0, help="EMA smoothing factor in [0, 1) for curves")
    p.add_argument("--order", nargs="+", help="variant order (legend, table rows)")
    p.add_argument("--threshold", type=float, help="accuracy threshold for steps-to-threshold")
    a = p.parse_args(argv)
    try:
        tags = dict(t.split("=", 1) for t in a.tag)
        build_report(
            a.source,
            a.out,
            tags,
            a.reference,
            a.baseline,
            a.ema,
            a.order,
            a.threshold,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
