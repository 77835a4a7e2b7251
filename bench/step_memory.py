"""Peak memory and time of one micro-batch's loss forward + backward: materialised vs fused.

Part 1 (``--T``): the whole SDPG loss (DAPO policy term + beta * full-vocabulary OPD + alpha * URKL reference
surrogate, ``sdpg_urkl`` preset at its peak beta) and GRPO's (policy term + k3 reference term, no teacher),
from hidden states at Qwen3-4B's output head (H = 2,560, V = 151,936, no bias), B = 1, every position gated
in (the worst case). Impls: ``materialised`` (logits [B, T, V] and autograd: the reference), ``kl_fused_only``
(the trainer's path before the fused step: logits for log pi(y_t) and the entropy, the KL from hidden
states) and ``fused`` (``step_loss``). Each (loss, impl, T) runs in a fresh process. The old and reference log-probs are
made by the chunked no-grad pass before the measurement. "Activation" = the larger of the forward and
backward peaks (peak RSS, reset after the inputs are built; CUDA: max_memory_allocated) minus the inputs and
minus the head's gradient buffer [V, H] (which training holds anyway). A variant is not run when the
previous T's peak, doubled, would not fit in the memory available (MemAvailable); the table says so.

Part 2 (``--trainer-steps``): the whole trainer on the embedded task, materialised against fused
(``optim.loss_impl``), each in a fresh process: peak resident memory of each training step (VmHWM
reset after every step by a metric sink), and the median update time.

    python bench/step_memory.py                                   # CPU, fp32, T = 1024 2048 4096, trainer
    python bench/step_memory.py --device cuda --dtype bfloat16 --T 4096 6144 --trainer-steps 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

IMPLS = ("materialised", "kl_fused_only", "fused", "fused_compiled", "verl", "cce")  # kl_fused_only: the trainer's old path
PEERS = ("verl", "cce")  # other projects' fused log-prob heads (the ``bench`` extra); GRPO's loss only: no KL
LOSSES = ("sdpg", "grpo")


def _verl_fused_linear():
    """verl's pure-PyTorch ``FusedLinearForPPO`` (log-probs and entropy, chunked, backward recomputes), read
    from the installed ``verl`` package without running its ``__init__`` (which needs ray and more)."""
    import importlib.util

    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("verl is not installed (pip install verl --no-deps)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "utils", "experimental", "torch_functional.py")
    mod_spec = importlib.util.spec_from_file_location("_verl_torch_functional", path)
    if mod_spec is None or mod_spec.loader is None:
        raise ImportError(f"verl has no {path}")
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.FusedLinearForPPO


def peer_missing(impl: str) -> str | None:
    """Why a peer cannot run here (None: it can)."""
    try:
        if impl == "verl":
            _verl_fused_linear()
        elif impl == "cce":
            import cut_cross_entropy  # noqa: F401
    except Exception as e:  # an import error of any kind: the row says what it was
        return f"{type(e).__name__}: {e}"
    return None


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable")


def _reset_rss_peak() -> int:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


def run_loss(
    loss_name: str,
    impl: str,
    T: int,
    H: int,
    V: int,
    dtype_name: str,
    device: str,
    chunk: int | None,
    grads_dir: str | None = None,
) -> dict:
    import torch

    from sdpg.objective import (
        FusedKLInputs,
        StepLossSettings,
        hidden_token_logprobs,
        sdpg_loss,
        step_loss,
        token_entropy,
        token_logprobs,
    )
    from sdpg.training.config import AlgoConfig

    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    cuda = device == "cuda"
    a = AlgoConfig(method="sdpg_urkl" if loss_name == "sdpg" else "grpo")
    st = StepLossSettings(
        beta=a.beta,
        alpha=a.alpha,
        kl_mode=a.kl_mode,
        gate=a.gate,
        opd_norm=a.opd_norm,
        pg_coef=a.pg_coef,
        policy_mode=a.policy_loss,
        clip_low=a.clip_low,
        clip_high=a.clip_high,
        clip_c=a.clip_c,
        loss_agg_mode=a.loss_agg_mode,
    )
    distil = loss_name == "sdpg"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def make(T_):
        g = torch.Generator(device=device).manual_seed(T_)
        hs = torch.randn(1, T_, H, device=device, generator=g).to(dtype).requires_grad_(True)  # [1, T, H]
        ht = torch.randn(1, T_, H, device=device, generator=g).to(dtype) if distil else None  # [1, T, H]
        W = (torch.randn(V, H, device=device, generator=g) * H**-0.5).to(dtype).requires_grad_(True)  # [V, H]
        tokens = torch.randint(0, V, (1, T_), device=device, generator=g)  # [1, T]
        mask = torch.ones(1, T_, device=device)  # [1, T]
        adv = torch.ones(1, device=device)  # [1], gated in
        cur, _ = hidden_token_logprobs(hs.detach(), W.detach(), None, tokens, with_entropy=False, chunk_size=chunk)
        noise = torch.randn(1, T_, device=device, generator=g)  # [1, T]
        return hs, ht, W, tokens, mask, adv, cur + 0.1 * noise, cur + 0.5 * noise

    verl_head = _verl_fused_linear()() if impl == "verl" else None  # its default chunk: 512 positions

    def step(hs, ht, W, tokens, mask, adv, old, ref):
        if impl in PEERS:  # log pi(y_t) from the peer's fused head, then the same policy term as the others
            if impl == "verl":
                logp, _ent = verl_head(hs, W, tokens)  # [1, T] each; its entropy is computed, not differentiated
            else:
                from cut_cross_entropy import linear_cross_entropy

                logp = -linear_cross_entropy(hs, W, tokens, reduction="none", impl="torch_compile")  # [1, T]; no entropy
            loss, _ = sdpg_loss(logp, old, adv, mask, ref_logp=ref, **st.sdpg_kwargs())
            return loss
        if impl == "kl_fused_only":  # logits [B, T, V] for log pi(y_t) and the entropy, the KL from hidden states
            logits = torch.nn.functional.linear(hs, W)  # [1, T, V]
            logp = token_logprobs(logits, tokens)  # [1, T]
            with torch.no_grad():
                token_entropy(logits, 1.0)
            loss, _ = sdpg_loss(
                logp, old, adv, mask, opd=FusedKLInputs(hs, ht, W, chunk_size=chunk), ref_logp=ref, **st.sdpg_kwargs()
            )
            return loss
        loss, _, _ = step_loss(
            hs, W, None, tokens, adv, mask, st, teacher_hidden=ht, old_logp=old, ref_logp=ref, impl=impl, chunk_size=chunk
        )
        return loss

    # warm-up on 8 positions: loads the kernels' code pages, which would otherwise count as memory, and builds
    # the compiled kernels (fused_compiled, cce: dynamic shapes, so the build is not repeated at T)
    tw = time.perf_counter()
    warm = make(8)
    step(*warm).backward()
    del warm
    warmup_s = time.perf_counter() - tw
    inputs = make(T)
    hs, W = inputs[0], inputs[2]
    grad_buffer = V * H * W.element_size()

    def reset_peak() -> int:
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        return _reset_rss_peak()

    def peak() -> int:
        sync()
        return torch.cuda.max_memory_allocated() if cuda else _status_bytes("VmHWM")

    base = reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    loss = step(*inputs)
    sync()
    t1, c1 = time.perf_counter(), time.process_time()
    fwd_peak = peak()
    reset_peak()
    t1b, c1b = time.perf_counter(), time.process_time()
    loss.backward()
    sync()
    t2, c2 = time.perf_counter(), time.process_time()
    bwd_peak = peak()
    # the fused path forms the head's gradient [V, H] in the forward; the materialised one in the backward
    fwd_act = fwd_peak - base - (grad_buffer if impl not in ("materialised", "verl", "cce") else 0)
    bwd_act = bwd_peak - base - grad_buffer
    if grads_dir:  # for the agreement between impls: the loss, dL/dh and a fixed sample of dL/dW's rows
        rows = torch.randperm(V, generator=torch.Generator().manual_seed(1))[:2048].to(device)  # [2048]
        torch.save(
            {"loss": loss.detach().double().cpu(), "grad_h": hs.grad.double().cpu(), "grad_w": W.grad[rows].double().cpu()},
            os.path.join(grads_dir, f"{loss_name}_{impl}_{T}.pt"),
        )
    return {
        "loss_name": loss_name,
        "impl": impl,
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
        "backward_s": t2 - t1b,
        "total_s": (t1 - t0) + (t2 - t1b),
        "cpu_s": (c1 - c0) + (c2 - c1b),  # CPU time of all threads: less sensitive to a shared machine's load
        "activation_mb": max(fwd_act, bwd_act) / 2**20,
        "forward_activation_mb": fwd_act / 2**20,
        "backward_activation_mb": bwd_act / 2**20,
        "peak_above_inputs_mb": (max(fwd_peak, bwd_peak) - base) / 2**20,
        "inputs_mb": base / 2**20,
        "warmup_s": warmup_s,
        "loadavg_1m": os.getloadavg()[0],
    }


def agreement(grads_dir: str, loss_name: str, impl: str, T: int) -> dict:
    """Relative errors against the materialised run on the same inputs: |loss - ref| / |ref|, and
    max |g - g_ref| / max |g_ref| for dL/dh and the sampled rows of dL/dW (empty if either is missing)."""
    import torch

    a, b = (os.path.join(grads_dir, f"{loss_name}_{i}_{T}.pt") for i in (impl, "materialised"))
    if not (os.path.exists(a) and os.path.exists(b)):
        return {}
    got, ref = torch.load(a), torch.load(b)
    out = {"loss_rel_err": float((got["loss"] - ref["loss"]).abs() / ref["loss"].abs().clamp_min(1e-30))}
    for k in ("grad_h", "grad_w"):
        out[k + "_rel_err"] = float((got[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-30))
    return out


class _PeakRSSSink:
    """Records the process's peak RSS over each logged step, then resets the peak."""

    def __init__(self):
        self.rows = []
        _reset_rss_peak()

    def log(self, metrics, step):
        self.rows.append({"step": step, "peak_rss_mb": _status_bytes("VmHWM") / 2**20, **metrics})
        _reset_rss_peak()

    def close(self):
        pass


