"""Reading orchestration files (ablation specs, sweep specs, SLURM profiles): YAML with duplicate
keys refused, pydantic validation, and one-line errors naming the file, the key and the value."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, ValidationError, field_validator

from sdpg.training.config import ConfigError, Strict, format_validation_error

REPO_ROOT = Path(__file__).resolve().parents[2]


Compare = Literal["baseline", "previous"]
"""What ``sdpg-report`` compares each variant with (IQM difference, probability of improvement): one baseline
(``--baseline``; default ``grpo`` if present, else the first variant), or the variant before it in the
spec's order (a chain of ablation steps, each adding one piece)."""
COMPARE: tuple[str, ...] = get_args(Compare)


class ReportOptions(Strict):
    """How ``sdpg-report SPEC`` reads an ablation (its command-line options override these)."""

    compare: Compare = "baseline"
    """Each variant against the ``baseline`` or against the ``previous`` variant in spec order."""


def read_yaml(path: str | Path, what: str = "file") -> dict:
    """A spec or profile, read with the safe loader (``sdpg.training.safe_yaml``): size and UTF-8 checked,
    depth and aliases bounded, duplicate keys refused, errors with line and column."""
    from sdpg.training.safe_yaml import YamlInputError, load_file

    try:
        return load_file(path, what, mapping=True)
    except YamlInputError as e:
        raise ConfigError(str(e)) from None


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

    @field_validator("setup")
    @classmethod
    def _no_literal_secret(cls, lines: list[str]) -> list[str]:
        """Setup lines are written into every job script as they are; a secret there would sit in plain
        text in the job folder and in SLURM's records, so a literal one is refused (jobs inherit the
        submitting shell's environment, which is where a secret belongs)."""
        from sdpg.training.redact import holds_literal_secret

        for i, line in enumerate(lines):
            if holds_literal_secret(line):
                raise ValueError(
                    f"line {i + 1} holds a literal secret, which would be written into every job script; "
                    "export it in the submitting shell (jobs inherit the environment) or read it in the line, "
                    "e.g. export HF_TOKEN=$(cat ~/.hf_token)"
                )
        return lines


def profile_dirs() -> list[Path]:
    import os

    dirs = [Path(d) for d in os.environ.get("SDPG_SLURM_PROFILES", "").split(":") if d]
    return dirs + [Path.cwd() / "slurm", REPO_ROOT / "slurm"]


def load_profile(name: str, source: str) -> SlurmProfile:
    """A profile by *name* only, from the profile folders: a path (``../../x/evil``) is refused, so a spec
    cannot make any YAML on the machine a profile whose ``setup:`` lines go into a job script. A profile
    elsewhere is loaded only with an explicit ``--profile-file PATH`` (``load_profile_file``)."""
    from sdpg.orchestration.names import name_problem, short_repr

    why = name_problem(name)
    if why is not None:
        raise ConfigError(
            f"{source} has bad value {short_repr(name)}: a profile is named, not a path ({why}); "
            f"use --profile-file PATH for a profile outside the profile folders"
        )
    for d in profile_dirs():
        p = d / f"{name}.yaml"
        if p.is_file():
            return validate(SlurmProfile, read_yaml(p, "profile"), str(p))
    known = sorted({p.stem for d in profile_dirs() if d.is_dir() for p in d.glob("*.yaml")})
    raise ConfigError(f"{source}: unknown SLURM profile {short_repr(name)} (known: {', '.join(known) or 'none'})")


def load_profile_file(path: str | Path) -> SlurmProfile:
    """A profile given explicitly by path (``--profile-file``)."""
    p = Path(path)
    return validate(SlurmProfile, read_yaml(p, "profile"), str(p))
