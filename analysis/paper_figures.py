"""The SDPG paper's figures from an experiment: the 2 x 3 grid (AIME24, AIME25, AMC23 mean@32 on top;
reward, entropy, response length below) and the ablation grid, with seed bands.

    python analysis/paper_figures.py ablations/paper_table1.yaml --out figures/table1
    python analysis/paper_figures.py ablations/paper_ablation.yaml --out figures/ablation --order urkl ufkl alpha0 beta0
"""

from __future__ import annotations

import argparse

from sdpg.reporting import report


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("source")
    p.add_argument("--out", required=True)
    p.add_argument("--order", nargs="+", default=["grpo", "rlsd", "sdpg_urkl", "sdpg_ufkl"])
    p.add_argument("--ema", type=float, default=0.0)
    a = p.parse_args()
    uri, exp = report.resolve_source(a.source)
    df = report.load_runs(uri, exp)
    order = [v for v in a.order if v in set(df.variant)] or None
    print(report.paper_grid(df, a.out, ema=a.ema, order=order))


if __name__ == "__main__":
    main()
