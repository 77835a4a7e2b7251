"""sdpg-sweep: Optuna coefficient sweeps shared by many workers (local processes or a SLURM array).

A sweep spec (``sweeps/*.yaml``) names a base config, a search space over dotted trainer keys, an
objective (a metric reduced as last / best / auc over the trial's evaluations, averaged over its
seeds), a sampler, a pruner fed by the trainer's intermediate evaluations, a trial budget and a
storage. Every worker pulls trials from the shared study until the budget of finished (complete or
pruned) trials is spent.

Dead workers: with an RDB storage Optuna's heartbeat fails their trials and a retry callback
re-enqueues them; with a journal file (no heartbeat in Optuna) each running trial refreshes an
``sdpg.heartbeat`` attribute and any worker that starts fails stale trials and re-enqueues their
parameters. A retried trial resumes the dead trial's training from its checkpoint, and only
finished trials count toward the budget, so no trial is lost or counted twice.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from sdpg.training.config import ConfigError, apply_layer, build_config, load_yaml
from sdpg.paths import DEFAULT_CONFIG_PATH
from sdpg.orchestration.launch import EXECUTORS, make_executor
from sdpg.orchestration.specs import SlurmProfile, Strict, load_profile, read_yaml, subcommand_parser, validate

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Param(Strict):
    type: Literal["float", "int", "categorical"]
    """Kind of the search dimension."""
    low: float | None = None
    """Lower bound (float, int)."""
    high: float | None = None
    """Upper bound (float, int)."""
    log: bool = False
    """Sample on a log scale (float, int); the range must be positive."""
    step: float | None = None
    """Grid step (float, int)."""
    choices: list[Any] | None = None
    """Values (categorical)."""

    @model_validator(mode="after")
    def _check(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical parameter needs a non-empty 'choices'")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} parameter needs 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range must be positive, got low {self.low}")
        return self


class Objective(Strict):
    metric: str
    """Trainer metric, e.g. ``eval/aime24/mean@32`` (must be one the config produces)."""
    reduce: Literal["last", "best", "auc"] = "last"
    """Last value, best value, or area under the curve (mean over evaluations)."""
    direction: Literal["maximize", "minimize"] = "maximize"
    """Optimisation direction."""


class SamplerSpec(Strict):
    type: Literal["tpe", "gp", "cmaes", "grid", "random"] = "tpe"
    """Optuna sampler."""
    seed: int = 0
    """Sampler seed."""


class PrunerSpec(Strict):
    type: Literal["median", "hyperband", "threshold", "none"] = "median"
    """Optuna pruner fed by intermediate evaluations."""
    n_startup_trials: int = Field(2, ge=0)
    """median: finished trials before pruning starts."""
    n_warmup_steps: int = Field(0, ge=0)
    """median / threshold: steps before a trial can be pruned."""
    lower: float | None = None
    """threshold: prune below this (maximize)."""
    upper: float | None = None
    """threshold: prune above this (minimize)."""


class SweepSpec(Strict):
    name: str = Field(pattern=NAME)
    """Study name, MLflow experiment and output folder (``outputs/<name>``)."""
    base: str | dict[str, Any] = "embedded"
    """Trainer config (YAML path relative to this file, ``embedded``, or a mapping)."""
    ablation: str | None = None
    """Instead of ``base``: an ablation spec path; ``variant`` names which of its runs to start from."""
    variant: str | None = None
    """Variant of ``ablation``."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Diff applied to every trial."""
    space: dict[str, Param] = Field(min_length=1)
    """Dotted trainer key -> search dimension."""
    objective: Objective
    """What a trial returns."""
    sampler: SamplerSpec = SamplerSpec()
    """Search strategy."""
    pruner: PrunerSpec = PrunerSpec()
    """Early stopping of hopeless trials."""
    n_trials: int = Field(gt=0)
    """Finished (complete or pruned) trials to collect."""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    """Training seeds per trial; the objective is their mean."""
    enqueue: list[dict[str, Any]] = Field(default_factory=list)
    """Parameter sets to try first (e.g. the paper's coefficients)."""
    storage: str = "journal"
    """``journal`` (a file in the output folder; shared filesystems), ``sqlite`` (one machine), or an
    RDB URL (``postgresql://...``, ``mysql://...``) for many workers."""
    workers: int = Field(2, gt=0)
    """Workers pulling trials at once."""
    heartbeat_s: float = Field(20.0, gt=0)
    """Seconds between heartbeats of a running trial; stale after 3 missed."""
    executor: str = "local"
    """``local``, ``slurm`` (with ``profile``) or a profile name."""
    profile: str | None = None
    """SLURM profile."""
    output_dir: str | None = None
    """Default ``outputs/<name>``."""
    tracking: dict[str, str | None] = Field(default_factory=dict)
    """``uri`` and ``experiment`` for MLflow (defaults: SQLite in the output folder, the sweep name)."""

    @model_validator(mode="after")
    def _check(self):
        if self.ablation and not self.variant:
            raise ValueError("'ablation' needs 'variant'")
        if set(self.tracking) - {"uri", "experiment"}:
            raise ValueError(f"unknown tracking keys {sorted(set(self.tracking) - {'uri', 'experiment'})}")
        if self.sampler.type == "grid" and any(p.type == "float" and p.step is None for p in self.space.values()):
            raise ValueError("the grid sampler needs 'step' on float parameters")
        return self


