"""Checkpoint files of a run: ``<output_dir>/checkpoints/step_<k>.pt``, the newest ``run.keep_checkpoints`` kept.

A checkpoint holds the full (unsharded) model and optimizer state, the scheduler, the prompt sampler, every
rank's random-number-generator state and the config hash, so a resumed run continues exactly. Files are
written atomically (a temporary file, fsync, rename, fsync of the folder): a checkpoint on disk is complete
or absent. Loading checks that the file reads and holds what a resume needs; a file that does not is
skipped by ``resume`` (renamed to ``*.pt.corrupt``), which falls back to the next older one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdpg import fsio

REQUIRED_KEYS = ("step", "model", "optimizer", "scheduler", "sampler", "rng", "config_hash")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file and the reason."""


def checkpoint_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def checkpoints(out: Path) -> list[Path]:
    """Checkpoint files of the run folder ``out``, oldest first."""
    return sorted(checkpoint_dir(out).glob("step_*.pt"))


def latest_checkpoint(out: Path) -> Path | None:
    found = checkpoints(out)
    return found[-1] if found else None


def step_of(path: Path) -> int:
    return int(Path(path).stem.split("_")[1])


def save_checkpoint(out: Path, step: int, state: dict, keep: int) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically; delete all but the newest ``keep``."""
    folder = checkpoint_dir(out)
    fsio.ensure_dir(folder, root=out)
    path = folder / f"step_{step:07d}.pt"
    with fsio.atomic_open(path, "wb", root=out) as f:  # temporary file, fsync, rename, fsync of the folder
        torch.save(state, f)
    for old in checkpoints(out)[:-keep]:
        old.unlink()
    return path


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict:
    """The state saved by ``save_checkpoint``; ``CheckpointError`` naming the file when it does not read
    or lacks what a resume needs."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or garbled files raise anything from RuntimeError to UnpicklingError
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {reason})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    if state["step"] != step_of(path):
        raise CheckpointError(f"checkpoint {path} holds step {state['step']}, not the step of its name")
    return state
