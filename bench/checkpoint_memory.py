"""Rank 0's peak memory during a checkpoint save: one process (``step_<k>.pt``, the full state written by
``torch.save``), FSDP2 on 2 gloo ranks gathering the full state to rank 0 (``full_state``, how sharded runs were
saved before) and FSDP2 on 2 ranks writing sharded checkpoints (``save_sharded_checkpoint``: every rank its shards).

The model: a Qwen3-shaped causal LM built from a config with random fp32 weights (default hidden 1,024, 36 layers,
intermediate 3,072, vocabulary 32,000, tied embeddings: 0.49 B parameters), with AdamW's state allocated by one step
on zero gradients. Each setting runs in fresh processes; the save's extra memory is rank 0's peak resident memory
during the save (VmHWM, reset right before it) minus its resident memory before it. "Own state" is what rank 0
holds of parameters and AdamW moments.

    nice -n 10 python bench/checkpoint_memory.py                  # all three, CPU
    python bench/checkpoint_memory.py --layers 8 --modes single sharded
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("single", "gather", "sharded")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def worker(mode: str, args, out: Path) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from sdpg.training import distributed as dist
    from sdpg.training.checkpoint import save_checkpoint, save_sharded_checkpoint
    from sdpg.training.model import full_state, shard_fsdp

    torch.set_num_threads(1)
    rank, world, _ = dist.init(torch.device("cpu"))
    torch.manual_seed(0)
    conf = Qwen3Config(
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        intermediate_size=args.intermediate,
        vocab_size=args.vocab,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 128,
        head_dim=64,
        tie_word_embeddings=True,
    )
    model = Qwen3ForCausalLM(conf)
    n_params = sum(p.numel() for p in model.parameters())
    if mode != "single":
        shard_fsdp(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # AdamW's moments allocated
    optimizer.zero_grad(set_to_none=True)
    own = sum(
        (p.to_local() if hasattr(p, "to_local") else p).numel() * 4 * 3  # parameter + two moments, fp32
        for p in model.parameters()
    )
    dist.barrier()
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    started = time.perf_counter()
    run_state = {"step": 1, "scheduler": {}, "sampler": {}, "rng": [], "config_hash": "bench", "world_size": world}
    if mode == "sharded":
        save_sharded_checkpoint(out, 1, model, optimizer, run_state, keep=1, rank=rank)
    else:
        model_state, optim_state = full_state(model, optimizer)
        if rank == 0:
            save_checkpoint(out, 1, {**run_state, "model": model_state, "optimizer": optim_state}, keep=1)
        del model_state, optim_state
        dist.barrier()
    seconds = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    if rank == 0:
        disk = sum(f.stat().st_size for f in (out / "checkpoints").rglob("*") if f.is_file())
        print(
            "RESULT"
            + json.dumps(
                {
                    "mode": mode,
                    "world": world,
                    "params": n_params,
                    "own_state_mib": own / 2**20,
                    "rss_before_mib": before / 1024,
                    "peak_mib": peak / 1024,
                    "save_extra_mib": (peak - before) / 1024,
                    "seconds": seconds,
                    "disk_mib": disk / 2**20,
                }
            ),
            flush=True,
        )
    dist.shutdown()


def run(mode: str, args) -> dict:
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        cmd = [sys.executable, __file__, "--worker", mode, "--out", d] + [
            f"--{k}={getattr(args, k)}" for k in ("hidden", "layers", "intermediate", "vocab")
        ]
        if mode != "single":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *cmd[1:]]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT")), None)
        if line is None:
            raise RuntimeError(f"{mode} failed: {r.stderr[-2000:]}")
        return json.loads(line[len("RESULT") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=36)
    p.add_argument("--intermediate", type=int, default=3072)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--tmp", default=None, help="folder for the checkpoints (deleted after each run)")
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args, Path(args.out))
        return
    rows = [run(m, args) for m in args.modes]
    print(f"model: {rows[0]['params'] / 1e9:.2f} B parameters, fp32 (+ AdamW), CPU, load {os.getloadavg()[0]:.1f}")
    print("| save | ranks | rank 0 own state MiB | rank 0 RSS before MiB | save's extra MiB | extra / own | s | disk MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['world']} | {r['own_state_mib']:.0f} | {r['rss_before_mib']:.0f} | {r['save_extra_mib']:.0f} | "
            f"{r['save_extra_mib'] / r['own_state_mib']:.2f} | {r['seconds']:.1f} | {r['disk_mib']:.0f} |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
