"""What a rehearsal runs and how small: the runs as they would be submitted, the settings scaled down with the
structure of the real run kept, the folder it works in, and what cannot be rehearsed on this machine."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdpg import fsio
from sdpg.training.config import ConfigError, TrainConfig
from sdpg.training.embedded import SOURCE_TASK, task_of_source
from sdpg.training.errors import shorten

STEPS = 2
"""RL steps per rehearsed run (the first ends in a checkpoint and a requeue)."""


TRAIN_ROWS = 8
"""Rows of each training file trained on."""


EVAL_ROWS = 2
"""Problems of each benchmark evaluated."""


MAX_NEW_TOKENS = 8
"""Response length cap."""


EVAL_SAMPLES = 2
"""Most samples per evaluated problem."""


GOLD_CHECKS = 3
"""Gold answers of each file put to the scorer."""


CPU_ENGINE_GB = 1.5
"""Memory of the vLLM CPU engine for the shrunk model."""


MARKER = ".sdpg-rehearsal"


WRONG_ANSWER = "sdpg rehearsal: not the answer"


@dataclass
class RunItem:
    """One run as it would be submitted."""

    name: str
    hash: str
    config: TrainConfig


@dataclass
class Context:
    """Where the runs would go: what the rehearsal cannot reproduce here."""

    tool: str  # sdpg-ablate | sdpg-sweep
    kind: str  # ablation | sweep
    spec_path: Path
    spec_name: str
    executor: str
    profile: Any  # SlurmProfile | None
    profile_name: str | None
    tracking_uri: str
    objective: str | None = None  # sweeps: the metric a trial returns


@dataclass
class Outcome:
    name: str
    hash: str
    status: str = "pending"  # pass | fail | blocked
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    not_rehearsed: list[str] = field(default_factory=list)
    student_prompt: str | None = None
    teacher_prompt: str | None = None
    scorer: list[dict] = field(default_factory=list)
    shrunk: dict[str, Any] = field(default_factory=dict)
    steps_per_s: float | None = None
    wall_s: float | None = None
    output_dir: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def first_error(self) -> str:
        return self.errors[0] if self.errors else ""


def one_sentence(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(e, (ConfigError, RehearsalError)):
        return first
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


class RehearsalError(RuntimeError):
    """A rehearsal check failed; the message is one sentence."""


def world_size(profile) -> int:
    return profile.nodes * profile.tasks_per_node if profile is not None else 1


def scaled_layer(cfg: TrainConfig, world: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Dotted overrides that shrink a run's batches and lengths, and a ``key: real -> rehearsal``
    description. Structure kept: several minibatches per RL step stay several (2), gradient
    accumulation stays (2 micro-batches), token-budget packing stays on, several generate calls stay."""
    ro, op = cfg.rollout, cfg.optim
    P, G = ro.prompts_per_step, ro.group_size
    N = P * G
    n_mb = _minibatches(cfg, P, G)
    G_s, P_s = min(G, 2), min(P, 2)
    N_s = P_s * G_s
    n_mb_s = min(n_mb, 2, P_s)
    rows_mb_s = N_s // n_mb_s
    mb_rows = N / n_mb / world  # rows of a minibatch on one rank
    n_micro = 2 if op.micro_batch_tokens else math.ceil(mb_rows / op.micro_batch_size)
    n_micro_s = min(n_micro, 2, rows_mb_s)
    layer: dict[str, Any] = {
        "rollout.prompts_per_step": P_s,
        "rollout.group_size": G_s,
        "rollout.max_new_tokens": min(ro.max_new_tokens, MAX_NEW_TOKENS),
        "rollout.batch_size": N_s if ro.batch_size >= N else max(1, N_s // 2),
        "rollout.vllm_cpu_memory_gb": CPU_ENGINE_GB,
        "optim.micro_batch_size": math.ceil(rows_mb_s / n_micro_s),
        "eval.n_samples": min(cfg.eval.n_samples, EVAL_SAMPLES),
        "eval.pass_k": [k for k in cfg.eval.pass_k if k <= min(cfg.eval.n_samples, EVAL_SAMPLES)],
        "run.total_steps": STEPS,
        "run.threads": 1,
        "run.resume": True,
        "run.log_samples": 0,
        "model.device": "cpu",
    }
    if op.minibatch_size is not None:
        layer["optim.minibatch_size"] = rows_mb_s
    for key in _prompt_minibatch_keys(cfg):  # minibatches counted in prompts
        layer[key] = P_s // n_mb_s
    if op.micro_batch_tokens:
        layer["optim.micro_batch_tokens"] = 1  # one row per micro-batch: the packing path, several micro-batches
    if cfg.eval.max_new_tokens is not None:
        layer["eval.max_new_tokens"] = min(cfg.eval.max_new_tokens, MAX_NEW_TOKENS)
    if cfg.reward.overlong_buffer:
        layer["reward.overlong_buffer"] = max(1, min(cfg.reward.overlong_buffer, layer["rollout.max_new_tokens"] // 2))
    if cfg.model.attn_implementation and "flash" in cfg.model.attn_implementation:
        layer["model.attn_implementation"] = "sdpa"
    flat = _flat(cfg.resolved())
    changes = {
        k: f"{_fmt(flat.get(k))} -> {_fmt(v)}"
        for k, v in layer.items()
        if k in flat and flat.get(k) != v and not k.startswith("run.") and k != "rollout.vllm_cpu_memory_gb"
    }
    changes["minibatches per RL step"] = f"{n_mb} -> {n_mb_s}"
    changes["micro-batches per minibatch (per rank)"] = f"{n_micro} -> {n_micro_s}"
    return layer, changes


def _prompt_minibatch_keys(cfg: TrainConfig) -> list[str]:
    """Settings that give the minibatch in prompts, where the config has them."""
    return [f"optim.{k}" for k in ("minibatch_prompts", "prompts_per_minibatch") if getattr(cfg.optim, k, None) is not None]


def _minibatches(cfg: TrainConfig, P: int, G: int) -> int:
    for key in _prompt_minibatch_keys(cfg):
        return max(1, math.ceil(P / getattr(cfg.optim, key.split(".", 1)[1])))
    mb = cfg.optim.minibatch_size
    return max(1, math.ceil(P * G / mb)) if mb else 1


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fmt(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def _clip(s: str, n: int) -> str:
    return shorten(s, n)


def _missing_file(src: str) -> bool:
    """A data file (not a built-in set, not a hub dataset) that is not found from here."""
    if src in SOURCE_TASK or task_of_source(src) or src.startswith("hf:"):
        return False
    return not Path(src).expanduser().is_file()


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def default_folder(spec_name: str) -> Path:
    return Path.cwd() / "rehearsals" / spec_name


def prepare_folder(folder: Path) -> Path:
    """An empty rehearsal folder; an existing folder is emptied only if a rehearsal made it."""
    fsio.check_writable_target(folder)
    folder = folder.resolve()
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).is_file():
            raise ConfigError(f"--rehearse-dir {folder}: exists, is not empty and is not a rehearsal folder; choose another")
        shutil.rmtree(folder)
    fsio.ensure_dir(folder)
    fsio.write_text(folder / MARKER, "made by an sdpg rehearsal; emptied by the next one\n", root=folder)
    return folder


def _scaled_objective(objective: str | None, small: TrainConfig) -> str | None:
    """The sweep objective under the rehearsal's eval sample count (``mean@32`` is logged as ``mean@2``)."""
    from sdpg.training.metrics import with_samples

    return with_samples(objective, small.eval.n_samples) if objective else objective


def not_rehearsed(cfg: TrainConfig, ctx: Context, world: int, have_vllm: bool) -> list[str]:
    p = ctx.profile
    out = []
    if ctx.executor == "slurm":
        name = ctx.profile_name or "dev"
        out.append(
            f"SLURM submission with profile {name!r} (partition {getattr(p, 'partition', None) or 'default'}, "
            f"{getattr(p, 'timeout_min', '?')} min per job, requeue on timeout): the local executor ran the job "
            f"here, and the preemption path (stop, checkpoint, requeue, resume) was taken in-process"
        )
    if world > 1:
        fsdp = cfg.model.fsdp is True or (cfg.model.fsdp == "auto" and (getattr(p, "gpus_per_node", 0) or 0) > 0)
        out.append(
            f"{world} ranks ({p.nodes} node(s) x {p.tasks_per_node} tasks): torch.distributed collectives"
            f"{', FSDP2 sharding and full-state checkpoint gathering' if fsdp else ''} are not exercised by a one-process run"
        )
    if getattr(p, "gpus_per_node", 0) or cfg.model.device.startswith("cuda"):
        out.append(
            f"GPU execution: CUDA kernels, {cfg.model.dtype} compute on the GPU, memory of the real model"
            + (", vLLM sleep mode and vllm_gpu_memory_utilization" if cfg.rollout.backend == "vllm" else "")
        )
    if cfg.model.attn_implementation and "flash" in cfg.model.attn_implementation:
        out.append(f"model.attn_implementation={cfg.model.attn_implementation} (GPU only): sdpa here")
    if cfg.rollout.backend == "vllm" and have_vllm:
        out.append(
            "a vLLM engine of each job's own: the rehearsal's runs share one engine per process (vLLM cannot "
            "build a second after the first is gone), each run putting its initial weights back into it"
        )
    if cfg.rollout.backend == "vllm" and have_vllm:
        out.append(
            "a vLLM engine of each job's own: the rehearsal's runs share one engine per process (vLLM cannot "
            "build a second after the first is gone), each run putting its initial weights back into it"
        )
    if cfg.rollout.backend == "vllm" and not have_vllm:
        out.append(
            "the vLLM rollout backend: vLLM is not installed here (pip install -e '.[rehearse]' && python -m "
            "sdpg.environment --fix), so rollouts ran on the hf backend "
            "(the engine, its weight sync and rollout log-prob ratios were not rehearsed)"
        )
    out.append(
        "the real weights and lengths: random weights, responses of at most "
        f"{MAX_NEW_TOKENS} tokens; rewards, learning and speed at full size mean nothing here"
    )
    out.append(f"the spec's MLflow store ({_redact(ctx.tracking_uri)}) was not contacted: the rehearsal has its own")
    return out


def _redact(uri: str) -> str:
    from sdpg.orchestration.tracking import redact

    return redact(uri)
