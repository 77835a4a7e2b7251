"""Recompute a report's comparison table from its per-run scores (``tables/scores_runs*.csv``, written by
``sdpg-report``): IQM over seeds, the IQM difference and the probability of improvement with 95% stratified
bootstrap intervals, as the report computes them.

    python analysis/recompute.py docs/decompose_report/tables/scores_runs_task-chain.csv --compare previous
    python analysis/recompute.py REPORT/tables/scores_runs.csv --baseline urkl_loss --kind Last \\
        --metric eval/in_distribution/mean@4
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from sdpg.reporting.report import improvement

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scores", help="a report's tables/scores_runs*.csv")
    p.add_argument("--kind", choices=["Last", "Best", "AUC"], default="Last")
    p.add_argument("--metric", action="append", help="benchmark metric(s); default: every one in the file")
    p.add_argument("--baseline", help="variant to compare with (default: the first)")
    p.add_argument("--compare", choices=["baseline", "previous"], default="baseline")
    p.add_argument("--n-boot", type=int, default=2000)
    a = p.parse_args(argv)
    df = pd.read_csv(a.scores)
    cols = [c for c in df.columns if c.endswith(f" {a.kind}")]
    if a.metric:
        cols = [f"{m} {a.kind}" for m in a.metric]
        missing = [c for c in cols if c not in df.columns]
        if missing:
            print(f"{a.scores}: no column {missing[0]!r} (columns: {', '.join(df.columns)})", file=sys.stderr)
            return 2
    order = list(dict.fromkeys(df.variant))
    scores = {v: df[df.variant == v].sort_values("seed")[cols].to_numpy(dtype=float) for v in order}  # [seeds, benchmarks]
    base = a.baseline or order[0]
    table = improvement(scores, baseline=base, n_boot=a.n_boot, compare=a.compare)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(f"{a.kind} over {', '.join(cols)}; {a.compare}" + (f" {base}" if a.compare == "baseline" else ""))
        print(table.round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    np.set_printoptions(suppress=True)
    sys.exit(main())
