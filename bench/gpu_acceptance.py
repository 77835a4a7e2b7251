"""One prepared run that answers every GPU question of the project, part by part, each part time-boxed.

    python bench/gpu_acceptance.py                      # CUDA, bf16, full size (about 8 minutes on one H100/H200)
    python bench/gpu_acceptance.py --device cpu --tiny  # every part at toy size (CI runs this)
    python bench/gpu_acceptance.py --print-wheels       # packages a bare GPU machine needs beyond its own

Parts (each in a fresh process with its own time limit, so one slow part cannot eat the rest; results are
appended to ``acceptance.json`` and ``acceptance.md`` in ``--out`` as each part ends):

0. ``facts``: GPU name, torch / CUDA / transformers versions, load average.
1. ``fused``: the fused step (``optim.loss_impl=fused``) against the materialised one at Qwen3-4B's head
   (H 2,560, V 151,936), bf16, T = 4,096 and 8,192, GRPO and SDPG-URKL (every position gated in): peak
   allocated memory above the inputs (``torch.cuda.max_memory_allocated``), median time of forward + backward
   by CUDA events, loss and gradient agreement (largest difference over the largest magnitude).
2. ``train``: training steps of a Qwen3-0.6B-shaped model built from its config with random weights (no
   download), bf16 compute over fp32 master weights, GRPO then SDPG-URKL on the same prompts: median time per
   phase, peak memory per step, SDPG/GRPO ratio. SDPG runs ungated (``algo.gate=false``): random weights score
   every response alike, so the A > 0 gate would skip distillation and the ratio would measure nothing.
3. ``fsdp``: the same SDPG steps under FSDP2 on one rank (``torchrun --nproc_per_node 1``, NCCL on CUDA, gloo
   on CPU): the code path a cluster runs.
4. ``resume``: 4 steps uninterrupted against 2 steps, stop, resume to 4: steps 3-4 equal (bitwise, and the
   largest difference when not).

Deviations from a full benchmark: one run per measurement (a lent GPU has minutes, not hours); the training
parts use the built-in task's prompts with a tokenizer of 80 characters (the model's 151,936-row head and its
cost are the real ones; sampled ids beyond the tokenizer decode to nothing and score as wrong).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTS = ("facts", "fused", "train", "fsdp", "resume")
# the share of the whole budget each part may use (facts is instant); what a part leaves unused passes on
SHARES = {"facts": 0.02, "fused": 0.30, "train": 0.30, "fsdp": 0.18, "resume": 0.20}
# the Python packages of the lent GPU machines' image (as listed for it on 2026-11-17); anything else travels as a wheel
MACHINE_HAS = tuple(
    """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
    charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
    jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
    llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
    multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
    nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
    nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
    nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless
    optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
    pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
    pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
    python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
    scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson
    six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
    tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision
    tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug
    wheel wrapt xarray xxhash yarl zipp
    """.split()
)

QWEN3_0_6B = dict(
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    tie_word_embeddings=True,
)
TINY_MODEL = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)


# --------------------------------------------------------------------------------------------- wheels
def _norm(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_closure(names: list[str], stop: frozenset[str] = frozenset()) -> set[str]:
    """Distribution names (normalised) of ``names`` and everything they require, as installed here; the
    requirements of a distribution in ``stop`` are not followed (the machine has it with its own)."""
    import re
    from importlib import metadata

    norm = _norm

    seen: set[str] = set()
    todo = [norm(n) for n in names]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        try:
            dist = metadata.distribution(n)
        except metadata.PackageNotFoundError:
            continue
        seen.add(n)
        if n in stop:
            continue
        for req in dist.requires or []:
            if "extra ==" in req:
                if "antlr4-13-2" not in req:  # math-verify's parser extra, which sdpg asks for
                    continue
            m = re.match(r"[A-Za-z0-9_.\-]+", req)
            if m:
                todo.append(norm(m.group(0)))
    return seen


def sdpg_base_requirements() -> list[str]:
    from importlib import metadata

    reqs = metadata.distribution("sdpg").requires or []
    return [r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for r in reqs if "extra ==" not in r]


def wheels_needed() -> list[str]:
    """Distributions the training path needs that a bare GPU machine lacks (sdpg's own dependencies minus
    what the machine holds, closed over their requirements)."""
    machine = frozenset(_norm(n) for n in MACHINE_HAS)
    return sorted(_requirement_closure(sdpg_base_requirements(), stop=machine) - machine)


def print_wheels() -> None:
    names = wheels_needed()
    print(" ".join(names))
    print(
        "# fetch them for the GPU machine's Python (3.12 there), binary wheels only (nothing is compiled there):\n"
        "# pip download --only-binary=:all: --no-deps --python-version 3.12 --platform manylinux2014_x86_64 -d .whl "
        + " ".join(names),
        file=sys.stderr,
    )


# --------------------------------------------------------------------------------------------- parts
def part_facts(args) -> dict:
    import torch
    import transformers

    cuda = args.device == "cuda"
    return {
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
    }


class _Clock:
    """Wall time of a block: CUDA events on a GPU, perf_counter on CPU."""

    def __init__(self, cuda: bool):
        import torch

        self.cuda = cuda
        self.torch = torch

    def __enter__(self):
        if self.cuda:
            self.start = self.torch.cuda.Event(enable_timing=True)
            self.end = self.torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            self.torch.cuda.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0


def _peak_reset(cuda: bool) -> int:
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")
    return _vm("VmRSS")


def _peak(cuda: bool) -> int:
    import torch

    if cuda:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _vm("VmHWM")


def _vm(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def part_fused(args) -> dict:
    """Materialised vs fused forward + backward of one micro-batch's loss at the output head."""
    import torch

    from sdpg.objective import StepLossSettings, hidden_token_logprobs, step_loss
    from sdpg.training.config import AlgoConfig

    cuda = args.device == "cuda"
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    H, V, Ts = (64, 1000, (32, 64)) if args.tiny else (2560, 151936, (4096, 8192))
    rows = []
    for loss_name in ("grpo", "sdpg"):
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
        for T in Ts:
            g = torch.Generator(device=args.device).manual_seed(T)
            hs0 = torch.randn(1, T, H, device=args.device, generator=g).to(dtype)  # [1, T, H]
            ht = torch.randn(1, T, H, device=args.device, generator=g).to(dtype) if loss_name == "sdpg" else None  # [1, T, H]
            W0 = (torch.randn(V, H, device=args.device, generator=g) * H**-0.5).to(dtype)  # [V, H]
            tokens = torch.randint(0, V, (1, T), device=args.device, generator=g)  # [1, T]
            mask = torch.ones(1, T, device=args.device)  # [1, T]
            adv = torch.ones(1, device=args.device)  # [1]: every position gated in
            cur, _ = hidden_token_logprobs(hs0, W0, None, tokens, with_entropy=False)  # [1, T]
            noise = torch.randn(1, T, device=args.device, generator=g)  # [1, T]
            old, ref = cur + 0.1 * noise, cur + 0.5 * noise  # [1, T] each
            grads = {}
            for impl in ("materialised", "fused"):
                times = []
                for rep in range(4):  # one warm-up, three timed
                    hs = hs0.clone().requires_grad_(True)
                    W = W0.clone().requires_grad_(True)
                    base = _peak_reset(cuda)
                    with _Clock(cuda) as clock:
                        loss, _, _ = step_loss(
                            hs, W, None, tokens, adv, mask, st, teacher_hidden=ht, old_logp=old, ref_logp=ref, impl=impl
                        )
                        loss.backward()
                    peak = _peak(cuda) - base
                    if rep:
                        times.append(clock.seconds)
                grads[impl] = (float(loss.detach()), hs.grad.float(), W.grad.float())
                rows.append(
                    {
                        "loss": loss_name,
                        "impl": impl,
                        "T": T,
                        "dtype": str(dtype).removeprefix("torch."),
                        "time_s": statistics.median(times),
                        "peak_above_inputs_mb": peak / 2**20,
                    }
                )
                del hs, W
            (lm, ghm, gwm), (lf, ghf, gwf) = grads["materialised"], grads["fused"]
            agreement = {
                "loss_rel": abs(lf - lm) / max(abs(lm), 1e-12),
                "grad_hidden_rel": float((ghf - ghm).abs().max() / ghm.abs().max().clamp_min(1e-30)),
                "grad_head_rel": float((gwf - gwm).abs().max() / gwm.abs().max().clamp_min(1e-30)),
            }
            m, f = rows[-2], rows[-1]
            f.update(agreement)
            f["time_vs_materialised"] = f["time_s"] / m["time_s"]
            # below a few MB (toy sizes on CPU) resident-memory peaks are page noise, not a ratio
            big = min(m["peak_above_inputs_mb"], f["peak_above_inputs_mb"]) >= 4
            f["memory_less_x"] = m["peak_above_inputs_mb"] / f["peak_above_inputs_mb"] if big else None
            del grads
            if cuda:
                torch.cuda.empty_cache()
    return {"rows": rows}


