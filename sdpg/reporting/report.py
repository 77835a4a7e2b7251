"""From MLflow runs to paper-style figures and tables.

* ``load_runs``: every child run of an experiment (optionally filtered by tags) with full metric
  histories, as one long frame [run_id, run_name, variant, method, seed, metric, step, value], fetched
  with a thread pool and cached per finished run.
* ``plot_curves`` / ``paper_grid``: metric-vs-step panels, one colour per variant across every figure,
  mean over seeds with a 95% bootstrap band, optional EMA.
* ``last_best``: Last and Best per benchmark, mean and 95% CI over seeds; ``render_table`` writes it
  as Markdown, LaTeX (booktabs) or CSV with the best cell bold and the second underlined.
* ``stability``: entropy collapse, response-length collapse, reward drawdown, late variance, steps to a
  threshold, per run and per variant.
* ``improvement``: IQM, and the IQM difference and probability of improvement over a baseline or over the
  previous variant (a chain of ablation steps), stratified bootstrap over seeds within each benchmark (the
  method of rliable, Agarwal et al. 2021, in numpy).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from sdpg import fsio
from sdpg.orchestration import tracking
from sdpg.orchestration.specs import COMPARE
from sdpg.training.metrics import is_mean_at, parse_eval

# One colour per variant across every figure (Okabe-Ito, colour-blind safe).
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
COLUMNS = ["run_id", "run_name", "variant", "method", "seed", "metric", "step", "value"]
# Seeds a variant needs before any interval or probability over seeds is stated.
MIN_SEEDS = 2


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _cache_mark(cfile: Path) -> Path:
    return cfile.with_name(cfile.name + ".done")


def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _write_cached(cfile: Path, df) -> None:
    """A cache entry: the parquet file (written aside, then renamed), then its completion mark holding its
    size and hash, written last. A report killed anywhere in between leaves an entry without a valid mark."""
    cfile.parent.mkdir(parents=True, exist_ok=True)
    mark = _cache_mark(cfile)
    mark.unlink(missing_ok=True)
    tmp = cfile.with_name(f".{cfile.name}.{os.getpid()}.tmp")
    df.to_parquet(tmp)
    data = tmp.read_bytes()
    os.replace(tmp, cfile)
    mark_tmp = mark.with_name(f".{mark.name}.{os.getpid()}.tmp")
    mark_tmp.write_text(json.dumps({"bytes": len(data), "sha256": _digest(data)}))
    os.replace(mark_tmp, mark)


def _read_cached(cfile: Path):
    """The cached frame of a run, or None (then it is fetched again and the entry rewritten): an entry is
    trusted only whole, its completion mark present and matching the file's size and hash."""
    import pandas as pd

    mark = _cache_mark(cfile)
    try:
        want = json.loads(mark.read_text())
        data = cfile.read_bytes()
        if not isinstance(want, dict) or want.get("bytes") != len(data) or want.get("sha256") != _digest(data):
            raise ValueError("incomplete")
        return pd.read_parquet(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - any unreadable entry is rebuilt, never trusted
        for p in (mark, cfile):
            p.unlink(missing_ok=True)
        return None


def load_runs(
    uri: str,
    experiment: str,
    metrics: Iterable[str] | None = None,
    tags: dict[str, str] | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 8,
    include_evals: bool = False,
):
    """Long frame of every child run's metric histories (paper metric names, ``@`` restored).

    Finished runs are cached in ``cache_dir`` (one parquet per run), so a report over a large
    experiment fetches each finished run once. Evaluation runs of ``sdpg-eval`` (tag ``sdpg.kind=eval``:
    a base model or a checkpoint, one point at its step) only with ``include_evals``."""
    import pandas as pd

    c = tracking.client(uri)
    exp = tracking.retry(c.get_experiment_by_name, experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking.redact(uri)}")
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items())
    runs = [
        r
        for r in tracking.retry(
            c.search_runs, [exp.experiment_id], filter_string=flt, max_results=50000, order_by=["attributes.start_time ASC"]
        )
        if "sdpg.run_hash" in r.data.tags and (include_evals or r.data.tags.get("sdpg.kind") != "eval")
    ]  # creation order: the spec's variant order
    wanted = [tracking.to_mlflow_key(m) for m in metrics] if metrics else None
    cache = Path(cache_dir) if cache_dir else None

    def fetch(r):
        keys = wanted if wanted is not None else sorted(r.data.metrics)
        cfile = cache / f"{r.info.run_id}.parquet" if cache else None
        df = _read_cached(cfile) if cfile is not None and r.info.status == "FINISHED" else None
        if df is not None:
            if wanted is None or set(tracking.from_mlflow_key(k) for k in keys) <= set(df.metric):
                return df[df.metric.isin([tracking.from_mlflow_key(k) for k in keys])]
        rows = []
        for key in keys:
            if key not in r.data.metrics:
                continue
            for m in tracking.retry(c.get_metric_history, r.info.run_id, key):
                rows.append(
                    (
                        r.info.run_id,
                        r.info.run_name,
                        r.data.tags.get("variant", r.info.run_name),
                        r.data.tags.get("method", ""),
                        int(r.data.tags.get("seed", 0)),
                        tracking.from_mlflow_key(key),
                        int(m.step),
                        float(m.value),
                    )
                )
        df = pd.DataFrame(rows, columns=COLUMNS).drop_duplicates(["metric", "step"], keep="last")
        if cfile is not None and r.info.status == "FINISHED" and wanted is None:
            _write_cached(cfile, df)
        return df

    with ThreadPoolExecutor(max_workers=workers) as pool:
        frames = list(pool.map(fetch, runs))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


