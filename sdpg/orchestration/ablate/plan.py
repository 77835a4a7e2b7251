"""The ablation spec's format and its plan: every run resolved as a full ``TrainConfig`` and named by the hash of its
content, before anything is submitted."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from sdpg.orchestration.core import (
    TrackingSpec,
    check_experiment_name,
    check_folder_kind,
    check_sqlite_store,
    check_tracking_uri,
    check_writable_folder,
    output_folder,
    resolve_base,
    resolve_executor,
    tracking_target,
)
from sdpg.orchestration.names import SpecName
from sdpg.orchestration.specs import ReportOptions, SlurmProfile, read_yaml, validate
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


def _same_value(x: Any, y: Any) -> bool:
    """Two grid values that configure the same thing: numbers equal as numbers (0.0 and -0.0, 1 and 1.0; a
    boolean is not a number), anything else equal as JSON."""

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if number(x) and number(y):
        return bool(x == y)
    return json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)


class AblationSpec(Strict):
    name: SpecName
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
