"""Statistics over seeds: bootstrap intervals, Last/Best, stability events, IQM and probability of improvement.

* ``last_best``: Last and Best per benchmark, mean and 95% CI over seeds.
* ``stability``: entropy collapse, response-length collapse, reward drawdown, late variance, steps to a
  threshold, per run and per variant.
* ``improvement``: IQM, and the IQM difference and probability of improvement over a baseline or over the
  previous variant (a chain of ablation steps), stratified bootstrap over seeds within each benchmark (the
  method of rliable, Agarwal et al. 2021, in numpy).
"""

from __future__ import annotations

import numpy as np

from sdpg.orchestration.specs import COMPARE

# Seeds a variant needs before any interval or probability over seeds is stated.
MIN_SEEDS = 2


def bootstrap_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per seed).

    Fewer than ``MIN_SEEDS`` values give (NaN, NaN): a single seed says nothing about the spread over seeds,
    and a zero-width interval would claim it does."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) < MIN_SEEDS:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def seed_curves(df, metric: str, ema: float = 0.0):
    """Per variant: steps, mean over seeds, 95% bootstrap band, and the per-seed matrix."""
    out = {}
    sub = df[df.metric == metric]
    for variant, g in sub.groupby("variant", sort=False):
        table = g.pivot_table(index="step", columns="seed", values="value").sort_index()  # [steps, seeds]
        if ema > 0:
            table = table.ewm(alpha=1 - ema).mean()
        table = table.dropna()
        vals = table.to_numpy()
        bands = np.array([bootstrap_ci(row) for row in vals]) if len(vals) else np.zeros((0, 2))
        out[variant] = {
            "step": table.index.to_numpy(),
            "mean": vals.mean(axis=1) if len(vals) else np.array([]),
            "lo": bands[:, 0],
            "hi": bands[:, 1],
            "per_seed": vals,
            "seeds": list(table.columns),
        }
    return out


def steps_to_threshold(steps, values, threshold: float) -> float:
    """First step at which ``values`` reaches ``threshold``; NaN if never."""
    hit = np.nonzero(np.asarray(values) >= threshold)[0]
    return float(np.asarray(steps)[hit[0]]) if len(hit) else float("nan")


def last_best(df, metrics: list[str]):
    """Frame [variant, metric, kind (Last|Best), mean, lo, hi, n, per_seed] over seeds; Last is the value at
    each run's last logged step, Best its maximum."""
    import pandas as pd

    rows = []
    sub = df[df.metric.isin(metrics)]
    for (variant, metric), g in sub.groupby(["variant", "metric"], sort=False):
        per_run = g.sort_values("step").groupby("seed")["value"]
        for kind, vals in (("Last", per_run.last()), ("Best", per_run.max())):
            lo, hi = bootstrap_ci(vals.to_numpy())
            rows.append((variant, metric, kind, float(vals.mean()), lo, hi, len(vals), vals.tolist()))
    return pd.DataFrame(rows, columns=["variant", "metric", "kind", "mean", "lo", "hi", "n", "per_seed"])


def run_scores(df, metrics: list[str]):
    """Per run (one row: run_id, variant, seed) and benchmark: ``<metric> Last`` (final evaluation), ``Best``
    (maximum) and ``AUC`` (mean over its evaluations). The numbers every table of a report is computed from,
    written beside it so that a reader can recompute any of them (``analysis/recompute.py``)."""
    import pandas as pd

    rows: dict[tuple, dict] = {}
    keys = ["run_id", "variant", "seed", "metric"]
    for (rid, variant, seed, metric), g in df[df.metric.isin(metrics)].groupby(keys, sort=False):
        v = g.sort_values("step").value.to_numpy(dtype=float)
        row = rows.setdefault((rid, variant, seed), {"run_id": rid, "variant": variant, "seed": seed})
        row.update({f"{metric} Last": v[-1], f"{metric} Best": v.max(), f"{metric} AUC": v.mean()})
    return pd.DataFrame(list(rows.values()))