class Sweep:
    """A resolved, validated sweep: everything a worker needs, picklable."""

    def __init__(self, path: str | Path, executor: str | None = None, profile: str | None = None):
        path = Path(path)
        self.path = path
        spec = validate(SweepSpec, read_yaml(path, "sweep spec"), str(path))
        self.spec = spec
        src = str(path)
        if spec.ablation:
            from sdpg.orchestration.ablate import load_plan

            plan = load_plan(path.parent / spec.ablation)
            runs = [r for r in plan.runs if r.variant == spec.variant]
            if not runs:
                raise ConfigError(f"{src}: key 'variant' has bad value {spec.variant!r}: not a variant of {spec.ablation}")
            base = runs[0].config.resolved()
        elif isinstance(spec.base, dict):
            base = spec.base
        elif spec.base == "embedded":
            base = load_yaml(DEFAULT_CONFIG_PATH)
        else:
            bp = path.parent / spec.base
            if not bp.is_file():
                raise ConfigError(f"{src}: key 'base' has bad value {spec.base!r}: no such file {bp}")
            base = load_yaml(bp)
        self.base = apply_layer(base, spec.overrides)
        out = Path(spec.output_dir) if spec.output_dir else Path("outputs") / spec.name
        self.output_dir = out if out.is_absolute() else Path.cwd() / out
        # every corner of the space must be a valid config, and the objective must be produced
        corners = [{k: (p.choices[0] if p.type == "categorical" else p.low) for k, p in spec.space.items()},
                   {k: (p.choices[-1] if p.type == "categorical" else p.high) for k, p in spec.space.items()}]
        for i, corner in enumerate(corners + [dict(e) for e in spec.enqueue]):
            where = f"{src}: " + ("space" if i < 2 else f"enqueue[{i - 2}]")
            unknown = set(corner) - set(spec.space) if i >= 2 else set()
            if unknown:
                raise ConfigError(f"{where}: keys {sorted(unknown)} are not in 'space'")
            cfg = build_config(apply_layer(self.base, _typed(corner, spec.space)), where)
        self.metric_ok(cfg, src)
        kind = executor or spec.executor
        prof_name = profile or spec.profile
        if kind not in EXECUTORS:
            prof_name, kind = kind, "slurm"
        if kind == "debug":
            kind = "local"
        self.executor = kind
        self.profile: SlurmProfile | None = load_profile(prof_name, f"{src}: key 'profile'") if prof_name else None
        if kind == "slurm" and self.profile is None:
            self.profile = load_profile("dev", f"{src}: key 'profile'")
        self.storage_url = self._storage_url()
        from sdpg.orchestration.tracking import default_uri

        self.tracking_uri = spec.tracking.get("uri") or default_uri(self.output_dir)
        self.experiment = spec.tracking.get("experiment") or spec.name

    def metric_ok(self, cfg, src: str) -> None:
        m = self.spec.objective.metric
        ok_eval = [f"eval/{b}/mean@{cfg.eval.n_samples}" for b in cfg.data.eval] + \
                  [f"eval/{b}/{x}" for b in cfg.data.eval for x in ["response_length", "greedy"] + [f"pass@{k}" for k in cfg.eval.pass_k]]
        if m.startswith("eval/"):
            if m not in ok_eval:
                raise ConfigError(f"{src}: key 'objective.metric' has bad value {m!r}: this config evaluates "
                                  f"{', '.join(ok_eval[: len(cfg.data.eval)])}")
            if cfg.eval.every <= 0:
                raise ConfigError(f"{src}: key 'objective.metric' is an eval metric but eval.every is 0")
        elif not (m.startswith("train/") or m.startswith("timing/")):
            raise ConfigError(f"{src}: key 'objective.metric' has bad value {m!r}: expected eval/..., train/... or timing/...")

    def _storage_url(self) -> str:
        s = self.spec.storage
        if s == "journal":
            return f"journal:{self.output_dir / 'optuna.journal'}"
        if s == "sqlite":
            return f"sqlite:///{self.output_dir / 'optuna.db'}"
        if "://" in s:
            return s
        raise ConfigError(f"{self.path}: key 'storage' has bad value {s!r}: expected journal, sqlite or an RDB URL")


