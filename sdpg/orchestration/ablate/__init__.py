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

Modules: ``plan`` (the spec and its runs), ``states`` (each run's state; cancelling), ``submission`` (the runs
submitted and watched), ``dry_run`` (what ``--dry-run`` adds). The names below are the package's interface;
``sdpg-ablate`` (``sdpg.commands.ablate``) reads the command line.
"""

from sdpg.orchestration.ablate.dry_run import dry_run_warnings, settings_table, variant_steps
from sdpg.orchestration.ablate.plan import AblationSpec, Plan, Run, duplicates_note, load_plan
from sdpg.orchestration.ablate.states import cancel, run_state, status, table
from sdpg.orchestration.ablate.submission import Progress, submit, watch
from sdpg.orchestration.core import NAME_PATTERN, TrackingSpec

__all__ = [
    "NAME_PATTERN",
    "AblationSpec",
    "Plan",
    "Progress",
    "Run",
    "TrackingSpec",
    "cancel",
    "dry_run_warnings",
    "duplicates_note",
    "load_plan",
    "run_state",
    "settings_table",
    "status",
    "submit",
    "table",
    "variant_steps",
    "watch",
]
