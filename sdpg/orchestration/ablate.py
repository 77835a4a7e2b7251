"""sdpg-ablate: a declarative grid of runs, resolved and hashed before anything is submitted.

A spec (``ablations/*.yaml``) is a diff against a base trainer config:

    name: std_norm
    base: ../sdpg/training/configs/embedded.yaml       # path relative to the spec, ``embedded``, or a mapping
    overrides: {run.total_steps: 60}          # applied to every run
    variants: {full: {}, no_std_norm: {algo.std_norm: false}}
    grid: {algo.kl_mode: [urkl, ufkl]}        # optional axes whose values multiply
    seeds: [0, 1, 2]
    executor: local                           # local | debug | slurm (with profile:) | a profile name
    tracking: {uri: null, experiment: null}   # default: SQLite in the spec's output folder

Each run = base + overrides + variant + grid point + seed, validated as a full TrainConfig and named
by the hash of its resolved content. Resubmitting skips finished runs, resumes unfinished ones from
their checkpoints, and reuses each hash's MLflow run.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator

from sdpg.training.config import ConfigError, TrainConfig, apply_layer, build_config, load_yaml
from sdpg.paths import DEFAULT_CONFIG_PATH
from sdpg.orchestration.launch import EXECUTORS, TrainJob, make_executor
from sdpg.orchestration.specs import SlurmProfile, Strict, load_profile, read_yaml, subcommand_parser, validate

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class TrackingSpec(Strict):
    uri: str | None = None
    """MLflow tracking URI; None: ``sqlite:///<output_dir>/mlflow.db``. Use an ``mlflow server``
    (``http://host:5000``) when many jobs write at once."""
    experiment: str | None = None
    """MLflow experiment; None: the spec's name."""


class AblationSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    """Name of the ablation: the MLflow experiment and the output folder."""
    base: str | dict[str, Any] = "embedded"
    """Trainer config: a YAML path (relative to the spec file), ``embedded`` (the built-in default)
    or an inline mapping."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Diff applied to every run (dotted keys allowed)."""
    variants: dict[str, dict[str, Any] | None] = Field(min_length=1)
    """Named diffs on the base; ``{}`` is the base itself."""
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    """Axes (dotted trainer keys) whose value lists multiply with the variants."""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    """One run per seed (``run.seed``)."""
    executor: str = "local"
    """``local`` (processes here), ``debug`` (this process), ``slurm`` (with ``profile``) or a profile name."""
    profile: str | None = None
    """SLURM profile from ``slurm/`` (or $SDPG_SLURM_PROFILES)."""
    max_parallel: int = Field(4, gt=0)
    """Runs at a time (SLURM array parallelism)."""
    output_dir: str | None = None
    """Where runs, logs and the default MLflow store go; None: ``outputs/<name>``."""
    tracking: TrackingSpec = TrackingSpec()
    """MLflow settings."""

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v):
        import re

        for name in v:
            if not re.match(NAME_PATTERN, str(name)):
                raise ValueError(f"variant name {name!r} must match {NAME_PATTERN}")
        return v

    @field_validator("grid")
    @classmethod
    def _grid_axes(cls, v):
        for axis, values in v.items():
            if not values:
                raise ValueError(f"grid axis {axis!r} has no values")
            if len({json.dumps(x, sort_keys=True) for x in values}) != len(values):
                raise ValueError(f"grid axis {axis!r} repeats a value: {values}")
        return v

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat: {v}")
        return v


@dataclass
class Run:
    name: str
    variant: str
    grid: dict[str, Any]
    seed: int
    config: TrainConfig
    hash: str
    diff: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    spec: AblationSpec
    path: Path
    output_dir: Path
    runs: list[Run]
    executor: str
    profile: SlurmProfile | None
    tracking_uri: str
    experiment: str


