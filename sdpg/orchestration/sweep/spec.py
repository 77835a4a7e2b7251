"""The sweep spec's format (``sweeps/*.yaml``): the search space, the objective, the sampler, the pruner, the budget and
the storage, each checked before anything runs."""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import Field, model_validator

from sdpg.orchestration.core import NAME_PATTERN, TrackingSpec
from sdpg.orchestration.names import SpecName
from sdpg.training.config import FolderPath, Seed, Strict

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
    name: SpecName
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


RDB_DIALECTS = ("postgresql", "mysql", "sqlite", "oracle", "mssql", "mariadb", "cockroachdb")
"""SQLAlchemy dialects an Optuna RDB storage URL may name."""


def _typed(params: dict[str, Any], space: dict[str, Param]) -> dict[str, Any]:
    return {k: (int(round(v)) if space[k].type == "int" else v) for k, v in params.items()}