def stability(
    df,
    eval_metric: str | None = None,
    entropy_frac: float = 0.25,
    length_frac: float = 0.5,
    late_frac: float = 0.25,
    threshold: float | None = None,
):
    """Per run: entropy collapse (first step below ``entropy_frac`` x its first value), response-length
    collapse (first step below ``length_frac`` x its first value), largest reward drawdown from its running
    maximum, variance of ``eval_metric`` over the last ``late_frac`` of evaluations, steps to ``threshold``
    (only when a threshold is given). The summary holds, per variant and column, the mean over the seeds
    that reached the event, and ``<col>_never``: how many seeds did not."""
    import pandas as pd

    rows = []
    for (rid, variant, seed), g in df.groupby(["run_id", "variant", "seed"], sort=False):

        def series(name, g=g):
            s = g[g.metric == name].sort_values("step")
            return s.step.to_numpy(), s.value.to_numpy()

        row = {"run_id": rid, "variant": variant, "seed": seed}
        st, ent = series("train/entropy")
        row["entropy_collapse_step"] = (
            steps_to_threshold(st, -ent, -entropy_frac * ent[0]) if len(ent) and ent[0] > 0 else float("nan")
        )
        st, ln = series("train/response_length")
        row["length_collapse_step"] = steps_to_threshold(st, -ln, -length_frac * ln[0]) if len(ln) and ln[0] > 0 else float("nan")
        st, rw = series("train/reward")
        row["max_reward_drawdown"] = float(np.max(np.maximum.accumulate(rw) - rw)) if len(rw) else float("nan")
        if eval_metric:
            st, ev = series(eval_metric)
            k = max(1, int(round(late_frac * len(ev)))) if len(ev) else 0
            row["late_variance"] = float(np.var(ev[-k:])) if k else float("nan")
            if threshold is not None:  # no threshold, no column: NaN would read as "never reached"
                row["steps_to_threshold"] = steps_to_threshold(st, ev, threshold) if len(ev) else float("nan")
        rows.append(row)
    per_run = pd.DataFrame(rows)
    return per_run, stability_summary(per_run)


def stability_summary(per_run):
    """Per variant: ``seeds``, and per column the mean over the seeds that reached the event and
    ``<col>_never``, the number of seeds that did not."""
    import pandas as pd

    summary = []
    for variant, g in per_run.groupby("variant", sort=False):
        s = {"variant": variant, "seeds": len(g)}
        for col in [c for c in per_run.columns if c not in ("run_id", "variant", "seed")]:
            v = g[col].to_numpy(dtype=float)
            s[col] = float(np.nanmean(v)) if not np.all(np.isnan(v)) else float("nan")
            s[f"{col}_never"] = int(np.isnan(v).sum())
        summary.append(s)
    return pd.DataFrame(summary)


def iqm(x: np.ndarray) -> float:
    """Interquartile mean of every value of ``x`` (seeds x benchmarks pooled, as rliable's ``aggregate_iqm``)."""
    x = np.sort(x.ravel())
    n = len(x)
    lo, hi = int(np.floor(0.25 * n)), int(np.ceil(0.75 * n))
    return float(x[lo:hi].mean()) if hi > lo else float(x.mean())


