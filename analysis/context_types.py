"""The context-type study's pre-registered family (docs/findings.md, "Context types ... plan fixed before the
runs" and its amendment), recomputed from the report's per-run scores:

    python analysis/context_types.py docs/context_types_report/tables/scores_runs.csv

Primary metric: Last of ``eval/in_distribution/mean@4`` (all 200 problems). The family: each of the 6
distilling variants against ``beta0`` and each of the 5 with a context against ``none``, Holm-corrected at a
family-wise 5%; then, outside the family and uncorrected, the comparisons the plan names as evidence against
"the information in the context teaches". Only complete seed blocks (a seed with all 7 variants) are used, as
the amendment fixes; the count is printed.
"""

from __future__ import annotations

import argparse
import sys

VARIANTS = ["beta0", "none", "answer", "solution", "answer_solution", "corrupted", "shuffled"]
CONTEXTS = ["answer", "solution", "answer_solution", "corrupted", "shuffled"]
FAMILY = [(v, "beta0") for v in VARIANTS[1:]] + [(v, "none") for v in CONTEXTS]
AGAINST = [("solution", "corrupted"), ("solution", "shuffled"), ("solution", "answer"), ("answer_solution", "answer")]


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from sdpg.reporting.stats import family, iqm

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scores", help="the study report's tables/scores_runs.csv")
    p.add_argument("--metric", default="eval/in_distribution/mean@4")
    p.add_argument("--kind", choices=["Last", "AUC", "Best"], default="Last")
    p.add_argument("--n-boot", type=int, default=20000)
    p.add_argument("--csv", help="also write the family table here")
    a = p.parse_args(argv)
    df = pd.read_csv(a.scores)
    col = f"{a.metric} {a.kind}"
    if col not in df.columns:
        print(f"{a.scores}: no column {col!r}", file=sys.stderr)
        return 2
    per_seed = df.pivot_table(index="seed", columns="variant", values=col)
    missing = [v for v in VARIANTS if v not in per_seed.columns]
    if missing:
        print(f"{a.scores}: no runs of {', '.join(missing)}", file=sys.stderr)
        return 2
    complete = per_seed[VARIANTS].dropna()
    scores = {v: complete[[v]].to_numpy(dtype=float) for v in VARIANTS}  # [seeds, 1 benchmark]
    seeds = list(complete.index)
    print(f"{a.kind} of {a.metric}: {len(seeds)} complete seed blocks ({seeds[0]}-{seeds[-1]}) of {len(per_seed)}\n")
    print("| variant | mean ± SD | IQM |")
    print("|---|---|---|")
    for v in VARIANTS:
        x = complete[v]
        print(f"| `{v}` | {x.mean():.3f} ± {x.std(ddof=1):.3f} | {iqm(scores[v]):.3f} |")
    fam = family(scores, FAMILY, n_boot=a.n_boot)
    print(f"\nThe family ({len(FAMILY)} comparisons, Holm at family-wise 5%; ΔIQM with its 95% interval and the interval")
    print("at the level of its own Holm step):\n")
    print("| comparison | ΔIQM | 95% interval | Holm-level interval | p | p (Holm) | P(improve) | separated |")
    print("|---|---|---|---|---|---|---|---|")
    for r in fam.itertuples():
        print(
            f"| `{r.variant}` − `{r.against}` | {r.d_iqm:+.3f} | [{r.d_lo:+.3f}, {r.d_hi:+.3f}] | "
            f"[{r.h_lo:+.3f}, {r.h_hi:+.3f}] ({r.holm_level:.4f}) | {r.p:.4f} | {r.p_holm:.4f} | {r.p_improve:.2f} | "
            f"{'yes' if r.separated else 'no'} |"
        )
    extra = family(scores, AGAINST, n_boot=a.n_boot)
    print("\nOutside the family (uncorrected; the plan's evidence against the hypothesis):\n")
    print("| comparison | ΔIQM | 95% interval | p | P(improve) |")
    print("|---|---|---|---|---|")
    for r in extra.itertuples():
        d = f"{r.d_iqm:+.3f} | [{r.d_lo:+.3f}, {r.d_hi:+.3f}]"
        print(f"| `{r.variant}` − `{r.against}` | {d} | {r.p:.4f} | {r.p_improve:.2f} |")
    if a.csv:
        pd.concat([fam.assign(family=True), extra.assign(family=False)]).to_csv(a.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