def run_trainer(impl: str, steps: int, overrides: list[str]) -> dict:
    import torch

    from sdpg.training.config import load_config
    from sdpg.training.trainer import train

    with tempfile.TemporaryDirectory() as d:
        cfg = load_config(
            None,
            [
                *overrides,
                f"optim.loss_impl={impl}",
                f"run.total_steps={steps}",
                "eval.every=0",
                f"run.output_dir={d}",
                "run.checkpoint_every=0",
                "run.resume=false",
            ],
        )
        sink = _PeakRSSSink()
        train(cfg, sinks=[sink])
    rows = [r for r in sink.rows if r["step"] >= 2]  # step 1 carries one-time allocations
    return {
        "impl": impl,
        "steps": len(rows),
        "threads": torch.get_num_threads(),
        "overrides": overrides,
        "step_peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
        "update_s": statistics.median(r["timing/update"] for r in rows),
        "logprobs_s": statistics.median(r["timing/logprobs"] for r in rows),
        "step_s": statistics.median(r["timing/step"] for r in rows),
        "loadavg_1m": os.getloadavg()[0],
    }


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, nargs="*", default=[1024, 2048, 4096], help="none: only the trainer part")
    p.add_argument("--H", type=int, default=2560)
    p.add_argument("--V", type=int, default=151936)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--chunk", type=int, default=None, help="rows per chunk; default: auto")
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS, help="which impls to run (default: all)")
    p.add_argument("--trainer-steps", type=int, default=6, help="steps of each trainer run; 0 skips part 2")
    p.add_argument("--trainer-overrides", nargs="*", default=[], help="key=value for the trainer runs")
    p.add_argument("--out", default="bench/results/step_memory.json")
    p.add_argument("--grads-dir", help=argparse.SUPPRESS)  # where a child leaves its loss and gradients
    p.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # loss impl T
    p.add_argument("--trainer-one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(run_loss(a.one[0], a.one[1], int(a.one[2]), a.H, a.V, a.dtype, a.device, a.chunk, a.grads_dir)))
        return
    if a.trainer_one:
        print(json.dumps(run_trainer(a.trainer_one, a.trainer_steps, a.trainer_overrides)))
        return
    rows, skipped, last_peak = [], [], {}
    grads_dir = tempfile.mkdtemp(prefix="step_memory_grads_")
    missing = {impl: peer_missing(impl) for impl in PEERS if impl in a.impls}
    for T in sorted(a.T):
        for loss_name in a.losses:
            for impl in a.impls:
                if impl == "kl_fused_only" and loss_name != "sdpg":
                    continue  # without a teacher it is the materialised path
                if impl in PEERS and loss_name != "grpo":
                    continue  # the peers compute log-probs (and entropy), not a KL to a teacher
                if missing.get(impl):
                    skipped.append({"loss_name": loss_name, "impl": impl, "T": T, "reason": f"not installed ({missing[impl]})"})
                    print(f"[step_memory] T={T} {loss_name} {impl}: not installed: {missing[impl]}", file=sys.stderr, flush=True)
                    continue
                key = (loss_name, impl)
                # the previous T's whole peak scaled to this T (an over-estimate: the inputs do not all scale)
                need = last_peak[key] * T / last_peak[key + ("T",)] if key in last_peak else 0
                avail = _mem_available() if a.device == "cpu" else None
                if avail is not None and need > avail - 4 * 2**30:  # leave 4 GiB to the machine's other users
                    skipped.append(
                        {"loss_name": loss_name, "impl": impl, "T": T, "need_mb": need / 2**20, "available_mb": avail / 2**20}
                    )
                    print(
                        f"[step_memory] T={T} {loss_name} {impl}: skipped, needs ~{need / 2**30:.1f} GiB, "
                        f"{avail / 2**30:.1f} GiB available",
                        file=sys.stderr,
                        flush=True,
                    )
                    continue
                print(f"[step_memory] T={T} {loss_name} {impl} ...", file=sys.stderr, flush=True)
                extra = ["--H", str(a.H), "--V", str(a.V), "--dtype", a.dtype, "--device", a.device]
                r = _child(
                    [
                        "--one",
                        loss_name,
                        impl,
                        str(T),
                        *extra,
                        "--grads-dir",
                        grads_dir,
                        *(["--chunk", str(a.chunk)] if a.chunk else []),
                    ]
                )
                rows.append(r)
                last_peak[key] = (r["inputs_mb"] + r["peak_above_inputs_mb"]) * 2**20
                last_peak[key + ("T",)] = T
                print(
                    f"[step_memory]   activation {r['activation_mb']:.0f} MB, fwd {r['forward_s']:.2f}s "
                    f"bwd {r['backward_s']:.2f}s loss {r['loss']:.6g}",
                    file=sys.stderr,
                    flush=True,
                )
    for r in rows:  # every impl against the materialised run on the same inputs
        r.update(agreement(grads_dir, r["loss_name"], r["impl"], r["T"]) if r["impl"] != "materialised" else {})
    for f in os.listdir(grads_dir):
        os.remove(os.path.join(grads_dir, f))
    os.rmdir(grads_dir)
    trainer = []
    if a.trainer_steps > 0:
        for impl in ("materialised", "fused"):
            print(f"[step_memory] trainer {impl} ...", file=sys.stderr, flush=True)
            trainer.append(
                _child(
                    ["--trainer-one", impl, "--trainer-steps", str(a.trainer_steps), "--trainer-overrides", *a.trainer_overrides]
                )
            )
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"loss": rows, "skipped": skipped, "trainer": trainer}, f, indent=1)
    print(markdown(rows, skipped, trainer))