def _short(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def load_plan(path: str | Path, executor: str | None = None, profile: str | None = None,
              only: list[str] | None = None) -> Plan:
    """Read, resolve and validate a spec into a plan; raises ConfigError naming file and key."""
    path = Path(path)
    spec = validate(AblationSpec, read_yaml(path, "ablation spec"), str(path))
    src = str(path)
    # base config
    if isinstance(spec.base, dict):
        base = spec.base
    elif spec.base == "embedded":
        base = load_yaml(DEFAULT_CONFIG_PATH)
    else:
        bp = (path.parent / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
        if not bp.is_file():
            raise ConfigError(f"{src}: key 'base' has bad value {spec.base!r}: no such file {bp}")
        base = load_yaml(bp)
    base = apply_layer(base, spec.overrides)
    # executor and profile
    kind = executor or spec.executor
    prof_name = profile or spec.profile
    if kind not in EXECUTORS:  # a profile name
        prof_name, kind = kind, "slurm"
    prof = load_profile(prof_name, f"{src}: key 'profile'") if prof_name else None
    if kind == "slurm" and prof is None:
        prof = load_profile("dev", f"{src}: key 'profile'")
    out = Path(spec.output_dir) if spec.output_dir else Path("outputs") / spec.name
    if not out.is_absolute():
        out = Path.cwd() / out
    filters = dict(f.split("=", 1) for f in (only or []))
    # runs: variant x grid point x seed
    axes = list(spec.grid)
    points = [dict(zip(axes, combo)) for combo in itertools.product(*(spec.grid[a] for a in axes))] or [{}]
    runs: list[Run] = []
    seen: dict[str, str] = {}
    for vname, vdiff in spec.variants.items():
        for point in points:
            for seed in spec.seeds:
                layer = dict(vdiff or {})
                where = f"{src}: variants.{vname}"
                data = apply_layer(base, layer)
                if point:
                    data = apply_layer(data, point)
                    where += " with grid " + ",".join(f"{k}={_short(v)}" for k, v in point.items())
                data = apply_layer(data, {"run.seed": seed})
                cfg = build_config(data, where)
                h = cfg.config_hash()
                gname = "-".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in point.items())
                name = f"{vname}{'-' + gname if gname else ''}-s{seed}"
                if h in seen:
                    raise ConfigError(f"{src}: runs {seen[h]!r} and {name!r} resolve to the same config (hash {h}); "
                                      f"variants must differ")
                seen[h] = name
                cfg.run.output_dir = str(out / "runs" / f"{name}-{h[:8]}")
                diff = {**(vdiff or {}), **point}
                run = Run(name=name, variant=vname, grid=point, seed=seed, config=cfg, hash=h, diff=diff)
                if all(_matches(run, k, v) for k, v in filters.items()):
                    runs.append(run)
    uri = spec.tracking.uri or None
    from sdpg.orchestration.tracking import default_uri

    return Plan(spec=spec, path=path, output_dir=out, runs=runs, executor=kind, profile=prof,
                tracking_uri=uri or default_uri(out), experiment=spec.tracking.experiment or spec.name)


def _matches(run: Run, key: str, value: str) -> bool:
    if key == "variant":
        return run.variant == value
    if key == "seed":
        return str(run.seed) == value
    cur: Any = run.config.resolved()
    for part in key.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return str(cur).lower() == value.lower()


# --------------------------------------------------------------------------------------------
# State of runs: from their folders (and MLflow when present)
# --------------------------------------------------------------------------------------------


def run_state(run: Run) -> tuple[str, int, dict]:
    """(state, last step, last metrics) from the run's folder: new, partial, running?, finished."""
    out = Path(run.config.run.output_dir)
    res = out / "result.json"
    last, metrics = 0, {}
    mfile = out / "metrics.jsonl"
    if mfile.is_file():
        lines = [ln for ln in mfile.read_text().splitlines() if ln.strip()]
        if lines:
            metrics = json.loads(lines[-1])
            last = metrics.get("step", 0)
    if res.is_file():
        r = json.loads(res.read_text())
        if r.get("status") == "finished" and r.get("step") == run.config.run.total_steps:
            return "finished", last, metrics
    if any((out / "checkpoints").glob("*.pt")) if (out / "checkpoints").is_dir() else False:
        return "partial", last, metrics
    return ("started" if last else "new"), last, metrics


def table(plan: Plan, extra: dict[str, str] | None = None) -> str:
    rows = [("run", "variant", "diff", "seed", "hash", "state", "step")]
    for r in plan.runs:
        state, step, _ = run_state(r)
        if extra and r.hash in extra:
            state = extra[r.hash]
        diff = ", ".join(f"{k}={_short(v)}" for k, v in r.diff.items()) or "(base)"
        rows.append((r.name, r.variant, diff, str(r.seed), r.hash[:8], state, f"{step}/{r.config.run.total_steps}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Submission
# --------------------------------------------------------------------------------------------


def submit(plan: Plan, max_parallel: int | None = None, wait: bool | None = None, log=print) -> dict:
    """Create the MLflow experiment, parent and child runs, submit the unfinished runs as one job
    array, record job ids in ``<output_dir>/jobs.json``; wait for local runs."""
    from sdpg.orchestration import tracking

    todo = [r for r in plan.runs if run_state(r)[0] != "finished"]
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    c = tracking.client(plan.tracking_uri)
    exp_id = tracking.get_or_create_experiment(c, plan.experiment)
    commit = tracking.git_commit()
    parent = tracking.ensure_parent_run(c, exp_id, plan.spec.name, "ablation", {"sdpg.spec_file": str(plan.path)})
    tracking.retry(c.log_text, parent, plan.path.read_text(), "ablation_spec.yaml")
    run_ids = {}
    for r in plan.runs:
        cfg_yaml = yaml.safe_dump(r.config.resolved(), sort_keys=False)
        rid, _ = tracking.ensure_child_run(
            c, exp_id, parent, r.hash, r.name,
            tags={"variant": r.variant, "seed": r.seed, "method": r.config.algo.method, "run_hash": r.hash,
                  "git_commit": commit, "spec": plan.spec.name, "grid": json.dumps(r.grid)},
            params=tracking.flatten(r.config.resolved()), config_yaml=cfg_yaml,
        )
        run_ids[r.hash] = rid
    state_file = plan.output_dir / "jobs.json"
    jobs_state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if not todo:
        log(f"[sdpg-ablate] all {len(plan.runs)} runs of {plan.spec.name} are finished; nothing submitted")
        return {"submitted": [], "experiment_id": exp_id, "parent_run_id": parent}
    ex = make_executor(plan.executor, plan.output_dir / "submitit", plan.profile, plan.spec.name,
                       max_parallel or plan.spec.max_parallel)
    fns = [TrainJob(r.config.resolved(), plan.tracking_uri, run_ids[r.hash]) for r in todo]
    if plan.executor == "local":
        jobs = _submit_local(ex, fns, max_parallel or plan.spec.max_parallel,
                             lambda js: log("[sdpg-ablate] " + _progress(todo, js)))
    else:
        with ex.batch():
            jobs = [ex.submit(f) for f in fns]
    for r, j in zip(todo, jobs):
        jobs_state[r.hash] = {"name": r.name, "job_id": str(j.job_id), "executor": plan.executor,
                              "mlflow_run_id": run_ids[r.hash], "submitted_at": time.time()}
    state_file.write_text(json.dumps(jobs_state, indent=1))
    log(f"[sdpg-ablate] submitted {len(todo)} of {len(plan.runs)} runs ({len(plan.runs) - len(todo)} finished) "
        f"with the {plan.executor} executor: job ids {', '.join(str(j.job_id) for j in jobs)}")
    log(f"[sdpg-ablate] logs: {plan.output_dir / 'submitit'}")
    log(f"[sdpg-ablate] MLflow: experiment {plan.experiment!r} (id {exp_id}) at {tracking.redact(plan.tracking_uri)}; "
        f"view with: mlflow ui --backend-store-uri {tracking.redact(plan.tracking_uri)}")
    if wait if wait is not None else plan.executor in ("local", "debug"):
        watch(plan, jobs, todo, log=log)
        log(status(plan))
        log(f"[sdpg-ablate] done; open the runs with: mlflow ui --backend-store-uri {tracking.redact(plan.tracking_uri)}")
    return {"submitted": [r.hash for r in todo], "jobs": jobs, "experiment_id": exp_id, "parent_run_id": parent}


def _submit_local(ex, fns, max_parallel: int, progress=None, every_s: float = 10.0):
    """submitit's local executor starts every job at once; start them max_parallel at a time,
    reporting progress meanwhile."""
    jobs, pending = [], list(fns)
    running: list = []
    last = time.time()
    while pending:
        running = [j for j in running if not j.done()]
        while pending and len(running) < max_parallel:
            j = ex.submit(pending.pop(0))
            jobs.append(j)
            running.append(j)
        if pending:
            time.sleep(1.0)
            if progress is not None and time.time() - last >= every_s:
                progress(jobs)
                last = time.time()
    return jobs


def _last_log_line(job) -> str:
    try:
        lines = [ln.strip() for ln in Path(job.paths.stderr).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "queued"
    useful = [ln for ln in lines if ln.startswith("[")]
    return (useful or lines or ["starting"])[-1][:90]


def _progress(runs: list[Run], jobs: list) -> str:
    """One line: each run's step and accuracy; before its first step, its job's last log line;
    ``queued`` for runs not started yet."""
    parts = []
    for i, r in enumerate(runs):
        _, step, m = run_state(r)
        acc = m.get("train/accuracy")
        if i >= len(jobs):
            parts.append(f"{r.name}: queued")
        elif step == 0 and not jobs[i].done():
            parts.append(f"{r.name}: {_last_log_line(jobs[i])}")
        else:
            parts.append(f"{r.name}: {step}/{r.config.run.total_steps}" + (f" acc {acc:.2f}" if acc is not None else ""))
    return " | ".join(parts)


def watch(plan: Plan, jobs: list, runs: list[Run] | None = None, log=print, every_s: float = 10.0) -> None:
    """Progress lines until every job is done: each run's step and accuracy, or, before its first
    step, the last line its job logged (e.g. the base model's build). Raises if any failed."""
    runs = runs or plan.runs
    last_print = 0.0
    while True:
        done = [j.done() for j in jobs]
        if time.time() - last_print >= every_s or all(done):
            log("[sdpg-ablate] " + _progress(runs, jobs))
            last_print = time.time()
        if all(done):
            break
        time.sleep(1.0)
    failed = []
    for j in jobs:
        try:
            j.results()[0]
        except Exception as e:
            failed.append(f"job {j.job_id}: {str(e).strip().splitlines()[-1] if str(e).strip() else e!r}")
    if failed:
        raise RuntimeError("some runs failed:\n" + "\n".join(failed))


def status(plan: Plan) -> str:
    """Each run's state and last metrics, from its folder, the scheduler and MLflow."""
    state_file = plan.output_dir / "jobs.json"
    jobs = json.loads(state_file.read_text()) if state_file.is_file() else {}
    sched = _scheduler_states([v["job_id"] for v in jobs.values() if v.get("executor") == "slurm"])
    extra = {}
    for h, v in jobs.items():
        s = sched.get(v["job_id"])
        if s and s not in ("COMPLETED",):
            extra[h] = f"{s.lower()} ({v['job_id']})"
    lines = [table(plan, extra), ""]
    for r in plan.runs:
        _, step, m = run_state(r)
        keys = [k for k in sorted(m) if k.startswith("eval/") and "mean@" in k] + ["train/accuracy", "train/entropy"]
        shown = " ".join(f"{k}={m[k]:.3f}" for k in keys if k in m)
        if shown:
            lines.append(f"{r.name}: {shown}")
    return "\n".join(lines)


def _scheduler_states(job_ids: list[str]) -> dict[str, str]:
    import subprocess

    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    res = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            res[parts[0].split("_")[0] if "_[" in parts[0] else parts[0]] = parts[1]
    return res


def cancel(plan: Plan, log=print) -> int:
    import subprocess

    state_file = plan.output_dir / "jobs.json"
    jobs = json.loads(state_file.read_text()) if state_file.is_file() else {}
    ids = [v["job_id"] for h, v in jobs.items() if v.get("executor") == "slurm" and h in {r.hash for r in plan.runs}]
    if not ids:
        log("[sdpg-ablate] no SLURM jobs recorded for this spec")
        return 0
    subprocess.run(["scancel", *ids], check=False)
    log(f"[sdpg-ablate] cancelled {len(ids)} jobs: {', '.join(ids)}")
    return len(ids)


def main(argv: list[str] | None = None) -> int:
    import argparse

    sub, argv, p = subcommand_parser("sdpg-ablate", ("status", "cancel"),
                                     "Submit, inspect or cancel a grid of runs from an ablation spec.", argv)
    p.add_argument("--executor", choices=EXECUTORS)
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="keep runs whose variant / seed / resolved config key equals VALUE")
    if sub == "run":
        p.add_argument("--dry-run", action="store_true", help="print the runs; submit nothing")
        p.add_argument("--rehearse", action="store_true",
                       help="run every run here for 2 steps on a shrunk model with its own MLflow store; submit nothing")
        p.add_argument("--rehearse-model", metavar="PATH",
                       help="with --rehearse: a local folder (config.json and tokenizer) standing in for model.path")
        p.add_argument("--rehearse-dir", metavar="DIR", help="with --rehearse: its folder (default rehearsals/NAME)")
        p.add_argument("--max-parallel", type=int)
        p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                       help="wait for the runs (default: yes for local/debug, no for slurm)")
    a = p.parse_args(argv)
    try:
        for f in a.only:
            if "=" not in f:
                raise ConfigError(f"--only {f!r}: expected KEY=VALUE")
        plan = load_plan(a.spec, a.executor, a.profile, a.only)
        if sub == "run" and a.max_parallel is not None and a.max_parallel < 1:
            raise ConfigError(f"--max-parallel {a.max_parallel}: must be at least 1")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if sub == "status":
        print(status(plan))
        return 0
    if sub == "cancel":
        cancel(plan)
        return 0
    print(f"{plan.spec.name}: {len(plan.runs)} runs, executor {plan.executor}"
          f"{' (profile ' + plan.spec.profile + ')' if plan.spec.profile else ''}, output {plan.output_dir}")
    print(table(plan))
    if a.dry_run:
        return 0
    if a.rehearse:
        from sdpg.orchestration.rehearse import rehearse_plan

        try:
            return rehearse_plan(plan, a.rehearse_model, a.rehearse_dir)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        submit(plan, a.max_parallel, a.wait, log=lambda m: print(m, file=sys.stderr, flush=True))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