class Source:
    """Where an experiment's runs live: tracking ``uri`` and ``experiment``; for a sweep also its Optuna
    ``storage_url``, ``study_name`` and ``objective`` (metric, reduce, direction), when they are known; for an
    ablation spec its ``compare`` mode (``report.compare``), its ``variants`` in spec order and its
    ``benchmarks`` (``data.eval`` names) in config order."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        kind: str = "experiment",
        storage_url: str | None = None,
        study_name: str | None = None,
        objective: dict | None = None,
        space: list[str] | None = None,
        compare: str | None = None,
        variants: list[str] | None = None,
        benchmarks: list[str] | None = None,
    ):
        self.uri, self.experiment, self.kind = uri, experiment, kind
        self.storage_url, self.study_name, self.objective, self.space = storage_url, study_name, objective, space or []
        self.compare, self.variants, self.benchmarks = compare, variants or [], benchmarks or []


def resolve(source: str) -> Source:
    """The ``Source`` of an ablation spec, a sweep spec, an output folder holding ``mlflow.db``, or
    ``URI#EXPERIMENT``. Reads only: nothing is created. A bad source raises ConfigError (a ValueError) naming it;
    the one resolver of a report's source (``sdpg-report``'s check before anything runs uses it too)."""
    from sdpg.orchestration.core import check_tracking_uri
    from sdpg.orchestration.names import short_repr
    from sdpg.training.config import ConfigError

    if "#" in source:
        uri, exp = source.rsplit("#", 1)
        if not exp.strip():
            raise ConfigError(f"{short_repr(source)}: no experiment after '#' (expected URI#EXPERIMENT)")
        check_tracking_uri(uri, f"source {short_repr(source)}")
        return Source(uri, exp)
    p = Path(source)
    if p.is_dir():
        db = p / "mlflow.db"
        if not db.is_file():
            raise ConfigError(f"{p}: no mlflow.db in this folder (expected an output folder of sdpg-ablate or sdpg-sweep)")
        for name, url in (
            ("optuna.journal", f"journal:{(p / 'optuna.journal').resolve()}"),
            ("optuna.db", f"sqlite:///{(p / 'optuna.db').resolve()}"),
        ):
            if (p / name).is_file():
                return Source(tracking.default_uri(p), p.name, "sweep", url, p.name)
        return Source(tracking.default_uri(p), p.name)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        from sdpg.orchestration.specs import read_yaml

        data = read_yaml(p, "spec")
        if "space" in data:
            from sdpg.orchestration.sweep import Sweep

            s = Sweep(p)
            return Source(
                s.tracking_uri,
                s.experiment,
                "sweep",
                s.storage_url,
                s.spec.name,
                s.spec.objective.model_dump(),
                list(s.spec.space),
                benchmarks=list((s.base.get("data") or {}).get("eval") or {}),
            )
        from sdpg.orchestration.ablate import load_plan

        plan = load_plan(p)
        return Source(
            plan.tracking_uri,
            plan.experiment,
            compare=plan.spec.report.compare,
            variants=list(plan.spec.variants),
            benchmarks=list(plan.runs[0].config.data.eval) if plan.runs else None,
        )
    raise ConfigError(
        f"{short_repr(source)}: no such file or folder (expected an ablation or sweep spec, an output "
        f"folder holding mlflow.db, or URI#EXPERIMENT)"
    )


def resolve_source(source: str) -> tuple[str, str]:
    """(tracking uri, experiment) of ``source`` (see ``resolve``)."""
    s = resolve(source)
    return s.uri, s.experiment


def store_exists(uri: str) -> bool:
    """False when ``uri`` is a SQLite file or a local folder that is not there: opening it would create
    an empty store, which a read-only command must not do. Servers and databases are asked instead."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).is_file()
    if uri.startswith("file:") or "://" not in uri:
        return Path(uri[len("file://") :] if uri.startswith("file://") else uri.removeprefix("file:")).is_dir()
    return True


