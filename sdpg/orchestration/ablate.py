"""sdpg-ablate: a declarative grid of runs, resolved and hashed before anything is submitted.

A spec (``ablations/*.yaml``) is a diff against a base trainer config:

    name: std_norm
    base: ../sdpg/training/configs/embedded.yaml       # path relative to the spec, ``embedded``, or a mapping
    overrides: {run.total_steps: 60}          # applied to every run
    variants: {full: {}, no_std_norm: {algo.std_norm: false}}
    grid:                                     # optional axes whose values multiply
      algo.kl_mode: [urkl, ufkl]              #   a trainer key and its values, or
      task:                                   #   named groups of overrides (a mapping)
        sum: {}
        chain: {data.train: embedded_chain, model.embedded.task: chain}
    seeds: [0, 1, 2]
    executor: local                           # local | debug | slurm (with profile:) | a profile name
    tracking: {uri: null, experiment: null}   # default: SQLite in the spec's output folder

Each run = base + overrides + variant + grid point + seed, validated as a full TrainConfig and named
by the hash of its resolved content. A grid point of a named-groups axis is the group's name (run names
``grpo-task=chain-s0``, the MLflow tag ``grid.task=chain``, ``--only task=chain``); its overrides are
applied like any other layer, so the run's identity is its effective config, never the group's name.
Resubmitting skips finished runs, resumes unfinished ones from their checkpoints, and reuses each hash's
MLflow run.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from sdpg import fsio
from sdpg.orchestration import scheduler
from sdpg.orchestration.core import (
    NAME_PATTERN,
    Experiment,
    TrackingSpec,
    active_jobs,
    check_experiment_name,
    check_folder_kind,
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
from sdpg.orchestration.launch import TrainJob, make_executor
from sdpg.orchestration.specs import (
    ReportOptions,
    SlurmProfile,
    read_yaml,
    validate,
)
from sdpg.training.config import (
    ConfigError,
    FolderPath,
    Seed,
    Strict,
    TrainConfig,
    apply_layer,
    build_config,
    deep_merge,
    expand_dotted,
)
from sdpg.training.metrics import is_mean_at
from sdpg.training.records import jsonl_rows, read_json_object

__all__ = [
    "NAME_PATTERN",
    "AblationSpec",
    "Plan",
    "Run",
    "TrackingSpec",
    "cancel",
    "load_plan",
    "run_state",
    "status",
    "submit",
    "table",
    "watch",
]


def _same_value(x: Any, y: Any) -> bool:
    """Two grid values that configure the same thing: numbers equal as numbers (0.0 and -0.0, 1 and 1.0; a
    boolean is not a number), anything else equal as JSON."""

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if number(x) and number(y):
        return bool(x == y)
    return json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)


class AblationSpec(Strict):
    name: str
    """Name of the ablation: the MLflow experiment and the output folder (``[A-Za-z0-9._-]``, at most 100
    characters, no leading dot)."""
    base: str | dict[str, Any] = "embedded"
    """Trainer config: a YAML path (relative to the spec file), ``embedded`` (the built-in default)
    or an inline mapping."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Diff applied to every run (dotted keys allowed)."""
    variants: dict[str, dict[str, Any] | None] = Field(min_length=1)
    """Named diffs on the base; ``{}`` is the base itself."""
    grid: dict[str, Any] = Field(default_factory=dict)
    """Axes that multiply with the variants: a dotted trainer key with a list of its values, or an axis name
    (a word, no dot) with a mapping of named groups, each a diff like a variant (``task: {sum: {}, chain:
    {data.train: embedded_chain}}``)."""
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    """One run per seed (``run.seed``), each in [0, 2**32)."""
    executor: str = "local"
    """``local`` (processes here), ``debug`` (this process), ``slurm`` (with ``profile``) or a profile name."""
    profile: str | None = None
    """SLURM profile from ``slurm/`` (or $SDPG_SLURM_PROFILES)."""
    max_parallel: int = Field(4, gt=0)
    """Runs at a time (SLURM array parallelism)."""
    output_dir: FolderPath | None = None
    """Where runs, logs and the default MLflow store go; None: ``outputs/<name>``."""
    tracking: TrackingSpec = TrackingSpec()
    """MLflow settings."""
    report: ReportOptions = ReportOptions()
    """How ``sdpg-report`` reads this ablation (``compare: previous`` for a chain of one-piece steps)."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v):
        from sdpg.orchestration.names import name_problem

        why = name_problem(v)
        if why is not None:
            raise ValueError(f"a name {why}")
        return v

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v):
        from sdpg.orchestration.names import name_problem, short_repr

        for name in v:
            why = name_problem(name)
            if why is not None:
                raise ValueError(f"variant name {short_repr(name)}: a name {why}")
        return v

    @field_validator("grid")
    @classmethod
    def _grid_axes(cls, v):
        from sdpg.orchestration.names import name_problem, short_repr

        for axis, values in v.items():
            if isinstance(values, dict):  # named groups of overrides
                why = name_problem(axis)
                if why is None and "." in axis:
                    why = "is an axis of named groups, not a trainer key: it must not hold a dot"
                if why is not None:
                    raise ValueError(f"grid axis {short_repr(axis)} (named groups): a name {why}")
                if not values:
                    raise ValueError(f"grid axis {axis!r} has no groups")
                seen: dict[str, str] = {}
                for group, diff in values.items():
                    why = name_problem(group)
                    if why is not None:
                        raise ValueError(f"grid.{axis} group {short_repr(group)}: a name {why}")
                    if diff is not None and not isinstance(diff, dict):
                        raise ValueError(
                            f"grid.{axis}.{group} has bad value {short_repr(diff)}: a group is a mapping of "
                            f"overrides ({{}} for the base itself)"
                        )
                    text = json.dumps(expand_dotted(diff or {}), sort_keys=True, default=str)
                    if text in seen:
                        raise ValueError(f"grid.{axis}: groups {seen[text]!r} and {group!r} are the same overrides")
                    seen[text] = group
                continue
            if not isinstance(values, list):
                raise ValueError(
                    f"grid axis {short_repr(axis)} has bad value {short_repr(values)}: expected a list of values "
                    f"(a trainer key's axis) or a mapping of named groups of overrides"
                )
            if not values:
                raise ValueError(f"grid axis {axis!r} has no values")
            for i, x in enumerate(values):
                same = [y for y in values[:i] if _same_value(x, y)]
                if same:  # 0.0 and -0.0, 1 and 1.0: one value, which would train one run twice
                    raise ValueError(f"grid axis {axis!r} repeats a value: {same[0]!r} and {x!r} are equal")
        return v

    def group_axes(self) -> list[str]:
        """The grid axes that hold named groups of overrides (in spec order)."""
        return [a for a, v in self.grid.items() if isinstance(v, dict)]

    def grid_layer(self, point: dict[str, Any]) -> dict[str, Any]:
        """The overrides of one grid point: a named group's diff, a trainer key's value."""
        layer: dict[str, Any] = {}
        for axis, value in point.items():
            if isinstance(self.grid[axis], dict):
                layer = deep_merge(layer, expand_dotted(self.grid[axis][value] or {}))
            else:
                layer = deep_merge(layer, expand_dotted({axis: value}))
        return layer

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat: {v}")
        return v


@dataclass
class Run:
    """One name of the grid. ``hash`` is the hash of its effective config (its identity); a run
    whose effective config repeats an earlier one has ``same_as`` set to that run's name and
    shares its folder and MLflow run: it is trained once."""

    name: str
    variant: str
    grid: dict[str, Any]
    seed: int
    config: TrainConfig
    hash: str
    diff: dict[str, Any] = field(default_factory=dict)
    same_as: str | None = None
    inert: list[str] = field(default_factory=list)
    """For a duplicate: the settings in which it differs from ``same_as`` (none of which matter)."""


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

    @property
    def distinct(self) -> list[Run]:
        """The runs that are trained (duplicates left out)."""
        return [r for r in self.runs if r.same_as is None]

    @property
    def duplicates(self) -> list[Run]:
        return [r for r in self.runs if r.same_as is not None]

    def aliases(self, run: Run) -> list[Run]:
        """The other names under which ``run`` is reported."""
        return [r for r in self.runs if r.same_as == run.name]


def _short(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def _differing(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differing(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}={_short(x)}")
    return out


def load_plan(
    path: str | Path,
    executor: str | None = None,
    profile: str | None = None,
    only: list[str] | None = None,
    max_runs: int | None = None,
    profile_file: str | None = None,
    check_world: bool = False,
) -> Plan:
    """Read, resolve and validate a spec into a plan; raises ConfigError naming file and key.

    Everything is checked before anything exists: the grid's size (from the axis lengths, before any run
    is expanded; ``max_runs`` lifts the limit), names, the executor and profile, the tracking URI, the
    output folder, every resolved config (schema and values) and, with ``check_world``, what each config
    needs from the world (data files, model folder, device)."""
    from sdpg.orchestration.names import MAX_RUNS, grid_size, sanitize

    path = Path(path)
    spec = validate(AblationSpec, read_yaml(path, "ablation spec"), str(path))
    src = str(path)
    limit = MAX_RUNS if max_runs is None else max_runs
    n_planned = grid_size([len(spec.variants), *(len(v) for v in spec.grid.values()), len(spec.seeds)])
    if n_planned > limit:
        raise ConfigError(
            f"{src}: the spec plans {n_planned} runs ({len(spec.variants)} variants x "
            f"{' x '.join(str(len(v)) for v in spec.grid.values()) or '1'} grid points x {len(spec.seeds)} seeds), "
            f"more than the limit of {limit}; pass --max-runs {n_planned} to go beyond"
        )
    raw_base = resolve_base(spec.base, path)
    if isinstance(spec.base, dict):  # errors in an inline base are the base's, not the first variant's
        build_config(raw_base, f"{src}: base")
    if spec.overrides:
        build_config(apply_layer(raw_base, spec.overrides), f"{src}: overrides")
    base = apply_layer(raw_base, spec.overrides)
    for axis in spec.group_axes():  # a group's own errors are the group's, not the first run's
        for group, diff in spec.grid[axis].items():
            if diff:
                build_config(apply_layer(base, diff), f"{src}: grid.{axis}.{group}")
    kind, prof = resolve_executor(
        executor or spec.executor,
        profile or spec.profile,
        src,
        kind_from="--executor" if executor else None,
        profile_from="--profile" if profile else None,
        profile_file=profile_file,
    )
    check_tracking_uri(spec.tracking.uri, src)
    check_experiment_name(spec.tracking.experiment, src)
    out = output_folder(spec.output_dir, spec.name)
    check_writable_folder(out, src)
    check_folder_kind(out, "ablation", spec.name, src)
    filters = dict(f.split("=", 1) for f in (only or []))
    # runs: variant x grid point x seed
    axes = list(spec.grid)
    groups = set(spec.group_axes())
    points = [dict(zip(axes, combo)) for combo in itertools.product(*(list(spec.grid[a]) for a in axes))] or [{}]
    runs: list[Run] = []
    written: dict[str, str] = {}  # hash of the resolved config -> name: the spec repeats itself
    canonical: dict[str, Run] = {}  # hash of the effective config -> the first run with it
    for vname, vdiff in spec.variants.items():
        for point in points:
            for seed in spec.seeds:
                layer = dict(vdiff or {})
                where = f"{src}: variants.{vname}"
                data = apply_layer(base, layer)
                if point:
                    data = apply_layer(data, spec.grid_layer(point))
                    where += " with grid " + ",".join(f"{k}={_short(v)}" for k, v in point.items())
                data = apply_layer(data, {"run.seed": seed})
                cfg = build_config(data, where)
                # names and folders from sanitized values (a value holding '/../..' or a newline is not a path);
                # a named group is named by its (checked) name
                gname = "-".join(f"{k if k in groups else k.split('.')[-1]}={sanitize(v)}" for k, v in point.items())
                name = f"{vname}{'-' + gname if gname else ''}-s{seed}"
                raw = cfg.config_hash()
                if raw in written:
                    raise ConfigError(
                        f"{src}: runs {written[raw]!r} and {name!r} resolve to the same config (hash {raw}); variants must differ"
                    )
                written[raw] = name
                h = cfg.effective().config_hash()
                first = canonical.get(h)
                diff = {**(vdiff or {}), **point}
                run = Run(name=name, variant=vname, grid=point, seed=seed, config=cfg, hash=h, diff=diff)
                if first is None:
                    canonical[h] = run
                    folder = f"{name}-{h[:8]}" if len(name) <= 150 else f"{name[:140]}-{sanitize(name)[-8:]}-{h[:8]}"
                    cfg.run.output_dir = str(out / "runs" / folder)
                    if check_world:
                        from sdpg.training.preflight import check_world as _check_world

                        _check_world(cfg, where, local=kind in ("local", "debug"))
                else:
                    run.same_as = first.name
                    cfg.run.output_dir = first.config.run.output_dir
                    run.inert = _differing(cfg.resolved(), first.config.resolved())
                if all(_matches(run, k, v) for k, v in filters.items()):
                    runs.append(run)
    # a duplicate kept by a filter whose run was filtered out becomes the run itself
    kept = {r.name for r in runs}
    for r in runs:
        if r.same_as is not None and r.same_as not in kept:
            kept.add(r.name)
            for other in runs:
                if other.same_as == r.same_as and other is not r:
                    other.same_as = r.name
            r.same_as, r.inert = None, []
    if filters and not runs:
        raise ConfigError(f"--only {' --only '.join(only or [])}: matches no run of {src}")
    uri, experiment = tracking_target(spec.tracking, out, spec.name)
    if check_world:  # a submission opens the store; status and dry runs only read run folders
        check_sqlite_store(uri, "MLflow store")
    return Plan(
        spec=spec, path=path, output_dir=out, runs=runs, executor=kind, profile=prof, tracking_uri=uri, experiment=experiment
    )


def duplicates_note(plan: Plan) -> str:
    """Lines naming each duplicate, the run it repeats and the settings that make no difference."""
    dups = plan.duplicates
    if not dups:
        return ""
    paired = {r.name for r in dups} | {r.same_as for r in dups}
    lines = [
        f"{len(plan.distinct)} distinct runs; {len(dups)} duplicate{'s' if len(dups) > 1 else ''} "
        f"({len(paired)} of the {len(plan.runs)} runs share an effective config with another: each set is trained "
        f"once and reported under every name):"
    ]
    for r in dups:
        why = ", ".join(r.inert) or "nothing"
        lines.append(f"  {r.name} = {r.same_as}  ({why}: no effect here)")
    return "\n".join(lines)


def _matches(run: Run, key: str, value: str) -> bool:
    if key == "variant":
        return run.variant == value
    if key == "seed":
        return str(run.seed) == value
    if key in run.grid and "." not in key:  # a named-groups axis: the group's name
        return str(run.grid[key]) == value
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
    rows = jsonl_rows(out / "metrics.jsonl")  # a last line cut by a kill is left out
    metrics = rows[-1] if rows else {}
    last = metrics.get("step", 0)
    r, _ = read_json_object(out / "result.json")  # empty or cut short (killed while writing): not finished
    if r is not None and r.get("status") == "finished" and r.get("step") == run.config.run.total_steps:
        return "finished", last, metrics
    from sdpg.training.checkpoint import checkpoints

    if checkpoints(out):  # step_<k>.pt files or complete sharded folders
        return "partial", last, metrics
    return ("started" if last else "new"), last, metrics


def table(plan: Plan, extra: dict[str, str] | None = None) -> str:
    rows = [("run", "variant", "diff", "seed", "hash", "state", "step")]
    for r in plan.runs:
        state, step, _ = run_state(r)
        if extra and r.hash in extra:
            state = extra[r.hash]
        if r.same_as is not None:
            state += f" (= {r.same_as})"
        diff = ", ".join(f"{k}={_short(v)}" for k, v in r.diff.items()) or "(base)"
        rows.append((r.name, r.variant, diff, str(r.seed), r.hash[:8], state, f"{step}/{r.config.run.total_steps}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    note = duplicates_note(plan)
    return "\n".join(lines) + ("\n\n" + note if note else "")


def settings_table(plan: Plan) -> str:
    """One column per variant, one row per setting that makes a method what it is (clip range, KL
    placement, distillation, entropy bonus, reward, lr schedule, minibatches, precision, rollouts):
    ``--dry-run`` shows what each variant will train with before any GPU hour is spent."""
    from sdpg.training.config import method_settings

    first: dict[str, Any] = {}
    for r in plan.runs:
        first.setdefault(r.variant, r.config)
    cols = {v: method_settings(c) for v, c in first.items()}
    keys = list(next(iter(cols.values())))
    rows = [("setting", *cols)] + [(k, *(cols[v][k] for v in cols)) for k in keys]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def variant_steps(plan: Plan) -> str:
    """Each variant against the one before it in spec order: the settings in which it differs from the
    previous variant and that matter to it (first grid point and seed of each), so a chain of ablation
    steps (``decompose.yaml``) can be checked to add one piece at a time. A setting is left out when
    putting the previous variant's value back would not change what this variant trains (its effective
    config): e.g. the beta schedule of a variant without distillation."""
    first: dict[str, TrainConfig] = {}
    for r in plan.runs:
        first.setdefault(r.variant, r.config)
    names = list(first)
    lines = []
    for prev, cur in zip(names, names[1:]):
        a, b = first[cur], first[prev]
        raw_a, raw_b = a.resolved(), b.resolved()
        eff_a = a.effective().config_hash()
        shown = []
        for item in _differing(raw_a, raw_b):
            key = item.split("=", 1)[0]
            if key == "run.output_dir":
                continue
            back = _with_value(raw_a, key, _get(raw_b, key))
            try:
                matters = TrainConfig.model_validate(back).effective().config_hash() != eff_a
            except ValueError:  # not valid with the other value: it matters
                matters = True
            if matters:
                shown.append(item)
        lines.append(f"  {cur} vs {prev}: {', '.join(shown) if shown else 'nothing that matters (the same run)'}")
    return "\n".join(lines)


def _get(d: dict, dotted: str) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def _with_value(d: dict, dotted: str, value: Any) -> dict:
    import copy

    out = copy.deepcopy(d)
    cur = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value
    return out


# --------------------------------------------------------------------------------------------
# Submission
# --------------------------------------------------------------------------------------------


def _experiment(plan: Plan) -> Experiment:
    return Experiment(plan.tracking_uri, plan.experiment, plan.output_dir, "ablation", plan.spec.name, plan.path)


def _child_runs(plan: Plan, exp: Experiment) -> dict[str, str]:
    """Effective hash -> MLflow run id, for every distinct run of the plan (created once)."""
    run_ids = {}
    for r in plan.distinct:
        aliases = plan.aliases(r)
        tags = {
            "variant": r.variant,
            "seed": r.seed,
            "method": r.config.algo.method,
            "run_hash": r.hash,
            "grid": json.dumps(r.grid),
            **{f"grid.{axis}": str(r.grid[axis]) for axis in plan.spec.group_axes() if axis in r.grid},
        }
        if aliases:  # the same run under other names: a report lists it under each
            tags["sdpg.aliases"] = json.dumps(
                [{"name": a.name, "variant": a.variant, "seed": a.seed, "grid": a.grid} for a in aliases]
            )
        run_ids[r.hash] = exp.child(r.hash, r.name, r.config, tags)
    return run_ids


def submit(plan: Plan, max_parallel: int | None = None, wait: bool | None = None, log=print) -> dict:
    """Create the MLflow experiment, parent and child runs, submit the unfinished runs as one job
    array, record job ids in ``<output_dir>/jobs.json``; wait for local runs. Each duplicate name is
    trained once, as the run it repeats. The parent run ends when its last child does.

    One submitter per spec: a lock on ``<output_dir>/.sdpg-submit.lock`` is held while runs are created and
    jobs submitted (for local runs: until the last one has started). A run with a job still queued or
    running (asked of the scheduler; every job id ever submitted is kept in jobs.json) is attached to,
    not submitted again."""
    import contextlib
    import socket

    from mlflow.entities import RunStatus

    from sdpg.orchestration import tracking
    from sdpg.training.locks import LockBusy, file_lock

    distinct = plan.distinct
    check_writable_folder(plan.output_dir, str(plan.path))
    tracking.check_server(plan.tracking_uri, "tracking.uri", str(plan.path))
    # every path this submission writes, checked before the first write: a link there is refused, nothing changed
    fsio.check_no_links_below(
        plan.output_dir,
        [plan.output_dir / n for n in (".sdpg-submit.lock", ".sdpg-store.lock", "jobs.json", "submitit", "mlflow.db")]
        + [Path(r.config.run.output_dir) / n for r in distinct for n in (".sdpg-run.lock", "config.yaml", "result.json")],
    )
    fsio.ensure_dir(plan.output_dir)
    lock_path = plan.output_dir / ".sdpg-submit.lock"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(lock_path, wait=False))
        except LockBusy as e:
            log(
                f"[sdpg-ablate] {plan.spec.name} is being submitted by another sdpg-ablate "
                f"({', '.join(f'{k} {v}' for k, v in e.holder.items())}); waiting for it"
            )
            stack.enter_context(file_lock(lock_path, wait=True))
        state_file = plan.output_dir / "jobs.json"
        jobs_state = read_jobs(state_file, log, set_aside=True)
        unfinished = [r for r in distinct if run_state(r)[0] != "finished"]
        attached = active_jobs(jobs_state, [r.hash for r in unfinished])
        todo = [r for r in unfinished if r.hash not in attached]
        progress = Progress(todo, log)
        exp = _experiment(plan).open()
        c = exp.client
        run_ids = _child_runs(plan, exp)
        for r in distinct:  # a finished run's MLflow run is FINISHED (its job may have died after the result)
            st = tracking.retry(c.get_run, run_ids[r.hash]).info.status
            if r in todo:
                tracking.retry(c.update_run, run_ids[r.hash], status=RunStatus.to_string(RunStatus.SCHEDULED))
            elif r not in unfinished and st != "FINISHED":
                tracking.finish_run(c, run_ids[r.hash], "FINISHED")
        if attached:
            names = [r.name for r in unfinished if r.hash in attached]
            log(
                f"[sdpg-ablate] {len(attached)} runs already have a job queued or running; attached, not resubmitted: "
                + ", ".join(f"{n} (job {attached[r.hash]})" for n, r in zip(names, [r for r in unfinished if r.hash in attached]))
            )
        if not todo:
            if not attached:
                exp.end_if_done()
                log(f"[sdpg-ablate] all {len(distinct)} runs of {plan.spec.name} are finished; nothing submitted")
                return {"submitted": [], "attached": {}, "experiment_id": exp.experiment_id, "parent_run_id": exp.parent_id}
            jobs = []
        else:
            for r in todo:  # run folders and submitit's folder made here, so a link planted at one is refused now
                fsio.ensure_dir(r.config.run.output_dir, root=_root_of(Path(r.config.run.output_dir), plan.output_dir))
            fsio.ensure_dir(plan.output_dir / "submitit", root=plan.output_dir)
            ex = make_executor(
                plan.executor, plan.output_dir / "submitit", plan.profile, plan.spec.name, max_parallel or plan.spec.max_parallel
            )
            fns = [TrainJob(r.config.resolved(), plan.tracking_uri, run_ids[r.hash], exp.parent_id) for r in todo]
            if plan.executor == "local":
                jobs = _submit_local(ex, fns, max_parallel or plan.spec.max_parallel, progress.update)
            else:
                with ex.batch():
                    jobs = [ex.submit(f) for f in fns]
            now, host = time.time(), socket.gethostname()
            for r, j in zip(todo, jobs):
                prev = job_history(jobs_state.get(r.hash, {}))
                rec = {"job_id": str(j.job_id), "executor": plan.executor, "host": host, "submitted_at": now}
                jobs_state[r.hash] = {
                    "name": r.name,
                    "job_id": str(j.job_id),
                    "executor": plan.executor,
                    "host": host,
                    "mlflow_run_id": run_ids[r.hash],
                    "submitted_at": now,
                    "jobs": [*prev, rec],
                }
            write_jobs(state_file, jobs_state)
    if todo:
        log(
            f"[sdpg-ablate] submitted {len(todo)} of {len(distinct)} runs ({len(distinct) - len(unfinished)} finished"
            f"{f', {len(attached)} attached' if attached else ''}) with the {plan.executor} executor: "
            f"job ids {', '.join(str(j.job_id) for j in jobs)}"
        )
        log(f"[sdpg-ablate] logs: {plan.output_dir / 'submitit'}")
    log(
        f"[sdpg-ablate] MLflow: experiment {plan.experiment!r} (id {exp.experiment_id}) at {tracking.redact(plan.tracking_uri)}; "
        f"view with: mlflow ui --backend-store-uri {tracking.redact(plan.tracking_uri)}"
    )
    if wait if wait is not None else plan.executor in ("local", "debug"):
        try:
            if jobs:
                watch(plan, jobs, todo, log=log, progress=progress)
        finally:
            if jobs:
                _settle(exp, jobs, [run_ids[r.hash] for r in todo])
        _wait_attached(plan, jobs_state, attached, log)
        log(status(plan))
        log(f"[sdpg-ablate] done; open the runs with: mlflow ui --backend-store-uri {tracking.redact(plan.tracking_uri)}")
        log(f"[sdpg-ablate] next, the report (figures, tables, a page): sdpg-report {plan.path} --out reports/{plan.spec.name}")
    return {
        "submitted": [r.hash for r in todo],
        "attached": attached,
        "jobs": jobs,
        "experiment_id": exp.experiment_id,
        "parent_run_id": exp.parent_id,
    }


def _wait_attached(plan: Plan, jobs_state: dict, attached: dict[str, str], log, every_s: float = 10.0) -> None:
    """Wait for jobs another sdpg-ablate submitted (attached to, not ours to collect): until the scheduler
    (or, for local jobs, the process table) no longer holds them; then say how their runs ended."""
    if not attached:
        return
    runs = [r for r in plan.distinct if r.hash in attached]
    last = 0.0
    while True:
        live = active_jobs(jobs_state, list(attached))
        if not live:
            break
        if time.time() - last >= every_s:
            steps = ", ".join(f"{r.name}: step {run_state(r)[1]}/{r.config.run.total_steps}" for r in runs if r.hash in live)
            log(f"[sdpg-ablate] waiting for {len(live)} attached jobs: {steps}")
            last = time.time()
        time.sleep(2.0)
    failed = [r.name for r in runs if run_state(r)[0] != "finished"]
    if failed:
        raise RuntimeError(f"attached runs did not finish: {', '.join(failed)} (see {plan.output_dir / 'submitit'})")


def _settle(exp: Experiment, jobs: list, run_ids: list[str]) -> None:
    """After waiting: a job that died before its run could record it (killed, out of memory, a
    pickling error) leaves its MLflow run FAILED with the job's error; then the parent is ended."""
    from sdpg.orchestration import tracking

    c = exp.client
    for j, rid in zip(jobs, run_ids):
        if not j.done() or tracking.retry(c.get_run, rid).info.status in tracking.TERMINAL:
            continue
        try:
            j.results()
        except Exception as e:  # noqa: BLE001 - any job error is recorded on its run
            tracking.fail_run(c, rid, f"job {j.job_id}: {job_error(e)}", str(e))
        else:
            tracking.finish_run(c, rid, "FINISHED")
    exp.end_if_done()
    _release(jobs)