def _typed(params: dict[str, Any], space: dict[str, Param]) -> dict[str, Any]:
    return {k: (int(round(v)) if space[k].type == "int" else v) for k, v in params.items()}


# --------------------------------------------------------------------------------------------
# Study, storage, heartbeats
# --------------------------------------------------------------------------------------------


def open_storage(url: str, heartbeat_s: float):
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = url[len("journal:"):]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(
        url, heartbeat_interval=int(max(1, heartbeat_s)), grace_period=int(max(3, 3 * heartbeat_s)),
        failed_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
    )


def make_sampler(spec: SweepSpec):
    import optuna

    s = spec.sampler
    if s.type == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed)
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.type == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=s.seed)
    if s.type == "gp":
        return optuna.samplers.GPSampler(seed=s.seed)
    grid = {}
    for k, p in spec.space.items():
        if p.type == "categorical":
            grid[k] = list(p.choices)
        else:
            n = int(math.floor((p.high - p.low) / (p.step or 1) + 1e-9)) + 1
            grid[k] = [p.low + i * (p.step or 1) for i in range(n)]
    return optuna.samplers.GridSampler(grid, seed=s.seed)


def make_pruner(spec: SweepSpec):
    import optuna

    p = spec.pruner
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if p.type == "threshold":
        return optuna.pruners.ThresholdPruner(lower=p.lower, upper=p.upper, n_warmup_steps=p.n_warmup_steps)
    return optuna.pruners.NopPruner()


def load_study(sweep: Sweep):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(sweep.storage_url, sweep.spec.heartbeat_s)
    return optuna.create_study(study_name=sweep.spec.name, storage=storage, load_if_exists=True,
                               direction=sweep.spec.objective.direction, sampler=make_sampler(sweep.spec),
                               pruner=make_pruner(sweep.spec))


FINISHED = ("COMPLETE", "PRUNED")