def run_table(uri: str, experiment: str, tags: dict[str, str] | None = None, include_evals: bool = False):
    """One row per child run: run_id, run_name, variant, seed, status, the sweep tags ``trial``
    (number), ``trial_state``, ``trial_params`` and ``pruned_at_step`` where present, and ``group``: the run's
    named grid groups (``grid.<axis>`` tags, e.g. ``task=chain``; ``""`` for none). ``sdpg-eval`` runs only
    with ``include_evals``."""
    import pandas as pd

    c = tracking.client(uri)
    exp = tracking.retry(c.get_experiment_by_name, experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking.redact(uri)}")
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items())
    rows = []
    for r in tracking.retry(
        c.search_runs, [exp.experiment_id], filter_string=flt, max_results=50000, order_by=["attributes.start_time ASC"]
    ):
        t = r.data.tags
        if "sdpg.run_hash" not in t or (t.get("sdpg.kind") == "eval" and not include_evals):
            continue
        rows.append(
            {
                "run_id": r.info.run_id,
                "run_name": r.info.run_name,
                "variant": t.get("variant", r.info.run_name),
                "seed": int(t.get("seed", 0)),
                "status": r.info.status,
                "trial": int(t["sdpg.trial"]) if "sdpg.trial" in t else None,
                "trial_state": t.get("sdpg.trial_state"),
                "trial_params": t.get("sdpg.trial_params"),
                "pruned_at_step": t.get("sdpg.pruned_at_step"),
                "group": group_label({k[len("grid.") :]: v for k, v in t.items() if k.startswith("grid.")}),
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "run_id",
            "run_name",
            "variant",
            "seed",
            "status",
            "trial",
            "trial_state",
            "trial_params",
            "pruned_at_step",
            "group",
        ],
    )


def group_label(groups: dict[str, str]) -> str:
    """A run's named grid groups as one label (``task=chain``; several axes joined by ``, ``); ``""`` for none."""
    return ", ".join(f"{k}={groups[k]}" for k in sorted(groups))


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


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


def ranks(values: list[float], higher_is_better: bool = True) -> list[int]:
    """Dense rank per value (1 = best); ties share a rank, so two equal best values are both bold and
    the next distinct value is underlined."""
    distinct = sorted({round(v, 12) for v in values if not math.isnan(v)}, reverse=higher_is_better)
    return [distinct.index(round(v, 12)) + 1 if not math.isnan(v) else 0 for v in values]


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


def _iqm(x: np.ndarray) -> float:
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
        row = {"variant": v, "against": against, "seeds": int(m.shape[0]), "iqm": _iqm(m), "iqm_lo": nan, "iqm_hi": nan}
        row.update(d_iqm=nan, d_lo=nan, d_hi=nan, p_improve=nan, p_lo=nan, p_hi=nan)
        if m.shape[0] >= MIN_SEEDS:
            iqms = [_iqm(resample(m)) for _ in range(n_boot)]
            row["iqm_lo"], row["iqm_hi"] = q(iqms)
        if against is not None:
            other = scores[against]
            row["d_iqm"] = _iqm(m) - _iqm(other)
            if m.shape[0] >= MIN_SEEDS and other.shape[0] >= MIN_SEEDS:
                draws = [(resample(m), resample(other)) for _ in range(n_boot)]
                row["d_lo"], row["d_hi"] = q([_iqm(a) - _iqm(b) for a, b in draws])
                row["p_improve"] = _prob_improvement(m, other)
                row["p_lo"], row["p_hi"] = q([_prob_improvement(a, b) for a, b in draws])
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


# More than eight series (sweeps): 20 distinct colours (tab20, dark shade of each hue first), then the
# same colours again with another line style, so no two series look alike.
_MANY = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#c7c7c7",
    "#dbdb8d",
    "#9edae5",
]
_STYLES = ["-", (0, (5, 2)), (0, (1, 1.5)), (0, (5, 2, 1, 2))]


def colours_for(variants: list[str]) -> dict[str, str]:
    """One colour per variant: Okabe-Ito (colour-blind safe) up to eight variants, tab20 beyond."""
    pal = PALETTE if len(variants) <= len(PALETTE) else _MANY
    return {v: pal[i % len(pal)] for i, v in enumerate(variants)}


