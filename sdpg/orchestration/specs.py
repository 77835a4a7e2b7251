"""Reading orchestration files (ablation specs, sweep specs, SLURM profiles): YAML with duplicate
keys refused, pydantic validation, and one-line errors naming the file, the key and the value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from sdpg.training.config import ConfigError, Strict, format_validation_error

REPO_ROOT = Path(__file__).resolve().parents[2]


class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node, deep=False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} (lines {seen[key] + 1} and {key_node.start_mark.line + 1})")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | Path, what: str = "file") -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such {what}")
    try:
        data = yaml.load(p.read_text(), Loader=_UniqueKeyLoader) or {}
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    return data


def validate(model: type[BaseModel], data: dict, source: str):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


class SlurmProfile(Strict):
    """A cluster profile (``slurm/<name>.yaml``): what submitit asks SLURM for."""

    partition: str | None = None
    """SLURM partition; None: the cluster's default."""
    account: str | None = None
    """--account."""
    qos: str | None = None
    """--qos."""
    nodes: int = Field(1, gt=0)
    """Nodes per run."""
    tasks_per_node: int = Field(1, gt=0)
    """Processes per node (torch.distributed ranks)."""
    gpus_per_node: int = Field(0, ge=0)
    """GPUs per node."""
    cpus_per_task: int = Field(1, gt=0)
    """CPUs per task."""
    mem_gb: float = Field(4, gt=0)
    """Memory per node in GB."""
    timeout_min: int = Field(60, gt=0)
    """Wall-clock limit of one job; a run longer than this checkpoints and requeues."""
    signal_delay_s: int = Field(90, ge=0)
    """Seconds before the limit at which SLURM signals the job to checkpoint."""
    max_num_timeout: int = Field(3, ge=0)
    """Requeues allowed after timeouts / preemptions."""
    setup: list[str] = Field(default_factory=list)
    """Shell lines run before the job (module load, conda activate, exports)."""
    additional_parameters: dict[str, Any] = Field(default_factory=dict)
    """Other sbatch options, passed through (e.g. {constraint: h100})."""


def subcommand_parser(prog: str, subcommands: dict[str, str] | tuple[str, ...], description: str,
                      argv: list[str] | None, run_help: str = "submit the spec's runs"):
    """(subcommand, remaining argv, parser with SPEC and --profile) for ``prog [SUB] SPEC ...``;
    the subcommand is ``run`` when the first word is none of ``subcommands`` (name -> one line of
    help, listed in ``--help``)."""
    import argparse
    import sys

    helps = subcommands if isinstance(subcommands, dict) else dict.fromkeys(subcommands, "")
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = argv[0] if argv and argv[0] in helps else "run"
    if sub != "run":
        argv = argv[1:]
    width = max(len(k) for k in ("run", *helps))
    epilog = "commands:\n" + "\n".join(
        f"  {prog} {k.ljust(width)} SPEC  {h}" for k, h in {"[run]": run_help, **helps}.items()
    ) + f"\n\n{prog} SUBCOMMAND --help shows the options of each."
    p = argparse.ArgumentParser(prog=f"{prog}{'' if sub == 'run' else ' ' + sub}", description=description,
                                epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="the spec file (YAML)")
    p.add_argument("--profile", metavar="NAME",
                   help="SLURM profile slurm/NAME.yaml (or in $SDPG_SLURM_PROFILES), replacing the spec's")
    return sub, argv, p


def profile_dirs() -> list[Path]:
    import os

    dirs = [Path(d) for d in os.environ.get("SDPG_SLURM_PROFILES", "").split(":") if d]
    return dirs + [Path.cwd() / "slurm", REPO_ROOT / "slurm"]


def load_profile(name: str, source: str) -> SlurmProfile:
    for d in profile_dirs():
        p = d / f"{name}.yaml"
        if p.is_file():
            return validate(SlurmProfile, read_yaml(p, "profile"), str(p))
    known = sorted({p.stem for d in profile_dirs() if d.is_dir() for p in d.glob("*.yaml")})
    raise ConfigError(f"{source}: unknown SLURM profile {name!r} (known: {', '.join(known) or 'none'})")