def _model_dir(args) -> str:
    """A Qwen3-shaped model with random weights (fp32 master weights on disk) and the built-in tokenizer."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from sdpg.training.embedded import build_tokenizer

    out = Path(args.out) / ("model-tiny" if args.tiny else "model-qwen3-0.6b-shape")
    if (out / "config.json").exists():
        return str(out)
    tok = build_tokenizer()
    shape = TINY_MODEL if args.tiny else QWEN3_0_6B
    cfg = Qwen3Config(**shape, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg).to(torch.float32)
    tmp = Path(tempfile.mkdtemp(dir=args.out, prefix=".model-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)
    return str(out)


def _train_overrides(args, model_dir: str, method: str, out: str, steps: int) -> list[str]:
    tiny = args.tiny
    o = [
        f"model.path={model_dir}",
        f"model.device={args.device}",
        f"model.dtype={'bfloat16' if args.dtype == 'bfloat16' else 'float32'}",
        "model.param_dtype=float32",
        "data.train=embedded",
        "eval.every=0",
        f"rollout.prompts_per_step={2 if tiny else 16}",
        f"rollout.group_size={2 if tiny else 8}",
        f"rollout.max_new_tokens={8 if tiny else 512}",
        f"optim.micro_batch_size={4 if tiny else 16}",
        "optim.lr=1e-6",
        f"run.total_steps={steps}",
        "run.checkpoint_every=0",
        "run.log_samples=0",
        f"run.output_dir={out}",
        f"algo.method={method}",
    ]
    if method == "sdpg_urkl":
        o += ["algo.gate=false", "algo.beta_warmup_steps=0"]
    if tiny and args.device == "cpu":
        o.append("run.threads=1")
    return o


class _StepSink:
    """Per step: the trainer's timings and the peak memory since the previous step."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.rows: list[dict] = []
        _peak_reset(cuda)

    def log(self, metrics, step):
        if step > 0:
            self.rows.append({"step": step, "peak_mb": _peak(self.cuda) / 2**20, **metrics})
        _peak_reset(self.cuda)

    def close(self):
        pass


