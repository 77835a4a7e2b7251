"""Figure and numbers for docs/toy_reproduction.md from the toy_reproduction experiment.

    python analysis/toy_reproduction.py [--uri sqlite:///outputs/toy_reproduction/mlflow.db] [--out docs/figures]

Accuracy curves (held-out eval mean@4 and training accuracy) with the mean over seeds and its 95% bootstrap
band; steps for each method to reach GRPO's final accuracy (mean of its last three evaluations).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sdpg.reporting.report import load_runs, plot_curves, seed_curves, steps_to_threshold


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--uri", default=f"sqlite:///{Path('outputs/toy_reproduction/mlflow.db').resolve()}")
    p.add_argument("--experiment", default="toy_reproduction")
    p.add_argument("--out", default="docs/figures")
    p.add_argument("--name", default="toy_reproduction", help="file name of the figure (without .png)")
    p.add_argument("--variants", nargs="+", help="only these (e.g. leave out one whose runs have not finished)")
    a = p.parse_args()
    eval_key = "eval/embedded/mean@4"
    metrics = [eval_key, "train/accuracy", "train/opd_kl", "train/entropy", "train/response_length", "train/ref_kl"]
    df = load_runs(a.uri, a.experiment, metrics)
    order = [v for v in ("grpo", "sdpg_urkl", "sdpg_ufkl") if v in set(df.variant) and (not a.variants or v in a.variants)]
    df = df[df.variant.isin(order)]
    png = plot_curves(
        df,
        metrics,
        Path(a.out) / a.name,
        order=order,
        titles={
            eval_key: "held-out accuracy (mean@4)",
            "train/accuracy": "training accuracy",
            "train/opd_kl": "KL(p || q) on gated tokens",
            "train/entropy": "entropy",
            "train/response_length": "response length",
            "train/ref_kl": "KL to reference (k3)",
        },
    )
    print(f"figure: {png}")
    ev = seed_curves(df, eval_key)
    g = ev["grpo"]
    target = float(np.mean(g["mean"][-3:]))
    print(f"\nGRPO final held-out accuracy (mean of last 3 evals, over seeds): {target:.3f}\n")
    print(
        "| method | seeds | start | final (last 3 evals) | final per seed | range of the final over seeds | best | "
        "steps to GRPO's final, per seed | median | vs GRPO |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    ref = None
    for v in order:
        c = ev[v]
        per_seed = [steps_to_threshold(c["step"], c["per_seed"][:, i], target) for i in range(c["per_seed"].shape[1])]
        med = float(np.nanmedian(per_seed)) if not all(np.isnan(per_seed)) else float("nan")
        if v == "grpo":
            ref = med
        ratio = f"{med / ref:.2f}x" if ref and not np.isnan(med) else "-"
        finals = c["per_seed"][-3:, :].mean(axis=0)  # [seeds]: each seed's mean of its last 3 evaluations
        print(
            f"| {v} | {len(c['seeds'])} | {c['mean'][0]:.3f} | {np.mean(c['mean'][-3:]):.3f} | "
            f"{', '.join(f'{x:.3f}' for x in finals)} | {finals.min():.3f}–{finals.max():.3f} | {np.max(c['mean']):.3f} | "
            f"{', '.join('never' if np.isnan(x) else str(int(x)) for x in per_seed)} | {med:.0f} | {ratio} |"
        )
    tr = seed_curves(df, "train/opd_kl")
    for v in order:
        if v.startswith("sdpg"):
            k = tr[v]["mean"]
            print(
                f"\n{v}: mean per-position KL(p || q) on gated (correct) samples: first 5 steps {np.mean(k[:5]):.3f}, "
                f"last 5 steps {np.mean(k[-5:]):.3f}"
            )


if __name__ == "__main__":
    main()
