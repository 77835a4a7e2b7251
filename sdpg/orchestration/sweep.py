"""sdpg-sweep: Optuna coefficient sweeps shared by many workers (local processes or a SLURM array).

A sweep spec (``sweeps/*.yaml``) names a base config, a search space over dotted trainer keys, an
objective (a metric reduced as last / best / auc over the trial's evaluations, averaged over its
seeds), a sampler, a pruner fed by the trainer's intermediate evaluations, a trial budget and a
storage. Every worker pulls trials from the shared study until the budget of finished (complete or
pruned) trials is spent. A trial is the orchestration core's ``TrainJob`` with the Optuna trial
attached (``OptunaTrial``): its MLflow run ends FINISHED, KILLED (pruned, with the step) or FAILED
(with the error and its traceback), and a worker on a multi-task SLURM profile trains every trial
on all of its tasks, joined in one process group.

No point twice: each worker seeds its sampler differently, and a proposal whose effective config
equals that of a running or finished trial is dropped (recorded as ``sdpg.duplicate_of``) and
another one asked for, under a lock so that two workers cannot both take the same point.

Dead workers: with an RDB storage Optuna's heartbeat fails their trials and a retry callback
re-enqueues them; with a journal file (no heartbeat in Optuna) each running trial refreshes an
``sdpg.heartbeat`` attribute and any worker that starts fails stale trials and re-enqueues their
parameters. A preempted worker re-enqueues its trial itself before it requeues. A retried trial
resumes the dead trial's training from its checkpoint, and only finished trials count toward the
budget, so no trial is lost or counted twice.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from sdpg import fsio
from sdpg.orchestration.core import (
    NAME_PATTERN,
    Experiment,
    TrackingSpec,
    active_jobs,
    check_experiment_name,
    check_folder_kind,
    check_journal,
    check_sqlite_store,
    check_tracking_uri,
    check_writable_folder,
    job_error,
    job_history,
    output_folder,
    read_jobs,
    resolve_base,
    resolve_executor,
    tracking_target,
    write_jobs,
)
from sdpg.orchestration.launch import TrainJob, export_distributed_env, make_executor
from sdpg.orchestration.specs import SlurmProfile, read_yaml, validate
from sdpg.training.config import ConfigError, FolderPath, Seed, Strict, apply_layer, build_config

NAME = NAME_PATTERN  # the former name


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
            from sdpg.training.redact import contains_secret

            if any(contains_secret(json.dumps(c, default=str)) for c in self.choices):
                raise ValueError(
                    "a choice looks like a secret (a token, a key, credentials): Optuna stores choices in plain "
                    "text in its journal and database; put the secret in an environment variable instead"
                )
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} parameter needs 'low' and 'high'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low {self.low} and high {self.high} must be finite")
        if self.low > self.high:
            raise ValueError(f"low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range must be positive, got low {self.low}")
        if self.type == "int":
            for bound, v in (("low", self.low), ("high", self.high)):
                if v != int(v):
                    raise ValueError(f"an int parameter needs whole bounds, got {bound} {v} (Optuna would silently truncate it)")
            if self.step is not None and self.step != int(self.step):
                raise ValueError(f"an int parameter needs a whole step, got {self.step}")
        if self.step is not None:
            if not (math.isfinite(self.step) and self.step > 0):
                raise ValueError(f"step must be a positive number, got {self.step}")
            if self.log:
                raise ValueError("log: true and step cannot be combined (Optuna refuses it); drop one")
        if self.choices is not None:
            raise ValueError(f"'choices' is for categorical parameters, not {self.type}")
        return self

    def grid_points(self) -> int:
        """Points this dimension holds on a grid, computed without listing them."""
        if self.type == "categorical":
            return len(self.choices or [])
        step = self.step or 1
        assert self.low is not None and self.high is not None  # a numeric dimension (validated)
        return int(math.floor((self.high - self.low) / step + 1e-9)) + 1

    def contains(self, v: Any) -> str | None:
        """Why ``v`` is outside this dimension, or None when it is inside."""
        if self.type == "categorical":
            return None if v in (self.choices or []) else f"not one of the choices {self.choices}"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"not a number (a {self.type} dimension from {self.low} to {self.high})"
        assert self.low is not None and self.high is not None  # a numeric dimension (validated)
        if not self.low <= v <= self.high:
            return f"outside the space [{self.low}, {self.high}]"
        if self.type == "int" and v != int(v):
            return "not a whole number (an int dimension)"
        if self.step is not None:
            k = (v - self.low) / self.step
            if abs(k - round(k)) > 1e-6:
                return f"not on the grid {self.low} + k x {self.step}"
        return None


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
    seed: Seed = 0
    """Sampler seed, in [0, 2**32)."""


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

    @model_validator(mode="after")
    def _threshold_bounds(self):
        if self.type == "threshold" and self.lower is None and self.upper is None:
            raise ValueError("the threshold pruner needs 'lower' (maximize) or 'upper' (minimize)")
        return self


class SweepSpec(Strict):
    name: str
    """Study name, MLflow experiment and output folder (``outputs/<name>``): ``[A-Za-z0-9._-]``, at most 100
    characters, no leading dot."""
    base: str | dict[str, Any] = "embedded"
    """Trainer config (YAML path relative to this file, ``embedded``, or a mapping)."""
    ablation: str | None = None
    """Instead of ``base``: an ablation spec path; ``variant`` names which of its runs to start from."""
    variant: str | None = None
    """Variant of ``ablation``."""
    grid: dict[str, Any] = Field(default_factory=dict)
    """With ``ablation``: the grid point of the variant to start from, e.g. ``{task: chain}`` (a named group's
    name, or a trainer key's value); axes not named take their first value."""
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
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    """Training seeds per trial (each in [0, 2**32)); the objective is their mean."""
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
    output_dir: FolderPath | None = None
    """Default ``outputs/<name>``."""
    tracking: TrackingSpec = TrackingSpec()
    """``uri`` and ``experiment`` for MLflow (defaults: SQLite in the output folder, the sweep name)."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v):
        from sdpg.orchestration.names import name_problem

        why = name_problem(v)
        if why is not None:
            raise ValueError(f"a name {why}")
        return v

    @model_validator(mode="after")
    def _check(self):
        from sdpg.orchestration.names import MAX_SWEEP_GRID

        if self.ablation and not self.variant:
            raise ValueError("'ablation' needs 'variant'")
        if self.grid and not self.ablation:
            raise ValueError("'grid' picks a grid point of an 'ablation' spec's variant; this spec has no 'ablation'")
        if self.sampler.type == "grid":
            no_step = [k for k, p in self.space.items() if p.type == "float" and p.step is None]
            if no_step:
                raise ValueError(f"the grid sampler needs 'step' on float parameters: space.{no_step[0]} has none")
            sizes = {k: p.grid_points() for k, p in self.space.items()}
            total = math.prod(sizes.values())  # from the bounds: nothing is listed before it is known to fit
            if total > MAX_SWEEP_GRID:
                big = max(sizes, key=lambda k: sizes[k])
                raise ValueError(
                    f"the grid sampler's space holds {total:.3g} points (space.{big}: {sizes[big]:.3g} "
                    f"with its step), more than {MAX_SWEEP_GRID}; use a coarser step or another sampler"
                )
        return self


class Sweep:
    """A resolved, validated sweep: everything a worker needs, picklable. ``n_trials`` replaces the
    spec's budget (``--n-trials``)."""

    def __init__(
        self,
        path: str | Path,
        executor: str | None = None,
        profile: str | None = None,
        n_trials: int | None = None,
        profile_file: str | None = None,
        check_world: bool = False,
    ):
        path = Path(path)
        self.path = path
        spec = validate(SweepSpec, read_yaml(path, "sweep spec"), str(path))
        src = str(path)
        if n_trials is not None:
            if n_trials < 1:
                raise ConfigError(f"--n-trials {n_trials}: must be at least 1")
            spec = spec.model_copy(update={"n_trials": n_trials})
        self.spec = spec
        if spec.ablation:
            from sdpg.orchestration.ablate import load_plan

            plan = load_plan(path.parent / spec.ablation)
            runs = [r for r in plan.runs if r.variant == spec.variant]
            if not runs:
                raise ConfigError(f"{src}: key 'variant' has bad value {spec.variant!r}: not a variant of {spec.ablation}")
            picked = [r for r in runs if all(k in r.grid and r.grid[k] == v for k, v in spec.grid.items())]
            if not picked:
                points = sorted({json.dumps(r.grid) for r in runs})
                raise ConfigError(
                    f"{src}: key 'grid' has bad value {spec.grid!r}: no run of variant {spec.variant!r} of "
                    f"{spec.ablation} has it (grid points: {', '.join(points)[:300]})"
                )
            runs = picked
            base = runs[0].config.resolved()
        else:
            base = resolve_base(spec.base, path)
        self.base = apply_layer(base, spec.overrides)
        if spec.overrides:  # errors in the overrides are the overrides', not the space's
            build_config(self.base, f"{src}: overrides")
        self.output_dir = output_folder(spec.output_dir, spec.name)
        check_tracking_uri(spec.tracking.uri, src)
        check_experiment_name(spec.tracking.experiment, src)
        check_writable_folder(self.output_dir, src)
        check_folder_kind(self.output_dir, "sweep", spec.name, src)
        for i, e in enumerate(spec.enqueue):  # every enqueued point inside the space, before any study exists
            for k, v in e.items():
                if k not in spec.space:
                    raise ConfigError(
                        f"{src}: key 'enqueue[{i}].{k}' has bad value {v!r}: {k} is not in 'space' ({', '.join(spec.space)})"
                    )
                why = spec.space[k].contains(v)
                if why is not None:
                    raise ConfigError(f"{src}: key 'enqueue[{i}].{k}' has bad value {v!r}: {why}")
        # every corner of the space must be a valid config, and the objective must be produced
        corners = [
            {k: (p.choices[0] if p.type == "categorical" else p.low) for k, p in spec.space.items()},
            {k: (p.choices[-1] if p.type == "categorical" else p.high) for k, p in spec.space.items()},
        ]
        for i, corner in enumerate(corners + [dict(e) for e in spec.enqueue]):
            where = f"{src}: " + ("space" if i < 2 else f"enqueue[{i - 2}]")
            unknown = set(corner) - set(spec.space) if i >= 2 else set()
            if unknown:
                raise ConfigError(f"{where}: keys {sorted(unknown)} are not in 'space'")
            cfg = build_config(apply_layer(self.base, _typed(corner, spec.space)), where)
            self.metric_ok(cfg, src)
        kind, prof = resolve_executor(
            executor or spec.executor,
            profile or spec.profile,
            src,
            kind_from="--executor" if executor else None,
            profile_from="--profile" if profile else None,
            profile_file=profile_file,
        )
        if check_world:
            from sdpg.training.preflight import check_world as _check_world

            probe = apply_layer(self.base, {"run.output_dir": str(self.output_dir / "trials" / "probe")})
            _check_world(
                build_config(apply_layer(probe, _typed(corners[0], spec.space)), f"{src}: space"),
                f"{src}: space",
                local=kind in ("local", "debug"),
            )
        self.executor = "local" if kind == "debug" else kind
        self.profile: SlurmProfile | None = prof
        self.storage_url = self._storage_url()
        self.tracking_uri, self.experiment = tracking_target(spec.tracking, self.output_dir, spec.name)
        check_sqlite_store(self.storage_url, "Optuna study")  # status reads it too
        check_journal(self.storage_url)
        if check_world:
            check_sqlite_store(self.tracking_uri, "MLflow store")

    def experiment_tracker(self) -> Experiment:
        return Experiment(self.tracking_uri, self.experiment, self.output_dir, "sweep", self.spec.name, self.path)

    def trial_config(self, params: dict[str, Any], seed: int, origin: int, where: str):
        """The trainer config of one seed of a trial (its folder named after the trial it retries)."""
        data = apply_layer(apply_layer(self.base, params), {"run.seed": seed})
        data = apply_layer(data, {"run.output_dir": str(self.output_dir / "trials" / f"trial_{origin:04d}-s{seed}")})
        return build_config(data, where)

    def typed(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with int dimensions rounded to ints, as a worker passes a trial's values."""
        return _typed(params, self.spec.space)

    def build_sampler_and_pruner(self) -> None:
        """Build the spec's sampler and pruner here; raises what Optuna raises when they cannot be."""
        make_sampler(self.spec)
        make_pruner(self.spec)

    def point_key(self, params: dict[str, Any]) -> str:
        """The identity of a point of the space: the effective config it trains (seed aside)."""
        return build_config(apply_layer(self.base, params)).effective().config_hash()

    def metric_ok(self, cfg, src: str) -> None:
        m = self.spec.objective.metric
        from sdpg.training import metrics as names
        from sdpg.training.config import SCORER_METRIC_NAMES

        scorers = [SCORER_METRIC_NAMES[s] for s in cfg.eval.extra_scorers]
        ok_eval = names.eval_names(cfg.data.eval, cfg.eval.n_samples, cfg.eval.pass_k, cfg.eval.greedy, scorers)
        if m.startswith("eval/"):
            if m not in ok_eval:
                raise ConfigError(
                    f"{src}: key 'objective.metric' has bad value {m!r}: this config evaluates "
                    f"{', '.join(names.mean_at(b, cfg.eval.n_samples) for b in cfg.data.eval)}"
                )
            if cfg.eval.every <= 0:
                raise ConfigError(
                    f"{src}: key 'objective.metric' has bad value {m!r}: an eval metric, but eval.every is 0 "
                    f"(the config never evaluates)"
                )
        elif not (m.startswith("train/") or m.startswith("timing/")):
            raise ConfigError(f"{src}: key 'objective.metric' has bad value {m!r}: expected eval/..., train/... or timing/...")
        else:
            known = names.declared()
            if m not in known:
                same = sorted(k for k in known if k.split("/")[0] == m.split("/")[0])
                raise ConfigError(
                    f"{src}: key 'objective.metric' has bad value {m!r}: the trainer never logs it "
                    f"(it logs {', '.join(same[:12])}{', ...' if len(same) > 12 else ''})"
                )

    def _storage_url(self) -> str:
        s = self.spec.storage
        if s == "journal":
            return f"journal:{self.output_dir / 'optuna.journal'}"
        if s == "sqlite":
            return f"sqlite:///{self.output_dir / 'optuna.db'}"
        if "://" in s:
            import re

            from sdpg.orchestration.names import short_repr
            from sdpg.training.redact import redact

            scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", s)
            dialect = scheme.group(1).split("+")[0].lower() if scheme else ""
            if dialect not in RDB_DIALECTS:
                raise ConfigError(
                    f"{self.path}: key 'storage' has bad value {short_repr(redact(s))}: unknown database "
                    f"scheme {dialect or '(none)'!r} (expected journal, sqlite, or a URL of "
                    f"{', '.join(RDB_DIALECTS)})"
                )
            if dialect == "sqlite":
                db = Path(s.split(":///", 1)[-1])
                if not s.startswith("sqlite:///") or not db.parent.is_dir():
                    raise ConfigError(f"{self.path}: key 'storage' has bad value {short_repr(s)}: no folder {db.parent}")
            return s
        from sdpg.orchestration.names import short_repr
        from sdpg.training.redact import redact

        raise ConfigError(
            f"{self.path}: key 'storage' has bad value {short_repr(redact(s))}: expected journal, sqlite "
            f"or a database URL ({', '.join(RDB_DIALECTS)})"
        )


RDB_DIALECTS = ("postgresql", "mysql", "sqlite", "oracle", "mssql", "mariadb", "cockroachdb")
"""SQLAlchemy dialects an Optuna RDB storage URL may name."""


def _typed(params: dict[str, Any], space: dict[str, Param]) -> dict[str, Any]:
    return {k: (int(round(v)) if space[k].type == "int" else v) for k, v in params.items()}


# --------------------------------------------------------------------------------------------
# Study, storage, heartbeats
# --------------------------------------------------------------------------------------------


def open_storage(url: str, heartbeat_s: float):
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = url[len("journal:") :]
        fsio.ensure_dir(Path(path).parent)
        fsio.check_writable_target(path)
        return JournalStorage(JournalFileBackend(path))
    if url.startswith("sqlite:///"):
        fsio.ensure_dir(Path(url[len("sqlite:///") :]).parent)
        fsio.check_writable_target(url[len("sqlite:///") :])
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=int(max(1, heartbeat_s)),
        grace_period=int(max(3, 3 * heartbeat_s)),
        failed_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
    )


def make_sampler(spec: SweepSpec, seed: int | None = None):
    """The spec's sampler, seeded with ``seed`` (default: the spec's seed)."""
    import optuna

    s = spec.sampler
    seed = s.seed if seed is None else seed
    if s.type == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.type == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if s.type == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    grid = {}
    for k, p in spec.space.items():
        if p.type == "categorical":
            grid[k] = list(p.choices or [])
        else:
            assert p.low is not None and p.high is not None  # a numeric dimension (validated)
            n = int(math.floor((p.high - p.low) / (p.step or 1) + 1e-9)) + 1
            grid[k] = [p.low + i * (p.step or 1) for i in range(n)]
    return optuna.samplers.GridSampler(grid, seed=seed)


def worker_seed(spec_seed: int, worker_index: int, trials_so_far: int) -> int:
    """A sampler seed per worker (and per restart of it: the study has grown meanwhile), so that two
    workers never draw the same sequence; worker 0 of a new study keeps the spec's seed."""
    if worker_index == 0 and trials_so_far == 0:
        return spec_seed
    return (spec_seed * 1_000_003 + worker_index * 7_919 + trials_so_far * 104_729) % (2**31 - 1)


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


def load_study(sweep: Sweep, sampler_seed: int | None = None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(sweep.storage_url, sweep.spec.heartbeat_s)
    return optuna.create_study(
        study_name=sweep.spec.name,
        storage=storage,
        load_if_exists=True,
        direction=sweep.spec.objective.direction,
        sampler=make_sampler(sweep.spec, sampler_seed),
        pruner=make_pruner(sweep.spec),
    )


def load_study_read_only(sweep: Sweep):
    """The study for reading (``status``, ``export``): nothing is appended to the journal, no table or
    migration is made in a database (sqlite is opened in SQLite's read-only mode)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = sweep.storage_url
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        storage: Any = JournalStorage(JournalFileBackend(url[len("journal:") :]))
    elif url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :]).resolve()
        storage = optuna.storages.RDBStorage(
            f"sqlite:///file:{path}?mode=ro&uri=true", skip_table_creation=True, skip_compatibility_check=True
        )
    else:
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True, skip_compatibility_check=True)
    try:
        return optuna.load_study(study_name=sweep.spec.name, storage=storage)
    except KeyError:
        raise ConfigError(f"{sweep.path}: the storage holds no study named {sweep.spec.name!r}") from None


FINISHED = ("COMPLETE", "PRUNED")


def finished_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def is_duplicate(t) -> bool:
    """A proposal dropped because another trial already had its point (never trained)."""
    return "sdpg.duplicate_of" in t.user_attrs


def counts_by_state(study) -> dict[str, int]:
    """Trials per state (complete, pruned, running, waiting, failed) and dropped duplicates."""
    out = {"complete": 0, "pruned": 0, "running": 0, "waiting": 0, "failed": 0, "duplicate": 0}
    for t in study.get_trials(deepcopy=False):
        key = "duplicate" if is_duplicate(t) else {"FAIL": "failed"}.get(t.state.name, t.state.name.lower())
        out[key] = out.get(key, 0) + 1
    return out


def progress_line(study, n_trials: int) -> str:
    c = counts_by_state(study)
    done = c["complete"] + c["pruned"]
    parts = [f"{c['complete']} complete", f"{c['pruned']} pruned", f"{c['running']} running"]
    parts += [f"{c[k]} {k}" for k in ("failed", "waiting") if c[k]]
    if c["duplicate"]:
        parts.append(f"{c['duplicate']} duplicate proposals skipped")
    return f"{min(done, n_trials)}/{n_trials} trials finished ({', '.join(parts)})" + (
        f"; {done - n_trials} more finished past the budget by workers already running them" if done > n_trials else ""
    )


def reap_stale_trials(study, heartbeat_s: float, log=print) -> list[int]:
    """Journal storage: fail RUNNING trials whose heartbeat is older than 3 intervals and enqueue their
    parameters again (tagged with the dead trial's number, whose checkpoint the retry resumes)."""
    from optuna.trial import TrialState

    now, reaped = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("sdpg.heartbeat")
        if beat is None or now - beat <= 3 * heartbeat_s:
            continue
        if _requeue_trial(study, t):
            reaped.append(t.number)
            log(f"[sdpg-sweep] trial {t.number} lost its worker ({now - beat:.0f}s without heartbeat): failed and re-enqueued")
    return reaped


def _requeue_trial(study, t) -> bool:
    """Fail a running trial and enqueue its parameters again, tagged with the trial whose checkpoint
    the retry resumes; False when another worker got there first."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False
    origin = t.user_attrs.get("sdpg.retry_of", t.number)
    study.enqueue_trial(t.params, user_attrs={"sdpg.retry_of": origin}, skip_if_exists=False)
    return True


class _Heartbeat:
    def __init__(self, study, trial_id: int, every_s: float):
        self.study, self.trial_id, self.every = study, trial_id, every_s
        self._stop = threading.Event()
        self.beat()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def beat(self):
        with contextlib.suppress(Exception):  # the trial finished meanwhile
            self.study._storage.set_trial_user_attr(self.trial_id, "sdpg.heartbeat", time.time())

    def _run(self):
        while not self._stop.wait(self.every):
            self.beat()

    def stop(self):
        self._stop.set()
        self._t.join(5)


@contextlib.contextmanager
def _ask_lock(folder: Path):
    """One worker at a time proposes and claims a point (a file lock in the sweep's folder)."""
    import fcntl

    fsio.ensure_dir(folder)
    with os.fdopen(fsio.open_lock(folder / ".ask.lock"), "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# A trial: the orchestration core's TrainJob with the Optuna trial attached
# --------------------------------------------------------------------------------------------


class OptunaTrial:
    """A ``TrialHook``: feeds evaluations of the objective metric to Optuna and stops the run when
    the pruner says so; the run's MLflow status follows (FINISHED, or KILLED when pruned)."""

    def __init__(self, trial, metric: str, prune: bool):
        self.trial, self.metric, self.prune = trial, metric, prune
        self.values: list[tuple[int, float]] = []
        self.pruned_at: int | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.metric in metrics:
            v = float(metrics[self.metric])
            self.values.append((step, v))
            if self.prune and self.pruned_at is None:
                self.trial.report(v, step)
                if self.trial.should_prune():
                    self.pruned_at = step

    def close(self) -> None:
        pass

    def should_stop(self) -> bool:
        return self.pruned_at is not None

    def end_status(self, result: dict) -> tuple[str, dict[str, str]]:
        if self.pruned_at is not None:
            return "KILLED", {"sdpg.trial_state": "pruned", "sdpg.pruned_at_step": str(self.pruned_at)}
        return "FINISHED", {"sdpg.trial_state": "complete"}


_PruneSink = OptunaTrial  # the former name


def reduce_values(values: list[tuple[int, float]], how: str, direction: str) -> float:
    if not values:
        return float("nan")
    vs = [v for _, v in values]
    if how == "last":
        return vs[-1]
    if how == "best":
        return max(vs) if direction == "maximize" else min(vs)
    return float(sum(vs) / len(vs))  # auc: mean over evaluations (equal spacing)


class _Ranks:
    """The tasks of a multi-task worker: rank 0 runs the study and tells the others which config to
    train next (None: stop); they join every trial's training in one process group."""

    def __init__(self):
        import torch
        import torch.distributed as dist

        self.dist = dist
        if not dist.is_initialized():  # one group for the worker's life; the trainer reuses it
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
            from datetime import timedelta

            dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def send(self, message: dict | None) -> None:
        self.dist.broadcast_object_list([message], src=0, device=_cpu())

    def receive(self) -> dict | None:
        box: list[Any] = [None]
        self.dist.broadcast_object_list(box, src=0, device=_cpu())
        return box[0]

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


def _cpu():
    import torch

    return torch.device("cpu")


class SweepWorker:
    """A submitted worker: pulls trials until the study has ``n_trials`` finished ones."""

    _desync = False
    """Set when a trial failed on rank 0 after the other tasks had started it (a class default:
    workers pickled by an older sdpg still unpickle)."""

    def __init__(self, sweep: Sweep, worker_index: int = 0):
        self.sweep, self.worker_index = sweep, worker_index

    def __call__(self) -> dict:
        ranks = None
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
            export_distributed_env()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            ranks = _Ranks()
        try:
            if ranks is not None and ranks.rank != 0:
                return self._follow(ranks)
            return self._lead(ranks)
        finally:
            if ranks is not None:
                ranks.close()

    def _follow(self, ranks: _Ranks) -> dict:
        n = 0
        while (msg := ranks.receive()) is not None:
            TrainJob(msg["config"]).run(requeue=False)
            n += 1
        return {"worker": self.worker_index, "rank": ranks.rank, "runs": n}

    def _log(self, msg: str) -> None:
        print(f"[sdpg-sweep] worker {self.worker_index}: {msg}", file=sys.stderr, flush=True)

    def _lead(self, ranks: _Ranks | None) -> dict:
        sw, spec = self.sweep, self.sweep.spec
        study = load_study(sw)
        study.sampler = make_sampler(
            spec, worker_seed(spec.sampler.seed, self.worker_index, len(study.get_trials(deepcopy=False)))
        )
        journal = sw.storage_url.startswith("journal:")
        exp = sw.experiment_tracker().open(log_spec=False)
        handler = signal.getsignal(signal.SIGUSR2)  # submitit's: requeue this worker
        done_here, dropped = 0, 0
        try:
            while True:
                if journal:
                    reap_stale_trials(study, spec.heartbeat_s, log=self._log)
                if finished_count(study) >= spec.n_trials:
                    break
                trial, params, dup_of = self._propose(study)
                if dup_of is not None:
                    dropped += 1
                    if dropped >= 50:
                        self._log(
                            "the sampler proposed 50 points in a row that other trials already hold: "
                            "the space looks exhausted; stopping"
                        )
                        break
                    continue
                dropped = 0
                state, value, preempted = self._run_trial(study, trial, params, exp, ranks)
                if self._desync:  # the other tasks are inside that trial's training: they cannot follow
                    raise RuntimeError(
                        f"trial {trial.number} failed on rank 0 while the worker's other tasks trained it; "
                        "this worker stops (its other tasks end when rank 0's connections close)"
                    )
                if preempted:
                    if ranks is not None:
                        ranks.send(None)
                        ranks = None
                    if callable(handler):  # checkpoint() below, requeue, exit
                        handler(signal.SIGUSR2, None)
                    return {"worker": self.worker_index, "trials_run": done_here, "preempted": True}
                done_here += state in FINISHED
                self._log(
                    f"trial {trial.number} {state.lower()} {'' if value is None else f'value {value:.4f} '}"
                    f"params {params}; {progress_line(study, spec.n_trials)}"
                )
        finally:
            if ranks is not None and not self._desync:
                ranks.send(None)
        self._end_parent_if_done(study, exp)
        return {"worker": self.worker_index, "trials_run": done_here}

    def _propose(self, study):
        """(trial, params, number of the trial already holding this point or None). Under the ask
        lock: ask, suggest, compare with running and finished trials, claim."""
        import optuna
        from optuna.trial import TrialState

        sw, spec = self.sweep, self.sweep.spec
        with _ask_lock(sw.output_dir):
            trial = study.ask()
            params = {}
            for k, p in spec.space.items():
                if p.type == "categorical":
                    params[k] = trial.suggest_categorical(k, p.choices)
                elif p.type == "int":
                    params[k] = trial.suggest_int(k, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
                else:
                    params[k] = trial.suggest_float(k, p.low, p.high, step=p.step, log=p.log)
            key = sw.point_key(params)
            holders = [
                t.number
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED))
                if t.number != trial.number and t.user_attrs.get("sdpg.point") == key
            ]
            if holders:
                trial.set_user_attr("sdpg.duplicate_of", holders[0])
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                self._log(f"trial {trial.number} dropped: params {params} are trial {holders[0]}'s point")
                return trial, params, holders[0]
            trial.set_user_attr("sdpg.point", key)
            trial.set_user_attr("sdpg.worker", f"{socket.gethostname()}:{os.getpid()}:{os.environ.get('SLURM_JOB_ID', '-')}")
        return trial, params, None

    def _run_trial(self, study, trial, params: dict, exp: Experiment, ranks: _Ranks | None):
        """Train the trial's seeds as TrainJobs; tell Optuna. Returns (state, value, preempted)."""
        import optuna

        from sdpg.orchestration import tracking

        sw, spec = self.sweep, self.sweep.spec
        hb = _Heartbeat(study, trial._trial_id, spec.heartbeat_s) if sw.storage_url.startswith("journal:") else None
        origin = trial.user_attrs.get("sdpg.retry_of", trial.number)
        rid, sent = None, False
        try:
            per_seed, pruned_at = [], None
            for si, seed in enumerate(spec.seeds):
                cfg = sw.trial_config(params, seed, origin, f"{sw.path}: trial {trial.number}")
                rid = exp.child(
                    f"{spec.name}/trial{origin}/s{seed}",
                    f"trial{trial.number}-s{seed}",
                    cfg,
                    tags={
                        "sdpg.trial": trial.number,
                        "seed": seed,
                        "method": cfg.algo.method,
                        "run_hash": cfg.effective().config_hash(),
                        "variant": f"trial{trial.number}",
                        "sdpg.trial_params": json.dumps(params),
                    },
                )
                if trial.number != origin:
                    tracking.retry(exp.client.set_tag, rid, "sdpg.trial", trial.number)
                hook = OptunaTrial(trial, spec.objective.metric, prune=(si == 0 and spec.pruner.type != "none"))
                if ranks is not None:
                    ranks.send({"config": cfg.resolved()})
                    sent = True
                result = TrainJob(cfg.resolved(), sw.tracking_uri, rid).run(trial=hook, requeue=False)
                sent = False
                if result.get("status") == "busy":
                    raise RuntimeError(
                        f"trial folder {result['output_dir']} is being trained by another process ({result.get('holder')})"
                    )
                if result.get("preempted"):
                    _requeue_trial(study, study._storage.get_trial(trial._trial_id))
                    self._log(f"trial {trial.number} preempted at step {result['step']}: re-enqueued; requeueing")
                    return "PREEMPTED", None, True
                if hook.pruned_at is not None:
                    pruned_at = hook.pruned_at
                    break
                values = hook.values
                if not values:  # the metric was never logged: read the final one
                    m = result["metrics"].get(spec.objective.metric)
                    values = [(result["step"], m)] if m is not None else []
                per_seed.append(reduce_values(values, spec.objective.reduce, spec.objective.direction))
            if pruned_at is not None:
                trial.set_user_attr("sdpg.pruned_at_step", pruned_at)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return "PRUNED", None, False
            value = float(sum(per_seed) / len(per_seed))
            if math.isnan(value):
                raise RuntimeError(f"objective metric {spec.objective.metric!r} was never logged")
            study.tell(trial, value)
            return "COMPLETE", value, False
        except Exception as e:  # noqa: BLE001 - a failed trial is recorded, the worker goes on
            tb = traceback.format_exc()
            self._log(f"trial {trial.number} failed: {tracking.redact(repr(e))}\n{tracking.redact(tb)}")
            with contextlib.suppress(Exception):
                trial.set_user_attr("sdpg.error", tracking.redact(f"{type(e).__name__}: {e}")[:2000])
            if rid is not None:
                with contextlib.suppress(Exception):
                    if tracking.retry(exp.client.get_run, rid).info.status not in tracking.TERMINAL:
                        tracking.fail_run(exp.client, rid, e, tb)
            with contextlib.suppress(Exception):
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self._desync = sent
            return "FAIL", None, False
        finally:
            if hb is not None:
                hb.stop()

    def _end_parent_if_done(self, study, exp: Experiment) -> None:
        """The budget is spent and no trial runs any more: the sweep's parent run is FINISHED."""
        from optuna.trial import TrialState

        if finished_count(study) >= self.sweep.spec.n_trials and not study.get_trials(
            deepcopy=False, states=(TrialState.RUNNING,)
        ):
            exp.end("FINISHED")

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(SweepWorker(self.sweep, self.worker_index))


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def launch(sweep: Sweep, workers: int | None = None, wait: bool | None = None, log=print) -> dict:
    """Start the workers (enqueueing the spec's points into a new study); with ``wait``, follow
    the trials by state, then end every run left open and print the table."""
    check_writable_folder(sweep.output_dir, str(sweep.path))
    from sdpg.orchestration.tracking import check_server

    check_server(sweep.tracking_uri, "tracking.uri", str(sweep.path))
    check_server(sweep.storage_url, "storage", str(sweep.path))
    fsio.check_no_links_below(  # every file the launch writes, before the first write
        sweep.output_dir,
        [
            sweep.output_dir / n
            for n in (
                ".sdpg-submit.lock",
                ".sdpg-store.lock",
                ".ask.lock",
                "jobs.json",
                "optuna.journal",
                "optuna.db",
                "mlflow.db",
            )
        ]
        + [sweep.output_dir / "submitit", sweep.output_dir / "trials"],
    )
    # Optuna's first study import stores an ImportError whose traceback keeps the calling frames
    # alive for the life of the process; made here, it pins this frame, which holds no jobs
    # (jobs pinned until exit print 'Exception ignored in LocalJob.__del__' at shutdown).
    load_study(sweep)
    return _launch(sweep, workers, wait, log)


def _launch(sweep: Sweep, workers: int | None, wait: bool | None, log) -> dict:
    from sdpg.orchestration import tracking
    from sdpg.training.locks import LockBusy, file_lock

    fsio.ensure_dir(sweep.output_dir)
    # One launcher at a time per spec: two launches at once both saw an empty study and enqueued the
    # spec's points twice, and both opened a new store.
    lock = file_lock(sweep.output_dir / ".sdpg-submit.lock", wait=False)
    try:
        lock.__enter__()
    except LockBusy as e:
        log(
            f"[sdpg-sweep] {sweep.spec.name} is being launched by another sdpg-sweep "
            f"({', '.join(f'{k} {v}' for k, v in e.holder.items())}); waiting for it"
        )
        lock = file_lock(sweep.output_dir / ".sdpg-submit.lock", wait=True)
        lock.__enter__()
    try:
        state_file = sweep.output_dir / "jobs.json"
        jobs_state = read_jobs(state_file, log, set_aside=True)
        live = active_jobs(jobs_state, list(jobs_state))
        attach = live
        if not live:
            study = load_study(sweep)
            if not study.get_trials(deepcopy=False):
                for point in sweep.spec.enqueue:
                    study.enqueue_trial(_typed(point, sweep.spec.space))
            if sweep.storage_url.startswith("journal:"):
                reap_stale_trials(study, sweep.spec.heartbeat_s, log=log)
            n = workers or sweep.spec.workers
            exp = sweep.experiment_tracker()
            if finished_count(study) >= sweep.spec.n_trials:
                log(f"[sdpg-sweep] {sweep.spec.name}: {progress_line(study, sweep.spec.n_trials)}; nothing to do")
                return {"jobs": []}
            exp.open()  # the store, experiment and parent run, once, here
            ex = make_executor(sweep.executor, sweep.output_dir / "submitit", sweep.profile, sweep.spec.name, n)
            workers_ = [SweepWorker(sweep, i) for i in range(n)]
            if sweep.executor == "local":
                jobs = [ex.submit(w) for w in workers_]
            else:
                with ex.batch():
                    jobs = [ex.submit(w) for w in workers_]
            now, host = time.time(), socket.gethostname()
            for i, j in enumerate(jobs):
                rec = {"job_id": str(j.job_id), "executor": sweep.executor, "host": host, "submitted_at": now}
                jobs_state[f"worker-{i}"] = {"jobs": [*job_history(jobs_state.get(f"worker-{i}", {})), rec]}
            write_jobs(state_file, jobs_state)
    finally:
        lock.__exit__(None, None, None)
    if attach:
        return _attach(sweep, attach, jobs_state, wait, log)
    log(
        f"[sdpg-sweep] {sweep.spec.name}: {n} workers ({sweep.executor}): jobs {', '.join(str(j.job_id) for j in jobs)}; "
        f"storage {tracking.redact(sweep.storage_url)}; MLflow {tracking.redact(sweep.tracking_uri)}"
    )
    log(
        f"[sdpg-sweep] watch: optuna-dashboard {_dashboard_arg(sweep.storage_url)}   |   "
        f"mlflow ui --backend-store-uri {tracking.redact(sweep.tracking_uri)}"
    )
    if wait if wait is not None else sweep.executor == "local":
        last = ""
        try:
            while not all(j.done() for j in jobs):
                line = progress_line(load_study(sweep), sweep.spec.n_trials)
                if line != last:
                    log(f"[sdpg-sweep] {line}")
                    last = line
                time.sleep(2)
            errors = []
            for j in jobs:
                try:
                    j.results()
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(f"worker job {j.job_id}: {job_error(e)}")
        finally:
            _settle(sweep, exp, jobs)
        log(status(sweep))
        if errors:
            raise RuntimeError("some workers failed:\n" + "\n".join(errors))
    return {"jobs": jobs}


def _attach(sweep: Sweep, live: dict[str, str], jobs_state: dict, wait: bool | None, log) -> dict:
    """Workers of an earlier launch are still queued or running: follow them instead of starting more
    (a second launch used to add its own workers beside them). With ``wait``, progress by trial state
    until they end, then the table; their launcher ends the runs they leave open."""
    log(
        f"[sdpg-sweep] {sweep.spec.name}: {len(live)} workers of an earlier launch are still queued or running "
        f"(jobs {', '.join(sorted(set(live.values())))}); attached, no new workers started"
    )
    if wait if wait is not None else sweep.executor == "local":
        last = ""
        while active_jobs(jobs_state, list(live)):
            line = progress_line(load_study(sweep), sweep.spec.n_trials)
            if line != last:
                log(f"[sdpg-sweep] {line}")
                last = line
            time.sleep(2)
        log(status(sweep))
    return {"jobs": [], "attached": live}


def _settle(sweep: Sweep, exp: Experiment, jobs: list) -> None:
    """After waiting for every worker: trial runs left open by a worker that died are FAILED, the
    parent run ends (FINISHED when the budget is spent, else KILLED), local jobs are released."""
    from sdpg.orchestration import tracking

    c = exp.client
    for r in tracking.child_runs(c, exp.ids()[1]):
        if r.info.status not in tracking.TERMINAL:
            tracking.fail_run(c, r.info.run_id, "its worker ended without finishing it")
    done = finished_count(load_study(sweep)) >= sweep.spec.n_trials
    exp.end("FINISHED" if done else "KILLED")
    for j in jobs:
        if hasattr(j, "_cancel_at_deletion"):
            j._cancel_at_deletion = False


def _dashboard_arg(url: str) -> str:
    return url[len("journal:") :] if url.startswith("journal:") else url


def _storage_exists(url: str) -> bool:
    if url.startswith("journal:"):
        return Path(url[len("journal:") :]).is_file()
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :]).is_file()
    return True  # a database server: ask it


def status(sweep: Sweep) -> str:
    """The trials (duplicates left out) with state, value, parameters; pruned ones marked with the
    step they were stopped at; counts by state; the best complete trial."""
    from optuna.trial import TrialState

    if not _storage_exists(sweep.storage_url):
        where = _dashboard_arg(sweep.storage_url)
        return f"{sweep.spec.name}: no study yet (nothing at {where}); start it with sdpg-sweep {sweep.path}"
    study = load_study_read_only(sweep)
    trials = [t for t in study.get_trials(deepcopy=False) if not is_duplicate(t)]
    keys = list(sweep.spec.space)
    rows = [["trial", "state", "value", *keys, "note"]]
    for t in trials:
        note = ""
        state = {"FAIL": "failed"}.get(t.state.name, t.state.name.lower())
        value = f"{t.value:.4f}" if t.value is not None and t.state == TrialState.COMPLETE else "-"
        if t.state == TrialState.PRUNED:
            at = t.user_attrs.get("sdpg.pruned_at_step", t.last_step)
            state = f"pruned@{at}"
            if t.intermediate_values:
                value = f"({t.intermediate_values[max(t.intermediate_values)]:.4f})"
            note = f"pruned at step {at}; value in () is its last evaluation, not a result"
        elif t.state == TrialState.FAIL:
            note = t.user_attrs.get("sdpg.error", "") or ("worker lost; retried" if t.user_attrs.get("sdpg.heartbeat") else "")
        if "sdpg.retry_of" in t.user_attrs:
            note = (note + "; " if note else "") + f"retry of trial {t.user_attrs['sdpg.retry_of']}"
        rows.append([str(t.number), state, value, *(_fmt(t.params.get(k, "-")) for k in keys), note[:120]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append("")
    lines.append(progress_line(study, sweep.spec.n_trials))
    if any(t.state == TrialState.COMPLETE for t in trials):
        b = study.best_trial
        lines.append(f"best: trial {b.number} value {b.value:.4f} params {b.params} (complete trials only)")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def export(sweep: Sweep, out: str | Path | None = None, seeds: list[int] | None = None) -> Path:
    """An ablation spec with the best trial's coefficients as a variant beside the base."""
    if out:
        fsio.check_writable_target(fsio.expand_path(out, "--out"))
    if not _storage_exists(sweep.storage_url):
        raise ConfigError(f"{sweep.path}: no study yet (nothing at {_dashboard_arg(sweep.storage_url)}); nothing to export")
    study = load_study_read_only(sweep)
    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"{sweep.path}: no complete trial yet; nothing to export") from None
    out = fsio.expand_path(out, "--out") if out else Path("ablations") / f"{sweep.spec.name}_best.yaml"
    base = sweep.base
    same = (
        build_config(apply_layer(base, dict(best.params))).effective().config_hash()
        == build_config(base).effective().config_hash()
    )
    variants = {"best": dict(best.params)} if same else {"base": {}, "best": dict(best.params)}
    spec = {
        "name": f"{sweep.spec.name}_best",
        "base": base,
        "variants": variants,
        "seeds": seeds or [0, 1, 2],
        "executor": sweep.spec.executor,
        **({"profile": sweep.spec.profile} if sweep.spec.profile else {}),
    }
    header = (
        f"# Exported by sdpg-sweep from {sweep.path}: best trial {best.number}, "
        f"{sweep.spec.objective.metric} ({sweep.spec.objective.reduce}) = {best.value:.4f}\n"
    )
    fsio.write_text(out, header + yaml.safe_dump(spec, sort_keys=False))
    return out