def _prob_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) averaged over benchmarks; x, y are [seeds, benchmarks]; ties count one half."""
    ps = []
    for j in range(x.shape[1]):
        a, b = x[:, j][:, None], y[:, j][None, :]
        ps.append(float(((a > b) + 0.5 * (a == b)).mean()))
    return float(np.mean(ps))


def improvement(
    scores: dict[str, np.ndarray], baseline: str | None = None, n_boot: int = 2000, seed: int = 0, compare: str = "baseline"
):
    """IQM of each variant, and against another variant (``baseline``, or with ``compare="previous"`` the one
    before it in the order of ``scores``): the IQM difference and the probability of improvement, each with a
    95% stratified bootstrap interval (seeds resampled within each benchmark, both sides independently, the
    same draws for both statistics). ``scores[v]`` is [seeds, benchmarks].

    Columns: variant, against (None for the baseline itself and the first variant), seeds, iqm, iqm_lo, iqm_hi,
    d_iqm (iqm - the other's), d_lo, d_hi, p_improve, p_lo, p_hi. Each row states its sample size. A variant
    with fewer than ``MIN_SEEDS`` seeds gets its IQM but no interval; the comparisons need ``MIN_SEEDS`` seeds
    on both sides (with one seed each P(improve) is only the fraction of benchmarks won, not a probability over
    seeds); missing values are NaN."""
    import pandas as pd

    if compare not in COMPARE:
        raise ValueError(f"compare {compare!r}: expected one of {', '.join(COMPARE)}")
    if compare == "baseline" and baseline not in scores:
        raise ValueError(f"baseline {baseline!r} not among {list(scores)}")
    rng = np.random.default_rng(seed)

    def resample(m):
        idx = rng.integers(0, m.shape[0], size=m.shape)  # per benchmark column, independently
        return np.take_along_axis(m, idx, axis=0)

    def q(xs):
        return float(np.quantile(xs, 0.025)), float(np.quantile(xs, 0.975))

    nan = float("nan")
    rows = []
    names = list(scores)
    for i, (v, m) in enumerate(scores.items()):
        against = (baseline if v != baseline else None) if compare == "baseline" else (names[i - 1] if i else None)
        row = {"variant": v, "against": against, "seeds": int(m.shape[0]), "iqm": iqm(m), "iqm_lo": nan, "iqm_hi": nan}
        row.update(d_iqm=nan, d_lo=nan, d_hi=nan, p_improve=nan, p_lo=nan, p_hi=nan)
        if m.shape[0] >= MIN_SEEDS:
            iqms = [iqm(resample(m)) for _ in range(n_boot)]
            row["iqm_lo"], row["iqm_hi"] = q(iqms)
        if against is not None:
            other = scores[against]
            row["d_iqm"] = iqm(m) - iqm(other)
            if m.shape[0] >= MIN_SEEDS and other.shape[0] >= MIN_SEEDS:
                draws = [(resample(m), resample(other)) for _ in range(n_boot)]
                row["d_lo"], row["d_hi"] = q([iqm(a) - iqm(b) for a, b in draws])
                row["p_improve"] = _prob_improvement(m, other)
                row["p_lo"], row["p_hi"] = q([_prob_improvement(a, b) for a, b in draws])
        rows.append(row)
    return pd.DataFrame(rows)


def _iqm_draws(m: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """IQM of ``n_boot`` stratified resamples of ``m`` [seeds, benchmarks] (seeds drawn within each benchmark)."""
    s, b = m.shape
    idx = rng.integers(0, s, size=(n_boot, s, b))  # [n_boot, seeds, benchmarks]
    x = np.sort(np.take_along_axis(np.broadcast_to(m, (n_boot, s, b)), idx, axis=1).reshape(n_boot, s * b), axis=1)
    lo, hi = int(np.floor(0.25 * s * b)), int(np.ceil(0.75 * s * b))
    return x[:, lo:hi].mean(axis=1) if hi > lo else x.mean(axis=1)  # [n_boot]


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error): the i-th smallest p times (m - i + 1), made
    non-decreasing in that order and capped at 1."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


def family(scores: dict[str, np.ndarray], pairs: list[tuple[str, str]], n_boot: int = 20000, seed: int = 0, alpha: float = 0.05):
    """A planned family of comparisons ``(variant, against)``, each the IQM difference with its stratified
    bootstrap distribution (both sides resampled independently, as :func:`improvement`): the 95% interval,
    the two-sided bootstrap p-value (twice the smaller tail at 0, with the +1 correction of a Monte Carlo test),
    Holm's adjusted p-value over the family and the interval at the level of the comparison's own Holm step
    (1 - alpha / (m - rank + 1)), and P(improve). Many draws (20,000 by default) so that the far quantiles the
    corrected intervals need rest on more than a handful of draws.

    Columns: variant, against, seeds, d_iqm, d_lo, d_hi, p, p_holm, holm_level, h_lo, h_hi, p_improve,
    separated (p_holm < alpha)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for v, against in pairs:
        a, b = scores[v], scores[against]
        if min(a.shape[0], b.shape[0]) < MIN_SEEDS:
            raise ValueError(f"{v} against {against}: fewer than {MIN_SEEDS} seeds on one side")
        d = _iqm_draws(a, n_boot, rng) - _iqm_draws(b, n_boot, rng)  # [n_boot]
        tail = min((d <= 0).sum(), (d >= 0).sum())
        p = min(1.0, 2 * (tail + 1) / (n_boot + 1))
        lo, hi = np.quantile(d, [0.025, 0.975])
        rows.append(
            {"variant": v, "against": against, "seeds": f"{a.shape[0]}/{b.shape[0]}", "d_iqm": iqm(a) - iqm(b),
             "d_lo": float(lo), "d_hi": float(hi), "p": p, "p_improve": _prob_improvement(a, b), "_draws": d}
        )  # fmt: skip
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out.p.to_numpy())
    rank = out.p.rank(method="first").to_numpy()  # 1 = smallest p
    out["holm_level"] = 1 - alpha / (len(out) - rank + 1)
    bounds = [np.quantile(d, [(1 - lv) / 2, 1 - (1 - lv) / 2]) for d, lv in zip(out._draws, out.holm_level)]
    out["h_lo"], out["h_hi"] = [float(x[0]) for x in bounds], [float(x[1]) for x in bounds]
    out["separated"] = out.p_holm < alpha
    return out.drop(columns="_draws")[
        [
            "variant",
            "against",
            "seeds",
            "d_iqm",
            "d_lo",
            "d_hi",
            "p",
            "p_holm",
            "holm_level",
            "h_lo",
            "h_hi",
            "p_improve",
            "separated",
        ]
    ]
