"""An experiment's runs from MLflow, and where they live.

* ``load_runs``: every child run of an experiment (optionally filtered by tags) with full metric
  histories, as one long frame [run_id, run_name, variant, method, seed, metric, step, value], fetched
  with a thread pool and cached per finished run.
* ``run_table``: one row per run with its sweep and grid-group tags.
* ``resolve``: the ``Source`` (tracking URI, experiment, sweep storage, spec order) of what ``sdpg-report``
  was given; the one resolver of a report's source.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sdpg.orchestration import tracking
from sdpg.training.metrics import is_mean_at, parse_eval

COLUMNS = ["run_id", "run_name", "variant", "method", "seed", "metric", "step", "value"]


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


def benchmark_metrics(df, order: list[str] | None = None) -> list[str]:
    """``eval/<bench>/mean@<k>`` keys present, in order of first appearance, or in the order of the benchmark
    names ``order`` (e.g. a spec's ``data.eval`` keys: graded difficulty) with any others after them."""
    found = [m for m in dict.fromkeys(df.metric) if is_mean_at(m)]
    if order:
        rank = {b: i for i, b in enumerate(order)}
        found.sort(key=lambda m: rank.get(parse_eval(m).bench, len(rank)))  # type: ignore[union-attr]  # stable: unknown ones keep their order
    return found