def styles_for(variants: list[str]) -> dict[str, object]:
    """Line style per variant: solid until the colours run out, then dashed, dotted, dash-dotted."""
    pal = PALETTE if len(variants) <= len(PALETTE) else _MANY
    return {v: _STYLES[(i // len(pal)) % len(_STYLES)] for i, v in enumerate(variants)}


def _who(names: list[str], variants: list[str]) -> str:
    """Short list of variants for a panel note: every variant, or their first words (a sweep trial's number)."""
    if len(names) == len(variants) and len(names) > 1:
        return "every variant"
    short = [n.split(" ")[0] for n in names]
    return ", ".join(short) if len(short) <= 4 else f"{', '.join(short[:4])} and {len(short) - 4} more"


# The y-axis of each metric: what is measured and its unit.
Y_LABELS = {
    "train/reward": "reward",
    "train/accuracy": "fraction correct",
    "train/entropy": "nats / token",
    "train/response_length": "tokens",
    "train/opd_kl": "nats / token",
    "train/gate_fraction": "fraction of tokens",
    "train/beta": "β",
    "train/ref_kl": "nats / token",
    "train/pg_clipfrac": "fraction of tokens",
    "train/grad_norm": "L2 norm",
}
INERT_AT_ZERO_BETA = ("train/gate_fraction",)
"""Metrics that describe the distillation term: with β = 0 throughout a run they are computed but act on nothing."""


def y_label(metric: str) -> str:
    """The y-axis label of ``metric``: ``eval/<bench>/mean@k`` is an accuracy, ``timing/*`` seconds."""
    if metric.startswith("eval/"):
        stat = metric.rsplit("/", 1)[-1]
        return f"accuracy ({stat})" if stat.startswith(("mean@", "pass@", "maj@")) else stat
    if metric.startswith("timing/"):
        return "s"
    return Y_LABELS.get(metric, "")


def _beta_zero(df, variants: list[str]) -> set[str]:
    """Variants whose logged ``train/beta`` is 0 at every step of every seed (no distillation term)."""
    rows = df[df.metric == "train/beta"]
    return {v for v in variants if len(rows[rows.variant == v]) and not np.any(rows[rows.variant == v].value.to_numpy())}


def plot_curves(
    df,
    metrics: Sequence[str | None],
    out: str | Path,
    titles: dict[str, str] | None = None,
    ncols: int = 3,
    ema: float = 0.0,
    order: list[str] | None = None,
    panel_w: float = 2.3,
    panel_h: float = 1.9,
    keep_figure: bool = False,
    labels: dict[str, str] | None = None,
    dashed: Iterable[str] = (),
    notes: dict[str, list[str]] | None = None,
):
    """Metric-vs-step panels, one line per variant (mean over seeds; shaded: 95% bootstrap band over seeds,
    only where a variant has at least ``MIN_SEEDS`` seeds). PNG + PDF.

    Nothing vanishes silently: a variant whose values are identically 0 for a metric (e.g. GRPO's
    ``train/opd_kl``, a term it does not compute) is drawn as a thin dotted line at 0 and named in a note
    inside the panel; a variant that did not log the metric is named as such. ``None`` in ``metrics``
    leaves a blank cell. ``labels`` maps a variant to its legend text, ``dashed`` variants are drawn
    dashed (e.g. pruned sweep trials). If ``notes`` is given, the panel notes are added to it
    (metric -> lines) for the page's caption. The legend sits below the panels, never over them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = order or list(dict.fromkeys(df.variant))
    colours, styles = colours_for(variants), styles_for(variants)
    dashed = set(dashed)
    ncols = max(1, min(ncols, len(metrics)))
    nrows = int(np.ceil(len(metrics) / ncols))
    # legend below the panels, in as many columns as fit; the figure is widened if one entry is wider
    legend_text = [(labels or {}).get(v, v) for v in variants]
    entry_w = (max((len(t) for t in legend_text), default=10) + 7) * 3.3 / 72 + 0.35  # inches at 6.5 pt
    width = max(panel_w * ncols, entry_w + 0.2)
    legend_cols = max(1, min(len(variants), int(width / entry_w)))
    legend_h = 0.15 * int(np.ceil(len(variants) / legend_cols)) + 0.15
    plt.rcParams.update({"font.size": 7})
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, panel_h * nrows + legend_h), squeeze=False, layout="constrained")
    present_metrics = set(df.metric)
    no_beta = _beta_zero(df, variants)
    for ax, metric in zip(axes.flat, metrics):
        if metric is None:  # a blank cell of the grid
            ax.axis("off")
            continue
        curves = seed_curves(df, metric, ema)
        zero, missing, inert = [], [], []
        for v in variants:
            if metric in INERT_AT_ZERO_BETA and v in no_beta and v in curves:
                inert.append(v)  # computed, but gates a term with weight 0: a curve would read as a finding
                continue
            if v not in curves or not len(curves[v]["step"]):
                if v in set(df.variant):
                    missing.append(v)
                continue
            c = curves[v]
            ls = (0, (4, 2)) if v in dashed else styles[v]
            n = len(c["seeds"])
            label = f"{(labels or {}).get(v, v)} (n={n})"
            marker = "o" if len(c["step"]) < 3 else None  # a run stopped after a step or two is a point, not nothing
            if not np.any(c["per_seed"]):
                ax.plot(c["step"], c["mean"], color=colours[v], lw=0.9, ls=(0, (1, 1.5)), label=label, marker=marker, ms=2)
                zero.append(v)
                continue
            ax.plot(c["step"], c["mean"], color=colours[v], lw=1.3, ls=ls, label=label, marker=marker, ms=2.5)
            if n >= MIN_SEEDS:
                ax.fill_between(c["step"], c["lo"], c["hi"], color=colours[v], alpha=0.2, lw=0)
        lines = []
        if zero:
            lines.append(f"\u2261 0 (dotted): {_who(zero, variants)}")
        if missing:
            lines.append(f"not logged: {_who(missing, variants)}" if metric in present_metrics else "not logged by any run")
        if inert:
            lines.append(f"inert at \u03b2 = 0, not drawn: {_who(inert, variants)}")
        if lines:
            note = ax.text(
                0.02,
                0.97,
                "\n".join(lines),
                ha="left",
                va="top",
                transform=ax.transAxes,
                fontsize=5.8,
                color="0.35",
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.85", "alpha": 0.85},
                wrap=True,
            )
            note.set_in_layout(False)  # a long note must not squeeze the panels
            if notes is not None:
                notes.setdefault(metric, []).extend(lines)
        ax.set_title((titles or {}).get(metric, metric), fontsize=7.5)
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel(y_label(metric), fontsize=6.5)
        ax.tick_params(labelsize=6.5)
        ax.grid(alpha=0.3, lw=0.5)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    handles, labs = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labs:
                handles.append(h)
                labs.append(lab)
    if handles:
        fig.legend(handles, labs, loc="outside lower center", ncol=legend_cols, fontsize=6.5, frameon=False)
    out = Path(out)
    fsio.ensure_dir(out.parent)
    fsio.save_figure(fig, out)
    if keep_figure:
        return out.with_suffix(".png"), fig
    plt.close(fig)
    return out.with_suffix(".png")


def benchmark_metrics(df, order: list[str] | None = None) -> list[str]:
    """``eval/<bench>/mean@<k>`` keys present, in order of first appearance, or in the order of the benchmark
    names ``order`` (e.g. a spec's ``data.eval`` keys: graded difficulty) with any others after them."""
    found = [m for m in dict.fromkeys(df.metric) if is_mean_at(m)]
    if order:
        rank = {b: i for i, b in enumerate(order)}
        found.sort(key=lambda m: rank.get(parse_eval(m).bench, len(rank)))  # type: ignore[union-attr]  # stable: unknown ones keep their order
    return found


def paper_grid(
    df,
    out: str | Path,
    ema: float = 0.0,
    order: list[str] | None = None,
    keep_figure: bool = False,
    benchmarks: list[str] | None = None,
    **kwargs,
):
    """The paper's figure: each benchmark's mean@k, then reward, entropy, response length. With three or
    more benchmarks the benchmarks fill the top row and the training curves the bottom row, as in the
    paper; with one or two benchmarks everything is one row, so no panel is left empty. ``benchmarks``:
    the benchmark names in panel order (default: as they appear)."""
    benches = benchmark_metrics(df, benchmarks)
    bottom = ["train/reward", "train/entropy", "train/response_length"]
    metrics: list[str | None]
    if len(benches) >= 3:
        ncols = len(benches)
        metrics = [*benches, *bottom, *([None] * (ncols - 3))]
    else:
        ncols = len(benches) + 3
        metrics = [*benches, *bottom]
    titles = {m: f"{m.split('/')[1]} {m.split('/')[2]}" for m in benches}
    titles.update({"train/reward": "reward", "train/entropy": "entropy", "train/response_length": "response length"})
    return plot_curves(df, metrics, out, titles, ncols=ncols, ema=ema, order=order, keep_figure=keep_figure, **kwargs)