def _release(jobs: list) -> None:
    """Finished local jobs must not try to cancel themselves when collected at interpreter exit
    (submitit's ``LocalJob.__del__`` then prints 'Exception ignored ... NoneType')."""
    for j in jobs:
        if hasattr(j, "_cancel_at_deletion") and j.done():
            j._cancel_at_deletion = False


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
    """The last line a job logged (whole: e.g. the base model's build), ``queued`` before it starts."""
    try:
        lines = [ln.strip() for ln in Path(job.paths.stderr).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "queued"
    useful = [ln for ln in lines if ln.startswith("[")]
    return (useful or lines or ["starting"])[-1]


def _base_model_pending(run: Run) -> bool:
    """True while the built-in base model this run starts from is not built yet (never for the
    default recipe: its model ships with the package and is only copied)."""
    if run.config.model.path != "embedded":
        return False
    from sdpg.paths import cache_root
    from sdpg.training.embedded import recipe_hash, shipped_recipe

    h = recipe_hash(run.config.model.embedded)
    if (shipped_recipe(run.config.model.embedded.task) or {}).get("recipe_hash") == h:
        return False
    return not (cache_root() / f"embedded-{h}" / "sdpg_recipe.json").is_file()


class Progress:
    """The console of a local ablation: a line when something changes, never the same line again. Each
    line has the time of day; the counts line when a run starts or ends; per running run its step,
    accuracy and time left at its own pace since its first step seen (or, before its first step, the last
    line its job logged, or that it waits for the base model's build); per finished run its end."""

    def __init__(self, runs: list[Run], log=print, clock=time.time):
        self.runs, self.log, self.clock = runs, log, clock
        self.shown: dict[str, str] = {}  # what was last said about each run (and the counts)
        self.first: dict[str, tuple[float, int]] = {}  # run -> (time, step) when a step was first seen

    def _say(self, key: str, text: str, extra: str = "") -> None:
        """Log ``text`` (with ``extra``, e.g. the time left, which alone is no change) unless it was the last said."""
        if self.shown.get(key) != text:
            self.shown[key] = text
            self.log(f"[sdpg-ablate {time.strftime('%H:%M:%S', time.localtime(self.clock()))}] {text}{extra}")

    def _eta(self, r: Run, step: int) -> str:
        now = self.clock()
        t0, s0 = self.first.setdefault(r.name, (now, step))
        total = r.config.run.total_steps
        if step <= s0 or now <= t0 or step >= total:
            return ""
        left = (total - step) * (now - t0) / (step - s0)
        return f", ~{_duration(left)} left"

    def update(self, jobs: list) -> None:
        done, running, queued = 0, 0, 0
        lines: list[tuple[str, str, str]] = []
        for i, r in enumerate(self.runs):
            if i >= len(jobs):
                queued += 1
                continue
            if jobs[i].done():
                done += 1
                state, step, m = run_state(r)
                if r.name in self.shown:  # seen running: say how it ended, once
                    acc = m.get("train/accuracy")
                    how = "finished" if state == "finished" else "stopped unfinished"
                    end = f"{r.name}: {how} at step {step}" + (f" acc {acc:.2f}" if acc is not None else "")
                    lines.append((r.name, end, ""))
                continue
            running += 1
            _, step, m = run_state(r)
            acc = m.get("train/accuracy")
            eta = ""
            if step == 0:
                line = _last_log_line(jobs[i])
                if not line.startswith("[embedded]") and line != "queued" and _base_model_pending(r):
                    line = "waiting for the base model's build (once per machine; another run is building it)"
            else:
                line = f"step {step}/{r.config.run.total_steps}" + (f" acc {acc:.2f}" if acc is not None else "")
                eta = self._eta(r, step)
            lines.append((r.name, f"{r.name}: {line}", eta))
        self._say("", f"{done}/{len(self.runs)} runs done, {running} running, {queued} queued")
        for key, text, extra in lines:
            self._say(key, text, extra)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def watch(plan: Plan, jobs: list, runs: list[Run] | None = None, log=print, every_s: float = 10.0, progress=None) -> None:
    """Progress until every job is done (``Progress``: a timestamped line per change). Raises if any failed."""
    progress = progress or Progress(runs or plan.distinct, log)
    while True:
        done = [j.done() for j in jobs]
        progress.update(jobs)
        if all(done):
            break
        time.sleep(every_s)
    failed = []
    for j in jobs:
        try:
            j.results()[0]
        except Exception as e:  # noqa: BLE001 - reported below
            failed.append(f"job {j.job_id}: {job_error(e)}")
    if failed:
        raise RuntimeError("some runs failed:\n" + "\n".join(failed))


def status(plan: Plan) -> str:
    """Each run's state and last metrics, from its folder, the scheduler and MLflow."""
    state_file = plan.output_dir / "jobs.json"
    jobs = read_jobs(state_file, lambda m: print(m, file=sys.stderr))
    sched = scheduler.slurm_states([str(v.get("job_id")) for v in jobs.values() if v.get("executor") == "slurm"])
    extra = {}
    for h, v in jobs.items():
        s = sched.get(str(v.get("job_id")))
        if s and s not in ("COMPLETED",):
            extra[h] = f"{s.lower()} ({v['job_id']})"
    lines = [table(plan, extra), ""]
    for r in plan.runs:
        _, step, m = run_state(r)
        keys = [k for k in sorted(m) if is_mean_at(k)] + ["train/accuracy", "train/entropy"]
        shown = " ".join(f"{k}={m[k]:.3f}" for k in keys if k in m)
        if shown:
            lines.append(f"{r.name}: {shown}" + (f" (= {r.same_as})" if r.same_as else ""))
    return "\n".join(lines)


def cancel(plan: Plan, log=print) -> int:
    """scancel the recorded SLURM jobs of the plan's runs; their unfinished MLflow runs end KILLED
    (and the parent with them). Raises SchedulerUnavailable, with nothing marked, when SLURM refuses."""
    from sdpg.orchestration import tracking

    state_file = plan.output_dir / "jobs.json"
    jobs = read_jobs(state_file, log)
    mine = {r.hash for r in plan.distinct}
    picked = {h: v for h, v in jobs.items() if h in mine and any(j.get("executor") == "slurm" for j in job_history(v))}
    if not picked:
        log("[sdpg-ablate] no SLURM jobs recorded for this spec")
        return 0
    ids = sorted({str(j["job_id"]) for v in picked.values() for j in job_history(v) if j.get("executor") == "slurm"})
    scheduler.cancel_slurm(ids)
    c = tracking.client(plan.tracking_uri)
    parents = set()
    for v in picked.values():
        rid = v.get("mlflow_run_id")
        if not rid:
            continue
        run = tracking.retry(c.get_run, rid)
        if run.info.status not in tracking.TERMINAL:
            tracking.finish_run(c, rid, "KILLED")
        parents.add(run.data.tags.get("mlflow.parentRunId"))
    for p in parents - {None}:
        tracking.end_parent_if_done(c, p)
    log(f"[sdpg-ablate] cancelled {len(ids)} jobs: {', '.join(ids)}")
    return len(ids)


def dry_run_warnings(plan: Plan) -> list[str]:
    """What submitting the plan from here would refuse (vLLM not installed, a data file not here...): one
    sentence each, naming the runs it concerns."""
    from sdpg.training.preflight import world_warnings

    found: dict[str, list[str]] = {}
    for r in plan.distinct:
        for w in world_warnings(r.config, str(plan.path), local=plan.executor in ("local", "debug")):
            found.setdefault(w, []).append(r.name)
    n = len(plan.distinct)
    return [
        f"{w} (submitting from here is refused; {'all ' + str(n) + ' runs' if len(names) == n else 'runs ' + ', '.join(names)})"
        for w, names in found.items()
    ]


def _root_of(folder: Path, root: Path) -> Path:
    """``root`` when ``folder`` lies inside it (no link allowed in between), else ``folder``'s parent."""
    try:
        folder.resolve().relative_to(root.resolve())
        return root
    except ValueError:
        return folder.parent
