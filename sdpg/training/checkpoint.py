"""Checkpoint files of a run: ``<output_dir>/checkpoints/step_<k>.pt``, the newest ``run.keep_checkpoints`` kept.

A checkpoint holds the full (unsharded) model and optimizer state, the scheduler, the prompt sampler, every
rank's random-number-generator state and the config hash, so a resumed run continues exactly. Files are
written atomically (a temporary file, fsync, rename, fsync of the folder): a checkpoint on disk is complete
or absent. Loading checks that the file reads and holds what a resume needs; a file that does not is
skipped by ``resume`` (renamed to ``*.pt.corrupt``), which falls back to the next older one.

Sharded checkpoints (runs sharded with FSDP2): ``step_<k>/`` is a ``torch.distributed.checkpoint`` folder in
which every rank writes its own shards of the model and optimizer state (no rank gathers the full state),
beside ``run_state.pt`` (step, scheduler, sampler, every rank's RNG, config hash, world size) and, written
last, the completion mark ``COMPLETE``. It is written as ``step_<k>.tmp/`` and renamed when complete; a
folder without its mark is never listed, so never loaded. DCP reshards on load: a sharded checkpoint
resumes on any number of ranks, sharded or not (``resume`` says when that is not bitwise exact).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sdpg import fsio

REQUIRED_KEYS = ("step", "model", "optimizer", "scheduler", "sampler", "rng", "config_hash")
COMPLETE = "COMPLETE"
"""The completion mark of a sharded checkpoint folder, written after everything else."""
RUN_STATE = "run_state.pt"
"""What a sharded checkpoint holds beside the shards: the run state of ``REQUIRED_KEYS`` less model and optimizer."""


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file and the reason."""


def checkpoint_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def checkpoints(out: Path) -> list[Path]:
    """Checkpoints of the run folder ``out``, oldest first: ``step_<k>.pt`` files and complete sharded
    ``step_<k>/`` folders (with their ``COMPLETE`` mark)."""
    found = [
        p
        for p in checkpoint_dir(out).glob("step_*")
        if (p.suffix == ".pt" and p.is_file()) or (p.is_dir() and p.name[5:].isdigit() and (p / COMPLETE).is_file())
    ]
    return sorted(found, key=lambda p: (step_of(p), p.name))


def is_sharded_checkpoint(path: Path) -> bool:
    return Path(path).is_dir()


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
    remove_old(out, keep)
    return path


def remove_old(out: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (files or sharded folders); the ones deleted."""
    import shutil

    gone = checkpoints(out)[:-keep]
    for old in gone:
        if old.is_dir():
            (old / COMPLETE).unlink()  # no longer a checkpoint before its shards go
            shutil.rmtree(old)
        else:
            old.unlink()
    return gone


def disk_usage(path: Path) -> int:
    """Bytes of a checkpoint file or folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def save_sharded_checkpoint(out: Path, step: int, model, optimizer, run_state: dict, keep: int, rank: int) -> Path:
    """A collective: every rank writes its shards of ``model`` and ``optimizer`` (FSDP2 sharded state dicts,
    or the full ones of an unsharded model) with ``torch.distributed.checkpoint`` into ``step_<k>.tmp/``;
    then rank 0 adds ``run_state`` and the completion mark and renames the folder to ``step_<k>/``.

    Deviation: the save is synchronous. ``dcp.async_save`` would let training go on during the write, but the
    completion mark can only follow the write, which would then finish inside a later step."""
    import shutil

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from sdpg.training import distributed as dist

    folder = checkpoint_dir(out)
    final, tmp = folder / f"step_{step:07d}", folder / f"step_{step:07d}.tmp"
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a save killed before its mark
        tmp.mkdir()
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp))
    dist.barrier()  # every rank's shards are written
    if rank == 0:
        with open(tmp / RUN_STATE, "wb") as f:
            torch.save(run_state, f)
        for file in tmp.iterdir():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        with open(tmp / COMPLETE, "w") as f:
            f.write(f"step {step}\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (a stop right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(folder)
        remove_old(out, keep)
    dist.barrier()
    return final


def load_sharded_state(path: Path, model, optimizer) -> None:
    """A collective: the model and optimizer state of the sharded checkpoint ``path``, resharded by
    ``torch.distributed.checkpoint`` onto this run's ranks (sharded or not)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)  # initialises AdamW's state to load into
    dcp.load({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(path))  # in place
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu", mmap: bool = False) -> dict:
    """The state saved by ``save_checkpoint``; ``CheckpointError`` naming the file when it does not read
    or lacks what a resume needs. ``mmap``: tensors stay on disk until touched (a cheap look at the rest).
    For a sharded folder: its run state, with ``model`` and ``optimizer`` None (``load_sharded_state`` reads
    them) and ``sharded`` the folder."""
    path = Path(path)
    sharded = path.is_dir()
    if sharded and not (path / COMPLETE).is_file():
        raise CheckpointError(f"checkpoint {path} has no completion mark ({COMPLETE}): its save did not finish")
    if sharded and not (path / ".metadata").is_file():
        raise CheckpointError(f"checkpoint {path} lacks its shards' .metadata")
    try:
        state = torch.load(path / RUN_STATE if sharded else path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as e:  # truncated or garbled files raise anything from RuntimeError to UnpicklingError
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {reason})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint")
    if sharded:
        state = {**state, "model": None, "optimizer": None, "sharded": path}
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    if state["step"] != step_of(path):
        raise CheckpointError(f"checkpoint {path} holds step {state['step']}, not the step of its name")
    return state


def sharded_model_state(path: Path) -> dict[str, torch.Tensor]:
    """The full model state dict of the sharded checkpoint ``path`` in this one process (no process group,
    no optimizer state read): for an export or an evaluation of a sharded run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        metadata = dcp.FileSystemReader(str(path)).read_metadata()
        state = {
            key[len("model.") :]: torch.empty(m.size, dtype=m.properties.dtype)
            for key, m in metadata.state_dict_metadata.items()
            if key.startswith("model.") and isinstance(m, TensorStorageMetadata)
        }
        box = {"model": state}
        dcp.load(box, checkpoint_id=str(path))
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"checkpoint {path}: its shards cannot be read ({type(e).__name__}: {reason[:200]})") from e
    return box["model"]
