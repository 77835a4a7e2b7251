"""A sweep spec resolved against its base config (or an ablation's run), validated at the corners of its space:
the picklable ``Sweep`` every worker receives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdpg.orchestration.core import (
    Experiment,
    check_experiment_name,
    check_folder_kind,
    check_journal,
    check_sqlite_store,
    check_tracking_uri,
    check_writable_folder,
    output_folder,
    resolve_base,
    resolve_executor,
    tracking_target,
)
from sdpg.orchestration.specs import SlurmProfile, read_yaml, validate
from sdpg.orchestration.sweep.spec import RDB_DIALECTS, SweepSpec, _typed
from sdpg.orchestration.sweep.study import make_pruner, make_sampler
from sdpg.training.config import ConfigError, apply_layer, build_config


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
            from sdpg.orchestration.ablate.plan import load_plan

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
