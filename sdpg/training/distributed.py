"""Data parallelism on torch.distributed, for the trainer.

Ranks come from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``) as set
by ``torchrun`` or by submitit's ``TorchDistributedEnvironment`` under SLURM; nothing here imports
either. Each rank generates and trains on its share of the step's prompts and loss weights are normalised
by global counts, so N ranks compute the same update as one process with the same global batch. The model
is either replicated (every rank holds all of it; gradients are summed across ranks by ``all_reduce_grads``
before the optimizer step) or sharded with FSDP2 (``model.fsdp``: each rank holds a shard of every decoder
layer, gathered for its forward and backward, and FSDP reduce-scatters the gradients).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """Whether a launcher (torchrun, submitit) set the rendezvous variables, even for a single rank."""
    return all(k in os.environ for k in ("RANK", "MASTER_ADDR", "MASTER_PORT"))


def init(device: torch.device, single_rank_group: bool = False) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group); creates the default group
    when WORLD_SIZE > 1 and none exists, or for one launched rank when ``single_rank_group`` (FSDP2 on
    one GPU: the code path a cluster runs, with a world of one)."""
    world = env_world_size()
    if world <= 1 and not (single_rank_group and launched()):
        return 0, 1, False
    created = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        created = True
    return dist.get_rank(), dist.get_world_size(), created


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks in one flat buffer (loss weights already carry the global normaliser)."""
    if not active():
        return
    for p in params:  # a rank that saw no rows (or a branch unused this step) still sends zeros
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params if p.requires_grad]
    flat = torch.cat([g.reshape(-1) for g in grads])  # [sum of numel]
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def all_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over ranks (a copy; ``x`` unchanged)."""
    if not active():
        return x
    y = x.clone()
    dist.all_reduce(y)
    return y


def all_max(x: Tensor) -> Tensor:
    """Elementwise maximum of ``x`` over ranks (a copy)."""
    if not active():
        return x
    y = x.clone()
    dist.all_reduce(y, op=dist.ReduceOp.MAX)
    return y


def all_gather_cat(x: Tensor) -> Tensor:
    """Concatenate ``x`` [n, ...] of every rank in rank order (n may differ per rank)."""
    if not active():
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    m = int(max(s.item() for s in sizes))
    pad = torch.zeros((m - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    buf = [torch.zeros((m, *x.shape[1:]), dtype=x.dtype, device=x.device) for _ in sizes]
    dist.all_gather(buf, torch.cat([x, pad]))
    return torch.cat([b[: int(s.item())] for b, s in zip(buf, sizes)])


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is True on any (e.g. a preemption signal seen by one task)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj, src: int = 0):
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
