"""Peak memory and time of the full-vocabulary KL term: materialised vs fused.

Each (variant, T) runs in a fresh process. Memory counted is the KL term's activation memory:
peak minus the inputs minus the output head's gradient buffer [V, H] (that buffer exists in
training anyway). On CPU the peak is the process's peak RSS, reset after the inputs are built
(``/proc/self/clear_refs``); on CUDA it is ``torch.cuda.max_memory_allocated``.

    python bench/kl_memory.py                      # Qwen3-4B head, T = 256..2048, float32, CPU
    python bench/kl_memory.py --device cuda --dtype bfloat16 --T 4096
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = ("materialised", "fused_weighted", "fused_recompute")


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def run_one(variant: str, B: int, T: int, H: int, V: int, dtype_name: str, device: str, chunk: int | None) -> dict:
    import torch

    from sdpg.objective import full_vocab_kl, fused_full_vocab_kl, fused_weighted_full_vocab_kl

    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    cuda = device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def step(hs, ht, W, weights):
        if variant == "materialised":
            zs = hs @ W.T  # [B, T, V]
            with torch.no_grad():
                zt = ht @ W.T  # [B, T, V]
            loss = (full_vocab_kl(zs, zt) * weights).sum()
        elif variant == "fused_weighted":
            loss, _ = fused_weighted_full_vocab_kl(hs, ht, W, weights, chunk_size=chunk)
        elif variant == "fused_recompute":
            loss = (fused_full_vocab_kl(hs, ht, W, chunk_size=chunk) * weights).sum()
        else:
            raise ValueError(variant)
        return loss

    def make(T_):
        hs = torch.empty(B, T_, H, device=device, dtype=dtype).normal_().requires_grad_(True)  # [B, T, H]
        ht = torch.empty(B, T_, H, device=device, dtype=dtype).normal_()  # [B, T, H]
        W = torch.empty(V, H, device=device, dtype=dtype).normal_(std=H**-0.5).requires_grad_(True)  # [V, H]
        weights = torch.full((B, T_), 1.0 / (B * T_), device=device)  # token-mean, every token gated in
        return hs, ht, W, weights

    # warm-up on 8 positions: loads the kernels' code pages, which would otherwise count as memory
    warm = make(8)
    step(*warm).backward()
    del warm
    hs, ht, W, weights = make(T)
    grad_buffer = V * H * W.element_size()

    def reset_peak() -> int:
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _rss_bytes("VmRSS")

    def peak() -> int:
        sync()
        return torch.cuda.max_memory_allocated() if cuda else _rss_bytes("VmHWM")

    base = reset_peak()
    t0 = time.perf_counter()
    loss = step(hs, ht, W, weights)
    sync()
    t1 = time.perf_counter()
    fwd_peak = peak()
    reset_peak()
    loss.backward()
    sync()
    t2 = time.perf_counter()
    bwd_peak = peak()
    # The head's gradient buffer [V, H] is formed in the forward by fused_weighted, in the backward
    # otherwise; it is subtracted in the phase that holds it.
    fwd_act = fwd_peak - base - (grad_buffer if variant == "fused_weighted" else 0)
    bwd_act = bwd_peak - base - grad_buffer
    return {
        "variant": variant,
        "B": B,
        "T": T,
        "H": H,
        "V": V,
        "dtype": dtype_name,
        "device": device,
        "chunk": chunk,
        "threads": torch.get_num_threads(),
        "loss": float(loss.detach()),
        "grad_norm_h": float(hs.grad.float().norm()),
        "grad_norm_w": float(W.grad.float().norm()),
        "forward_s": t1 - t0,
        "backward_s": t2 - t1,
        "total_s": t2 - t0,
        "extra_mb": max(fwd_act, bwd_act) / 2**20,
        "forward_extra_mb": fwd_act / 2**20,
        "backward_extra_mb": bwd_act / 2**20,
        "peak_above_inputs_mb": (max(fwd_peak, bwd_peak) - base) / 2**20,
        "loadavg_1m": os.getloadavg()[0],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--H", type=int, default=2560)
    p.add_argument("--V", type=int, default=151936)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--chunk", type=int, default=None, help="rows per chunk; default: auto")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--out", default="bench/results/kl_memory.json")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one, a.B, a.T[0], a.H, a.V, a.dtype, a.device, a.chunk)))
        return
    rows = []
    for T in a.T:
        for v in a.variants:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                v,
                "--T",
                str(T),
                "--B",
                str(a.B),
                "--H",
                str(a.H),
                "--V",
                str(a.V),
                "--dtype",
                a.dtype,
                "--device",
                a.device,
            ] + (["--chunk", str(a.chunk)] if a.chunk else [])
            print(f"[kl_memory] T={T} {v} ...", file=sys.stderr, flush=True)
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"[kl_memory]   extra {r['extra_mb']:.0f} MB, fwd {r['forward_s']:.2f}s bwd {r['backward_s']:.2f}s",
                file=sys.stderr,
                flush=True,
            )
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(markdown_table(rows))


def markdown_table(rows: list[dict]) -> str:
    by = {(r["T"], r["variant"]): r for r in rows}
    lines = [
        "| B x T | variant | forward s | backward s | total s | KL activation MB | memory vs materialised "
        "| time vs materialised |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for T in sorted({r["T"] for r in rows}):
        m = by.get((T, "materialised"))
        for v in VARIANTS:
            r = by.get((T, v))
            if r is None:
                continue
            mem = f"{m['extra_mb'] / max(r['extra_mb'], 1e-9):.1f}x less" if m and v != "materialised" else "1"
            tim = f"{r['total_s'] / m['total_s']:.2f}x" if m and v != "materialised" else "1"
            lines.append(
                f"| {r['B']} x {T} | {v} | {r['forward_s']:.2f} | {r['backward_s']:.2f} | {r['total_s']:.2f} | "
                f"{r['extra_mb']:.0f} | {mem} | {tim} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