def _summarise(rows: list[dict]) -> dict:
    later = rows[1:] or rows  # step 1 carries one-time allocations and compilation
    keys = sorted({k for r in later for k in r if k.startswith("timing/")})
    return {
        "steps": len(rows),
        "peak_mb": max(r["peak_mb"] for r in later),
        **{k: statistics.median(r[k] for r in later if k in r) for k in keys},
        "loss_finite": all(all(v == v for k, v in r.items() if k.startswith("train/")) for r in rows),
    }


def part_train(args) -> dict:
    from sdpg.training.config import load_config
    from sdpg.training.trainer import train

    model_dir = _model_dir(args)
    steps = 2 if args.tiny else 4
    result = {}
    for method in ("grpo", "sdpg_urkl"):
        with tempfile.TemporaryDirectory(dir=args.out) as d:
            sink = _StepSink(args.device == "cuda")
            train(load_config(None, _train_overrides(args, model_dir, method, d, steps)), sinks=[sink])
            result[method] = _summarise(sink.rows)
    g, s = result["grpo"], result["sdpg_urkl"]
    result["sdpg_over_grpo"] = {
        "step_time": s["timing/step"] / g["timing/step"],
        "update_time": s["timing/update"] / g["timing/update"],
        "peak_memory": s["peak_mb"] / g["peak_mb"],
    }
    return result