def finished_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def reap_stale_trials(study, heartbeat_s: float, log=print) -> list[int]:
    """Journal storage: fail RUNNING trials whose heartbeat is older than 3 intervals and enqueue their
    parameters again (tagged with the dead trial's number, whose checkpoint the retry resumes)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    now, reaped = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("sdpg.heartbeat")
        if beat is None or now - beat <= 3 * heartbeat_s:
            continue
        try:
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # another worker got there first
        origin = t.user_attrs.get("sdpg.retry_of", t.number)
        study.enqueue_trial(t.params, user_attrs={"sdpg.retry_of": origin}, skip_if_exists=False)
        reaped.append(t.number)
        log(f"[sdpg-sweep] trial {t.number} lost its worker ({now - beat:.0f}s without heartbeat): failed and re-enqueued")
    return reaped


class _Heartbeat:
    def __init__(self, study, trial_id: int, every_s: float):
        self.study, self.trial_id, self.every = study, trial_id, every_s
        self._stop = threading.Event()
        self.beat()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def beat(self):
        try:
            self.study._storage.set_trial_user_attr(self.trial_id, "sdpg.heartbeat", time.time())
        except Exception:
            pass  # the trial finished meanwhile

    def _run(self):
        while not self._stop.wait(self.every):
            self.beat()

    def stop(self):
        self._stop.set()
        self._t.join(5)


# --------------------------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------------------------


class _PruneSink:
    """Feeds evaluations of the objective metric to Optuna; asks the trainer to stop when pruned."""

    def __init__(self, trial, metric: str, enabled: bool):
        self.trial, self.metric, self.enabled = trial, metric, enabled
        self.values: list[tuple[int, float]] = []
        self.pruned = False

    def log(self, metrics, step):
        if self.metric in metrics:
            v = float(metrics[self.metric])
            self.values.append((step, v))
            if self.enabled:
                self.trial.report(v, step)
                if self.trial.should_prune():
                    self.pruned = True

    def close(self):
        pass


def reduce_values(values: list[tuple[int, float]], how: str, direction: str) -> float:
    if not values:
        return float("nan")
    vs = [v for _, v in values]
    if how == "last":
        return vs[-1]
    if how == "best":
        return max(vs) if direction == "maximize" else min(vs)
    return float(sum(vs) / len(vs))  # auc: mean over evaluations (equal spacing)


class SweepWorker:
    """A submitted worker: pulls trials until the study has ``n_trials`` finished ones."""

    def __init__(self, sweep: Sweep, worker_index: int = 0):
        self.sweep, self.worker_index = sweep, worker_index

    def __call__(self) -> dict:
        import optuna

        from sdpg.orchestration import tracking
        from sdpg.training.trainer import default_sinks, latest_checkpoint, train

        sw, spec = self.sweep, self.sweep.spec
        study = load_study(sw)
        journal = sw.storage_url.startswith("journal:")
        c = tracking.client(sw.tracking_uri)
        exp_id = tracking.get_or_create_experiment(c, sw.experiment)
        parent = tracking.ensure_parent_run(c, exp_id, spec.name, "sweep", {"sdpg.spec_file": str(sw.path)})
        done_here = 0
        while True:
            if journal:
                reap_stale_trials(study, spec.heartbeat_s, log=lambda m: print(m, file=sys.stderr, flush=True))
            if finished_count(study) >= spec.n_trials:
                break
            trial = study.ask()
            hb = _Heartbeat(study, trial._trial_id, spec.heartbeat_s) if journal else None
            origin = trial.user_attrs.get("sdpg.retry_of", trial.number)
            params = {}
            for k, p in spec.space.items():
                if p.type == "categorical":
                    params[k] = trial.suggest_categorical(k, p.choices)
                elif p.type == "int":
                    params[k] = trial.suggest_int(k, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
                else:
                    params[k] = trial.suggest_float(k, p.low, p.high, step=p.step, log=p.log)
            trial.set_user_attr("sdpg.worker", f"{socket.gethostname()}:{os.getpid()}:{os.environ.get('SLURM_JOB_ID', '-')}")
            state, value = "FAIL", None
            try:
                per_seed = []
                pruned = False
                for si, seed in enumerate(spec.seeds):
                    data = apply_layer(apply_layer(sw.base, params), {"run.seed": seed})
                    data = apply_layer(data, {"run.output_dir": str(sw.output_dir / "trials" / f"trial_{origin:04d}-s{seed}")})
                    cfg = build_config(data, f"{sw.path}: trial {trial.number}")
                    rid, _ = tracking.ensure_child_run(
                        c, exp_id, parent, f"{spec.name}/trial{origin}/s{seed}", f"trial{trial.number}-s{seed}",
                        tags={"sdpg.trial": trial.number, "seed": seed, "method": cfg.algo.method,
                              "run_hash": cfg.config_hash(), "variant": f"trial{trial.number}",
                              "sdpg.trial_params": json.dumps(params)},
                        params=tracking.flatten(cfg.resolved()), config_yaml=yaml.safe_dump(cfg.resolved()),
                    )
                    ck = latest_checkpoint(Path(cfg.run.output_dir))
                    start = int(ck.stem.split("_")[1]) if ck else 0
                    prune = _PruneSink(trial, spec.objective.metric, enabled=(si == 0 and spec.pruner.type != "none"))
                    mlflow_sink = tracking.MlflowSink(sw.tracking_uri, rid)
                    result = train(cfg, sinks=default_sinks(Path(cfg.run.output_dir), start, cfg.run.total_steps) + [mlflow_sink, prune],
                                   should_stop=lambda: prune.pruned)
                    if prune.pruned:
                        mlflow_sink.finish("KILLED")
                        tracking.retry(c.set_tag, rid, "sdpg.trial_state", "pruned")
                        pruned = True
                        break
                    mlflow_sink.finish("FINISHED")
                    tracking.retry(c.set_tag, rid, "sdpg.trial_state", "complete")
                    if not prune.values:  # the metric was never logged: read the final one
                        m = result["metrics"].get(spec.objective.metric)
                        prune.values = [(result["step"], m)] if m is not None else []
                    per_seed.append(reduce_values(prune.values, spec.objective.reduce, spec.objective.direction))
                if pruned:
                    state = "PRUNED"
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                else:
                    value = float(sum(per_seed) / len(per_seed))
                    if math.isnan(value):
                        raise RuntimeError(f"objective metric {spec.objective.metric!r} was never logged")
                    state = "COMPLETE"
                    study.tell(trial, value)
                done_here += 1
            except Exception as e:
                print(f"[sdpg-sweep] trial {trial.number} failed: {e!r}", file=sys.stderr, flush=True)
                try:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                except Exception:
                    pass
            finally:
                if hb is not None:
                    hb.stop()
            print(f"[sdpg-sweep] worker {self.worker_index}: trial {trial.number} {state.lower()} "
                  f"{'' if value is None else f'value {value:.4f} '}params {params}; "
                  f"{finished_count(study)}/{spec.n_trials} finished", file=sys.stderr, flush=True)
        return {"worker": self.worker_index, "trials_run": done_here}

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(SweepWorker(self.sweep, self.worker_index))


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def launch(sweep: Sweep, workers: int | None = None, wait: bool | None = None, log=print) -> dict:
    study = load_study(sweep)
    if not study.get_trials(deepcopy=False):
        for e in sweep.spec.enqueue:
            study.enqueue_trial(_typed(e, sweep.spec.space))
    if sweep.storage_url.startswith("journal:"):
        reap_stale_trials(study, sweep.spec.heartbeat_s, log=log)
    n = workers or sweep.spec.workers
    if finished_count(study) >= sweep.spec.n_trials:
        log(f"[sdpg-sweep] {sweep.spec.name}: {finished_count(study)}/{sweep.spec.n_trials} trials finished; nothing to do")
        return {"jobs": []}
    from sdpg.orchestration import tracking

    c = tracking.client(sweep.tracking_uri)  # create the store, experiment and parent run once, here
    exp_id = tracking.get_or_create_experiment(c, sweep.experiment)
    parent = tracking.ensure_parent_run(c, exp_id, sweep.spec.name, "sweep", {"sdpg.spec_file": str(sweep.path)})
    tracking.retry(c.log_text, parent, sweep.path.read_text(), "sweep_spec.yaml")
    ex = make_executor(sweep.executor, sweep.output_dir / "submitit", sweep.profile, sweep.spec.name, n)
    workers_ = [SweepWorker(sweep, i) for i in range(n)]
    if sweep.executor == "local":
        jobs = [ex.submit(w) for w in workers_]
    else:
        with ex.batch():
            jobs = [ex.submit(w) for w in workers_]
    log(f"[sdpg-sweep] {sweep.spec.name}: {n} workers ({sweep.executor}): jobs {', '.join(str(j.job_id) for j in jobs)}; "
        f"storage {tracking.redact(sweep.storage_url)}; MLflow {tracking.redact(sweep.tracking_uri)}")
    log(f"[sdpg-sweep] watch: optuna-dashboard {_dashboard_arg(sweep.storage_url)}   |   "
        f"mlflow ui --backend-store-uri {tracking.redact(sweep.tracking_uri)}")
    if wait if wait is not None else sweep.executor == "local":
        last = -1
        while not all(j.done() for j in jobs):
            k = finished_count(load_study(sweep))
            if k != last:
                log(f"[sdpg-sweep] {k}/{sweep.spec.n_trials} trials finished")
                last = k
            time.sleep(2)
        for j in jobs:
            j.results()[0]
        log(status(sweep))
    return {"jobs": jobs}


def _dashboard_arg(url: str) -> str:
    return url[len("journal:"):] if url.startswith("journal:") else url


def _storage_exists(url: str) -> bool:
    if url.startswith("journal:"):
        return Path(url[len("journal:"):]).is_file()
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):]).is_file()
    return True  # a database server: ask it


def status(sweep: Sweep) -> str:
    from optuna.trial import TrialState

    if not _storage_exists(sweep.storage_url):
        return f"{sweep.spec.name}: no study yet (nothing at {_dashboard_arg(sweep.storage_url)}); start it with sdpg-sweep {sweep.path}"
    study = load_study(sweep)
    trials = study.get_trials(deepcopy=False)
    keys = list(sweep.spec.space)
    lines = ["trial  state     value     " + "  ".join(keys)]
    for t in trials:
        v = f"{t.value:.4f}" if t.value is not None else "-"
        lines.append(f"{t.number:<5}  {t.state.name.lower():<8}  {v:<8}  " + "  ".join(str(t.params.get(k, "-")) for k in keys))
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    lines.append(f"\n{finished_count(study)}/{sweep.spec.n_trials} finished: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if done:
        b = study.best_trial
        lines.append(f"best: trial {b.number} value {b.value:.4f} params {b.params}")
    return "\n".join(lines)


def export(sweep: Sweep, out: str | Path | None = None, seeds: list[int] | None = None) -> Path:
    """An ablation spec with the best trial's coefficients as a variant beside the base."""
    study = load_study(sweep)
    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"{sweep.path}: no complete trial yet; nothing to export") from None
    out = Path(out) if out else Path("ablations") / f"{sweep.spec.name}_best.yaml"
    base = sweep.base
    same = build_config(apply_layer(base, dict(best.params))).config_hash() == build_config(base).config_hash()
    variants = {"best": dict(best.params)} if same else {"base": {}, "best": dict(best.params)}
    spec = {
        "name": f"{sweep.spec.name}_best",
        "base": base,
        "variants": variants,
        "seeds": seeds or [0, 1, 2],
        "executor": sweep.spec.executor,
        **({"profile": sweep.spec.profile} if sweep.spec.profile else {}),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Exported by sdpg-sweep from {sweep.path}: best trial {best.number}, "
              f"{sweep.spec.objective.metric} ({sweep.spec.objective.reduce}) = {best.value:.4f}\n")
    out.write_text(header + yaml.safe_dump(spec, sort_keys=False))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    sub, argv, p = subcommand_parser("sdpg-sweep", ("status", "export"),
                                     "Optuna coefficient sweeps over SDPG trainer configs.", argv)
    p.add_argument("--executor", choices=("local", "slurm"))
    if sub == "run":
        p.add_argument("--workers", type=int)
        p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None)
        p.add_argument("--rehearse", action="store_true",
                       help="run the enqueued trials and the corners of the space here for 2 steps on a shrunk model; start nothing")
        p.add_argument("--rehearse-model", metavar="PATH",
                       help="with --rehearse: a local folder (config.json and tokenizer) standing in for model.path")
        p.add_argument("--rehearse-dir", metavar="DIR", help="with --rehearse: its folder (default rehearsals/NAME)")
    if sub == "export":
        p.add_argument("--out")
    a = p.parse_args(argv)
    try:
        sweep = Sweep(a.spec, a.executor, a.profile)
        if sub == "run" and a.workers is not None and a.workers < 1:
            raise ConfigError(f"--workers {a.workers}: must be at least 1")
        if sub == "status":
            print(status(sweep))
        elif sub == "export":
            print(f"wrote {export(sweep, a.out)}")
        elif a.rehearse:
            from sdpg.orchestration.rehearse import rehearse_sweep

            return rehearse_sweep(sweep, a.rehearse_model, a.rehearse_dir)
        else:
            launch(sweep, a.workers, a.wait, log=lambda m: print(m, file=sys.stderr, flush=True))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
