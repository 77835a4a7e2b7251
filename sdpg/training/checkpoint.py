"""Checkpoint files of a run: ``<output_dir>/checkpoints/step_<k>.pt``, the newest ``run.keep_checkpoints`` kept.

A checkpoint holds the full (unsharded) model and optimizer state, the scheduler, the prompt sampler, every
rank's random-number-generator state and the config hash, so a resumed run continues exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def checkpoint_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted(checkpoint_dir(out).glob("step_*.pt"))
    return ckpts[-1] if ckpts else None


def save_checkpoint(out: Path, step: int, state: dict, keep: int) -> Path:
    d = checkpoint_dir(out)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:07d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in sorted(d.glob("step_*.pt"))[:-keep]:
        old.unlink()
    return path