def part_fsdp(args) -> dict:
    """SDPG steps as one torchrun rank with FSDP2 (the fsdp-worker entry below runs inside torchrun)."""
    model_dir = _model_dir(args)
    out = Path(tempfile.mkdtemp(dir=args.out, prefix="fsdp-"))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "1",
        "--master_port",
        str(29500 + os.getpid() % 1000),
        __file__,
        "--fsdp-worker",
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--out",
        args.out,
        "--model-dir",
        model_dir,
        "--run-dir",
        str(out),
    ] + (["--tiny"] if args.tiny else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError("torchrun failed: " + proc.stderr.strip()[-2000:])
    return json.loads((out / "fsdp.json").read_text())


def fsdp_worker(args) -> None:
    from sdpg.training.config import load_config
    from sdpg.training.trainer import train

    steps = 2 if args.tiny else 4
    sink = _StepSink(args.device == "cuda")
    res = train(
        load_config(None, _train_overrides(args, args.model_dir, "sdpg_urkl", args.run_dir, steps) + ["model.fsdp=true"]),
        sinks=[sink],
    )
    log = (Path(args.run_dir) / "config.yaml").exists()
    summary = {"world_size": res["world_size"], "status": res["status"], "config_written": log, **_summarise(sink.rows)}
    (Path(args.run_dir) / "fsdp.json").write_text(json.dumps(summary))


def part_resume(args) -> dict:
    from sdpg.training.config import load_config
    from sdpg.training.trainer import train

    model_dir = _model_dir(args)
    runs = {}
    for name, stop in (("full", None), ("part", 2)):
        d = tempfile.mkdtemp(dir=args.out, prefix=f"resume-{name}-")
        cfg = load_config(None, _train_overrides(args, model_dir, "sdpg_urkl", d, 4) + ["run.checkpoint_every=0"])
        train(cfg, stop_after_step=stop)
        if stop is not None:
            train(cfg)  # resumes from the checkpoint written when it stopped
        runs[name] = [json.loads(line) for line in (Path(d) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = {n: [r["step"] for r in rs] for n, rs in runs.items()}

    def training_numbers(r: dict) -> dict:
        return {k: v for k, v in r.items() if k.startswith("train/")}

    full = {r["step"]: training_numbers(r) for r in runs["full"]}
    part = {r["step"]: training_numbers(r) for r in runs["part"]}
    diffs = {}
    for s in (3, 4):
        for k, v in full.get(s, {}).items():
            w = part.get(s, {}).get(k)
            if isinstance(v, float) and isinstance(w, float):
                diffs[f"{s}:{k}"] = abs(v - w)
    return {
        "steps_full": steps["full"],
        "steps_resumed": steps["part"],
        "every_step_once": steps["part"] == sorted(set(steps["part"])) and steps["part"][-1] == 4,
        "steps_3_4_bitwise_equal": all(full[s] == part[s] for s in (3, 4)),
        "largest_difference": max(diffs.values()) if diffs else None,
    }


RUNNERS = {"facts": part_facts, "fused": part_fused, "train": part_train, "fsdp": part_fsdp, "resume": part_resume}


# --------------------------------------------------------------------------------------------- report
def _markdown(results: dict) -> str:
    lines = ["# GPU acceptance", ""]
    facts = results["parts"].get("facts", {}).get("result") or {}
    if facts:
        lines += ["| fact | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts.items()] + [""]
    lines += ["| part | status | seconds | result |", "|---|---|---|---|"]
    for name in PARTS:
        p = results["parts"].get(name)
        if p is None:
            continue
        detail = p.get("reason") or ""
        if p["status"] == "ok" and name != "fused":
            detail = json.dumps(p["result"])[:400]
        lines.append(f"| {name} | {p['status']} | {p['seconds']:.0f} | {detail} |")
    fused = results["parts"].get("fused", {}).get("result")
    if fused:
        lines += [
            "",
            "| loss | impl | T | time (s) | peak above inputs (MB) | fused/materialised time | memory less (x) "
            "| loss rel. | grad rel. |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in fused["rows"]:
            grad = max(r.get("grad_hidden_rel", 0), r.get("grad_head_rel", 0)) if "loss_rel" in r else None
            lines.append(
                f"| {r['loss']} | {r['impl']} | {r['T']} | {r['time_s']:.4f} | {r['peak_above_inputs_mb']:.0f} | "
                f"{r.get('time_vs_materialised', ''):{'.2f' if 'time_vs_materialised' in r else ''}} | "
                f"{'' if r.get('memory_less_x') is None else format(r['memory_less_x'], '.1f')} | "
                f"{r.get('loss_rel', ''):{'.1e' if 'loss_rel' in r else ''}} | {'' if grad is None else f'{grad:.1e}'} |"
            )
    return "\n".join(lines) + "\n"


def _write(out: Path, results: dict) -> None:
    for name, text in (("acceptance.json", json.dumps(results, indent=1)), ("acceptance.md", _markdown(results))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def run_part(name: str, args, limit_s: float) -> dict:
    """One part in a fresh process, killed at ``limit_s``."""
    res_file = Path(args.out) / f".part-{name}.json"
    res_file.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--part", name, "--device", args.device, "--dtype", args.dtype, "--out", args.out]
    cmd += ["--tiny"] if args.tiny else []
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(limit_s, 1))
    except subprocess.TimeoutExpired:
        if res_file.exists():  # finished, then lingered at exit
            return {"status": "ok", "seconds": time.perf_counter() - t0, "result": json.loads(res_file.read_text())}
        return {"status": "timeout", "seconds": time.perf_counter() - t0, "reason": f"over its {limit_s:.0f} s"}
    seconds = time.perf_counter() - t0
    if proc.returncode or not res_file.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"status": "failed", "seconds": seconds, "reason": " / ".join(tail)[-600:] or f"exit {proc.returncode}"}
    return {"status": "ok", "seconds": seconds, "result": json.loads(res_file.read_text())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--tiny", action="store_true", help="every part at toy size (CI)")
    p.add_argument("--out", default="bench/results/gpu_acceptance")
    p.add_argument("--budget-s", type=float, default=480.0, help="the whole run's time; each part gets its share")
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--print-wheels", action="store_true")
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--fsdp-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.print_wheels:
        print_wheels()
        return 0
    wanted = [x for x in args.parts.split(",") if x]
    unknown = sorted(set(wanted) - set(PARTS))
    if unknown:
        print(f"gpu_acceptance: --parts: unknown part {unknown[0]!r} (parts: {', '.join(PARTS)})", file=sys.stderr)
        return 2
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("gpu_acceptance: no CUDA device here; use --device cpu --tiny for the toy-size run", file=sys.stderr)
            return 2
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.fsdp_worker:
        fsdp_worker(args)
        return 0
    if args.part:
        result = RUNNERS[args.part](args)
        (Path(args.out) / f".part-{args.part}.json").write_text(json.dumps(result))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # the result is on disk: a helper thread or process that lingers at exit must not eat the budget
    out = Path(args.out)
    results: dict = {"device": args.device, "dtype": args.dtype, "tiny": args.tiny, "budget_s": args.budget_s, "parts": {}}
    started = time.perf_counter()
    for name in PARTS:
        if name not in wanted:
            results["parts"][name] = {"status": "skipped", "seconds": 0.0, "reason": "not in --parts"}
            continue
        left = args.budget_s - (time.perf_counter() - started)
        later = sum(SHARES[n] for n in PARTS[PARTS.index(name) :] if n in wanted)
        limit = left * SHARES[name] / later if later else left
        print(f"gpu_acceptance: {name} (up to {limit:.0f} s)", file=sys.stderr, flush=True)
        results["parts"][name] = run_part(name, args, limit)
        print(f"gpu_acceptance: {name}: {results['parts'][name]['status']}", file=sys.stderr, flush=True)
        _write(out, results)
    print(f"gpu_acceptance: wrote {out / 'acceptance.json'} and {out / 'acceptance.md'}", file=sys.stderr)
    return 0 if all(p["status"] in ("ok", "skipped") for p in results["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
