"""The decomposition study's step-over-previous tables per benchmark (docs/findings.md).

    python analysis/decompose.py [--uri sqlite:///outputs/decompose/mlflow.db] [--out docs/figures/decompose_steps.md]

`sdpg-report ablations/decompose.yaml` pools the three benchmarks of a task into one IQM per variant; on both
built-in tasks two of the three start at the floor (students solve 0-0.4% of `more_terms` / `larger_numbers`),
so the pooled IQM is mostly zeros. This script asks the same question per benchmark and per summary: for each
task, each variant against the previous one in the spec's order, ΔIQM and P(improve) over seeds with 95%
stratified bootstrap intervals (`sdpg.reporting.report.improvement`, the report's own statistics), on the
in-distribution benchmark's Last score, its Best, and its mean over the run's evaluations (AUC: the early lead
the paper claims for β).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml

from sdpg.reporting.report import improvement, load_runs

SPEC = Path(__file__).resolve().parents[1] / "ablations" / "decompose.yaml"


def per_seed(df, variant: str, metric: str, how: str) -> np.ndarray:
    g = df[(df.variant == variant) & (df.metric == metric)]
    out = []
    for _, s in g.sort_values("step").groupby("seed"):
        if s["step"].max() < df["step"].max():  # a run still training (or stopped early): not a result yet
            continue
        v = s["value"].to_numpy()
        out.append({"last": v[-1], "best": v.max(), "auc": v.mean()}[how])
    return np.array(out, dtype=float)


def fmt(x: float, signed: bool = False) -> str:
    return "–" if np.isnan(x) else (f"{x:+.3f}" if signed else f"{x:.3f}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--uri", default=f"sqlite:///{Path('outputs/decompose/mlflow.db').resolve()}")
    p.add_argument("--experiment", default="decompose")
    p.add_argument("--out", default="docs/figures/decompose_steps.md")
    a = p.parse_args()
    spec = yaml.safe_load(SPEC.read_text())
    variants = list(spec["variants"])
    tasks = list(spec["grid"]["task"])
    benches = ["embedded", "more_terms", "larger_numbers"]
    df = load_runs(a.uri, a.experiment, [f"eval/{b}/mean@4" for b in benches])
    lines = []
    for task in tasks:
        sub = df[df.run_name.str.contains(f"-task={task}-")]
        for bench, how in [("embedded", "last"), ("embedded", "best"), ("embedded", "auc"), ("more_terms", "last")]:
            metric = f"eval/{bench}/mean@4"
            scores = {v: per_seed(sub, v, metric, how)[:, None] for v in variants}
            scores = {v: s for v, s in scores.items() if len(s)}
            if not scores:
                continue
            t = improvement(scores, compare="previous")
            lines += [
                f"**{task}, `{metric}`, {how}** (per seed; IQM over seeds)",
                "",
                "| variant | seeds | mean | IQM | against | ΔIQM | 95% CI | P(improve) | 95% CI | separate? |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in t.itertuples():
                sep = "–" if np.isnan(r.d_lo) else ("**yes**" if (r.d_lo > 0 or r.d_hi < 0) else "no")
                ci = "–" if np.isnan(r.d_lo) else f"[{r.d_lo:+.3f}, {r.d_hi:+.3f}]"
                pci = "–" if np.isnan(r.p_lo) else f"[{r.p_lo:.2f}, {r.p_hi:.2f}]"
                pim = "–" if np.isnan(r.p_improve) else f"{r.p_improve:.2f}"
                mean = float(np.mean(scores[r.variant]))
                against = r.against if isinstance(r.against, str) else "(first)"
                lines.append(
                    f"| {r.variant} | {r.seeds} | {mean:.3f} | {fmt(r.iqm)} | {against} | "
                    f"{fmt(r.d_iqm, True)} | {ci} | {pim} | {pci} | {sep} |"
                )
            lines.append("")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