def markdown(rows: list[dict], skipped: list[dict], trainer: list[dict]) -> str:
    by = {(r["loss_name"], r["T"], r["impl"]): r for r in rows}
    lines = [
        (
            "| loss | B x T | impl | forward s | backward s | total s | activation MB | peak above inputs MB "
            "| memory vs materialised | wall time vs materialised | CPU s | CPU time vs materialised "
            "| loss rel. err | dL/dh rel. err | dL/dW rel. err | warm-up s | load |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def err(r: dict, k: str) -> str:
        return f"{r[k]:.1e}" if k in r else ""

    for loss_name in LOSSES:
        for T in sorted({r["T"] for r in rows} | {s["T"] for s in skipped}):
            m = by.get((loss_name, T, "materialised"))
            for impl in IMPLS:
                r = by.get((loss_name, T, impl))
                if r is None:
                    s = next((s for s in skipped if (s["loss_name"], s["T"], s["impl"]) == (loss_name, T, impl)), None)
                    if s is not None:
                        why = s.get("reason") or (
                            f"not run: needs ~{s['need_mb'] / 1024:.1f} GiB, {s['available_mb'] / 1024:.1f} GiB available"
                        )
                        lines.append(f"| {loss_name} | 1 x {T} | {impl} | {why} |" + " |" * 14)
                    continue
                fused = impl != "materialised" and m is not None
                mem = (
                    "1"
                    if not fused
                    else (f"{m['activation_mb'] / r['activation_mb']:.1f}x less" if r["activation_mb"] >= 1 else "below 1 MB")
                )
                tim = f"{r['total_s'] / m['total_s']:.2f}x" if fused else "1"
                cpu = f"{r['cpu_s'] / m['cpu_s']:.2f}x" if fused else "1"
                lines.append(
                    f"| {loss_name} | 1 x {T} | {impl} | {r['forward_s']:.2f} | {r['backward_s']:.2f} | "
                    f"{r['total_s']:.2f} | {r['activation_mb']:.0f} | {r['peak_above_inputs_mb']:.0f} | {mem} | {tim} | "
                    f"{r['cpu_s']:.2f} | {cpu} | {err(r, 'loss_rel_err')} | {err(r, 'grad_h_rel_err')} | "
                    f"{err(r, 'grad_w_rel_err')} | {r.get('warmup_s', 0):.1f} | {r['loadavg_1m']:.1f} |"
                )
    if trainer:
        lines += ["", "| trainer (embedded task) | step peak RSS MB | update s | log-probs s | step s |", "|---|---|---|---|---|"]
        for t in trainer:
            lines.append(
                f"| {t['impl']} | {t['step_peak_rss_mb']:.0f} | {t['update_s']:.3f} | {t['logprobs_s']:.3f} | {t['step_s']:.3f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
