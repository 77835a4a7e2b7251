"""Set-up and resume of a training run: ranks, policy (also the teacher), frozen reference, prompts,
verifier, rollout engine, AdamW, sinks; the newest checkpoint that reads, checked against the config before
anything is loaded or written. ``sdpg.training.trainer`` runs the loop on the ``Run`` built here."""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from sdpg import fsio
from sdpg.training import distributed as dist
from sdpg.training.checkpoint import (
    CheckpointError,
    checkpoint_dir,
    checkpoints,
    load_checkpoint,
    load_sharded_state,
)
from sdpg.training.config import SCORER_METRIC_NAMES, ConfigError, TrainConfig, resume_refusal
from sdpg.training.data import PromptSampler, read_source
from sdpg.training.data import tokenize_prompts as tokenize_prompt_rows
from sdpg.training.embedded import task_of_source, train_response_tokens
from sdpg.training.model import compute, full_state, load_full_state, load_policy, resolve_device, shard_fsdp
from sdpg.training.randomness import derived_seed, seed_everything, set_rng_state
from sdpg.training.rewards import Verifier
from sdpg.training.rollout import HFRollout, RolloutEngine, VLLMRollout
from sdpg.training.sinks import MetricSink, default_sinks


@dataclass
class Run:
    """Everything a run holds from set-up to its end."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    rank: int
    world: int
    log: Callable[[str], None]
    tokenizer: Any
    policy: torch.nn.Module  # pi_theta; also the teacher (same weights, privileged prompt)
    reference: torch.nn.Module | None  # frozen initial weights: pi_ref of L_K, OPSD's frozen teacher
    generator: torch.nn.Module | None  # under FSDP with HF sampling: an unsharded copy that samples
    use_fsdp: bool
    train_rows: list[dict]
    student_prompts: list[list[int]]  # token ids of x
    teacher_prompts: list[list[int]]  # token ids of (c, x)
    eval_sets: dict[str, tuple[list[dict], list[list[int]]]]
    sampler: PromptSampler
    verifier: Verifier
    rollout: RolloutEngine  # HFRollout or VLLMRollout
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sinks: list[MetricSink] = field(default_factory=list)
    start_step: int = 0
    nonfinite_in_a_row: int = 0  # consecutive optimizer steps skipped for a non-finite loss or gradient norm
    eval_scorers: dict[str, Verifier] = field(default_factory=dict)  # eval.extra_scorers: metric name -> scorer

    def compute(self):
        """The context forwards run in: autocast to ``model.dtype`` over fp32 parameters (not under FSDP,
        whose mixed-precision policy casts)."""
        return compute(self.cfg, self.device, self.use_fsdp)

    @property
    def main_rank(self) -> bool:
        return self.rank == 0

    @property
    def separate_engine(self) -> bool:
        """Whether sampling runs on weights other than ``policy``'s (vLLM, or the unsharded copy)."""
        return isinstance(self.rollout, VLLMRollout) or self.generator is not None


def last_step(cfg: TrainConfig, n_rows: int) -> int:
    """The run's last RL step: ``run.total_steps``, or sooner the end of ``run.max_epochs`` passes over the
    ``n_rows`` training rows, each epoch dropping its incomplete last step (the authors' ``drop_last``)."""
    if cfg.run.max_epochs is None:
        return cfg.run.total_steps
    per_epoch = n_rows // cfg.rollout.prompts_per_step
    if per_epoch == 0:
        raise ValueError(
            f"run.max_epochs={cfg.run.max_epochs}: {n_rows} training rows make no complete step of "
            f"rollout.prompts_per_step={cfg.rollout.prompts_per_step}"
        )
    return min(cfg.run.total_steps, cfg.run.max_epochs * per_epoch)


# --------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------


def set_up(cfg: TrainConfig, sinks: list[MetricSink] | None, resources: contextlib.ExitStack) -> Run:
    """Ranks, models, data, verifier, rollout engine, optimizer, resume, sinks. Everything that must be
    closed is registered on ``resources`` as soon as it exists."""
    for sink in sinks or []:
        resources.callback(sink.close)
    out = Path(cfg.run.output_dir)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = resolve_device(cfg.model.device)
    rank, world, owns_group = dist.init(device, single_rank_group=cfg.model.fsdp is True)
    if owns_group:
        resources.callback(dist.shutdown)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", dist.local_rank())
        torch.cuda.set_device(device)
    if cfg.rollout.prompts_per_step % world:
        raise ValueError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} must be divisible by the {world} ranks")
    main_rank = rank == 0
    if cfg.run.resume:
        check_newest_checkpoint(out, cfg)  # a refused resume costs seconds, and changes nothing
    log = _stderr_log if main_rank else _no_log
    seed_everything(cfg.run.seed)

    # policy (also the teacher: same weights), frozen reference when L_K or a frozen teacher needs one
    if main_rank:  # one rank builds the embedded model; the others find it in the cache
        tokenizer, policy = load_policy(cfg, device, log)
    dist.barrier()
    if not main_rank:
        tokenizer, policy = load_policy(cfg, device, log)
    seed_everything(cfg.run.seed + 1_000_003 * rank)  # model loading may draw random numbers; ranks sample differently
    compute_dtype = getattr(torch, cfg.model.dtype)
    # frozen copies need no master weights: they hold the compute dtype
    reference = copy.deepcopy(policy).to(compute_dtype).eval().requires_grad_(False) if cfg.algo.needs_reference else None
    use_fsdp = (world > 1 and cfg.model.fsdp == "auto" and device.type == "cuda") or (
        cfg.model.fsdp is True and dist.initialized()
    )
    generator = None
    if use_fsdp:
        if cfg.rollout.backend == "hf":  # sampling runs on an unsharded copy: ranks stop generating at different times
            generator = copy.deepcopy(policy).to(compute_dtype).eval().requires_grad_(False)
        shard_fsdp(policy, compute_dtype)

    train_rows, student_prompts, teacher_prompts, eval_sets = read_prompts(cfg, tokenizer, log)
    # with an epoch limit, each epoch drops its incomplete last step (the authors' drop_last)
    whole_steps = cfg.rollout.prompts_per_step if cfg.run.max_epochs is not None else None
    sampler = PromptSampler(len(train_rows), cfg.run.seed, cfg.data.shuffle, whole_steps)
    if main_rank:  # after the data are read: bad data (a missing file, an over-long prompt) leave nothing behind
        fsio.ensure_dir(out)  # config.yaml: after the resume check, below

    verifier, eval_scorers = make_verifiers(cfg, resources)
    engine = make_rollout_engine(cfg, policy, generator, tokenizer, rank, resources)

    optimizer, scheduler = make_optimizer(cfg, policy)

    run = Run(
        cfg=cfg,
        out=out,
        device=device,
        rank=rank,
        world=world,
        log=log,
        tokenizer=tokenizer,
        policy=policy,
        reference=reference,
        generator=generator,
        use_fsdp=use_fsdp,
        train_rows=train_rows,
        student_prompts=student_prompts,
        teacher_prompts=teacher_prompts,
        eval_sets=eval_sets,
        sampler=sampler,
        verifier=verifier,
        rollout=engine,
        optimizer=optimizer,
        scheduler=scheduler,
        eval_scorers=eval_scorers,
    )
    run.start_step = resume(run) if cfg.run.resume else 0
    if main_rank:  # after the resume check: a refused resume leaves the config of the run it refused
        fsio.write_text(out / "config.yaml", yaml.safe_dump(cfg.resolved(), sort_keys=False), root=out)
    run.sinks = open_sinks(run, sinks, resources)
    if run.start_step > 0:
        sync_rollout_weights(run)  # resumed weights differ from the folder the engine loaded
    return run


def read_prompts(
    cfg: TrainConfig, tokenizer, log: Callable[[str], None]
) -> tuple[list[dict], list[list[int]], list[list[int]], dict[str, tuple[list[dict], list[list[int]]]]]:
    """The training rows kept with their student and teacher prompt ids, and each evaluation set's rows and
    prompt ids: tokenised once."""
    train_rows = read_source(cfg.data.train, cfg.data, "train")[: cfg.data.train_limit]
    warn_short_responses(cfg, log)
    train_rows, student_prompts, teacher_prompts = tokenize_prompts(train_rows, cfg, tokenizer, "data.train", log)
    eval_sets = {}
    for name, source in cfg.data.eval.items():
        eval_rows = read_source(source, cfg.data, "test")[: cfg.data.eval_limit]
        eval_rows, eval_prompts, _ = tokenize_prompts(eval_rows, cfg, tokenizer, f"data.eval.{name}", log)
        eval_sets[name] = (eval_rows, eval_prompts)
    return train_rows, student_prompts, teacher_prompts, eval_sets


def make_optimizer(cfg: TrainConfig, policy: torch.nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW on the (fp32) parameters, linear warm-up then constant. The scheduler steps once per
    ``optim.lr_schedule_unit``; the k-th unit (from 1) runs at min(1, (k - 1) / warmup) x lr, as the authors'."""
    optim = cfg.optim
    optimizer = torch.optim.AdamW(policy.parameters(), lr=optim.lr, weight_decay=optim.weight_decay, betas=optim.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, s / optim.warmup_steps) if optim.warmup_steps else 1.0
    )
    return optimizer, scheduler


def open_sinks(run: Run, sinks: list[MetricSink] | None, resources: contextlib.ExitStack) -> list[MetricSink]:
    """Rank 0's sinks (the others log nothing): the caller's, rewound to the resume step (whatever they hold
    after it is replayed), or the default JSONL + console sinks, closed with ``resources``."""
    kept_step = run.start_step if run.cfg.run.resume else -1  # what the sinks keep from an earlier attempt
    if not run.main_rank:
        return []  # rank 0 logs for all
    if sinks is not None:
        for sink in sinks:
            if hasattr(sink, "rewind"):
                sink.rewind(kept_step)
        return sinks
    opened = default_sinks(run.out, kept_step, last_step(run.cfg, len(run.train_rows)))
    for sink in opened:
        resources.callback(sink.close)
    return opened


def make_verifiers(cfg: TrainConfig, resources: contextlib.ExitStack) -> tuple[Verifier, dict[str, Verifier]]:
    """The training reward's verifier and the extra evaluation scorers (by metric name), closed with ``resources``."""
    verifier_kind = (
        cfg.reward.verifier if cfg.reward.verifier != "auto" else ("exact" if task_of_source(cfg.data.train) else "math")
    )
    verifier = Verifier(
        verifier_kind,
        cfg.reward.timeout_s,
        cfg.reward.overlong_buffer,
        cfg.reward.overlong_penalty,
        cfg.rollout.max_new_tokens,
        cfg.reward.boxed_tail_chars,
    )
    resources.callback(verifier.close)
    eval_scorers = {}
    for kind in dict.fromkeys(cfg.eval.extra_scorers if cfg.eval.every > 0 else []):
        name = SCORER_METRIC_NAMES[kind]
        eval_scorers[name] = Verifier(kind, cfg.reward.timeout_s, boxed_tail_chars=cfg.reward.boxed_tail_chars)
        resources.callback(eval_scorers[name].close)
    return verifier, eval_scorers


def make_rollout_engine(
    cfg: TrainConfig, policy, generator, tokenizer, rank: int, resources: contextlib.ExitStack
) -> RolloutEngine:
    """vLLM (its own copy of the weights, synced after each update) or transformers' generate on the policy
    (or on its unsharded generation copy under FSDP)."""
    if cfg.rollout.backend == "vllm":
        max_len = cfg.data.max_prompt_tokens + max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens or 0)
        engine: RolloutEngine = VLLMRollout(
            policy.sdpg_source_path,
            tokenizer,
            dtype=cfg.model.dtype,
            max_model_len=min(getattr(policy.config, "max_position_embeddings", 1 << 30), max_len),
            gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization,
            seed=cfg.run.seed + rank,
            cpu_memory_gb=cfg.rollout.vllm_cpu_memory_gb,
        )
        resources.callback(engine.close)
        return engine
    return HFRollout(generator if generator is not None else policy, tokenizer, cfg.rollout.batch_size)


def _stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _no_log(msg: str) -> None:
    pass


def warn_short_responses(cfg: TrainConfig, log: Callable[[str], None]) -> float | None:
    """On a built-in task, the share of its training solutions that fit in ``rollout.max_new_tokens`` with the
    stop token; a warning when under a quarter do (e.g. the chain task under the sum task's 32: 1%), where almost
    every sample is cut before its answer. A short cap stays allowed (smoke tests use one)."""
    task = task_of_source(cfg.data.train)
    if task is None:
        return None
    lengths = train_response_tokens(task)
    fit = sum(n <= cfg.rollout.max_new_tokens for n in lengths) / len(lengths)
    if fit < 0.25:
        log(
            f"[sdpg] warning: rollout.max_new_tokens={cfg.rollout.max_new_tokens} fits only {fit:.0%} of the reference "
            f"solutions of data.train={cfg.data.train} (all fit in {lengths[-1]}): most samples are cut before their answer"
        )
    return fit


def tokenize_prompts(
    rows: list[dict], cfg: TrainConfig, tokenizer, key: str, log: Callable[[str], None]
) -> tuple[list[dict], list[list[int]], list[list[int]]]:
    """The rows kept, and their student and teacher prompt ids (``data.max_prompt_tokens``: the teacher's cut
    from the right as the authors'; an over-long student prompt per ``data.overlong_prompts``, by default an error
    naming ``key`` and its source)."""
    source = cfg.data.train if key == "data.train" else cfg.data.eval.get(key.removeprefix("data.eval."), "")
    ids = tokenize_prompt_rows(rows, cfg.data, tokenizer, f"{key}={source}")
    limit = cfg.data.max_prompt_tokens
    if ids.dropped:
        log(f"[sdpg] warning: {key}: {ids.dropped} of {len(rows)} rows left out (student prompt over {limit} tokens)")
    if ids.student_cut:
        log(f"[sdpg] warning: {key}: {ids.student_cut} student prompts longer than {limit} tokens were cut from the left")
    if ids.teacher_cut and key == "data.train" and (cfg.algo.needs_teacher_logprobs or cfg.algo.needs_distillation):
        log(f"[sdpg] warning: {key}: {ids.teacher_cut} teacher prompts longer than {limit} tokens were cut from the right")
    if not ids.rows and rows:
        raise ConfigError(f"{key}={source}: every row's student prompt is longer than data.max_prompt_tokens={limit}")
    return ids.rows, ids.student, ids.teacher


def resume(run: Run) -> int:
    """Load the newest checkpoint that reads; returns the step to continue from (0: none). A checkpoint that
    does not read is skipped with a warning naming it and renamed to ``*.pt.corrupt``; when none reads,
    the run stops rather than start over."""
    cfg, skipped = run.cfg, []
    for path in reversed(checkpoints(run.out)):
        try:
            state = load_checkpoint(path, run.device)
        except CheckpointError as e:
            run.log(f"[sdpg] warning: skipped {e}")
            skipped.append(path)
            continue
        check_resumable(path, state, cfg)
        if state.get("sharded") is not None:
            load_sharded_state(path, run.policy, run.optimizer)  # a collective; DCP reshards to this run's ranks
        else:
            load_full_state(run.policy, run.optimizer, state["model"], state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.sampler.load_state_dict(state["sampler"])
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if len(rngs) == run.world:
            set_rng_state(rngs[run.rank])
        else:  # another world size: every rank starts a fresh stream derived from the step
            seed_everything(derived_seed(cfg.run.seed, state["step"], "resume", run.rank))
            run.log(
                f"[sdpg] warning: resharded {path.name} from {len(rngs)} ranks to {run.world}: the resume is not bitwise "
                f"exact: each rank's random stream is new (derived from the step) and each rank now samples another "
                f"share of every step's prompts, so sampling and the order of floating-point sums differ from the original run"
            )
        run.log(f"[sdpg] resumed from {path} at step {state['step']}")
        break
    else:
        state = {"step": 0}
        if skipped:
            raise CheckpointError(
                f"no checkpoint in {checkpoint_dir(run.out)} can be read (see the warnings above); "
                f"move them away, or set run.resume=false to start over"
            )
    dist.barrier()  # every rank has read the files before they are renamed
    if run.main_rank:
        for path in skipped:
            path.rename(path.with_name(path.name + ".corrupt"))
    return state["step"]


def check_newest_checkpoint(out: Path, cfg: TrainConfig) -> None:
    """Before anything is loaded or written: the newest checkpoint that reads (tensors left on disk) can be
    resumed by ``cfg`` (``check_resumable``), and a folder whose every checkpoint is unreadable is one
    ``ConfigError`` naming the folder and what to do, with nothing renamed."""
    found = checkpoints(out)
    reasons = []
    for path in reversed(found):
        try:
            state = load_checkpoint(path, "cpu", mmap=True)
        except CheckpointError as e:
            cause = e.__cause__
            reasons.append(f"{path.name}: {type(cause).__name__ if cause else 'CheckpointError'}")
            continue
        check_resumable(path, state, cfg)
        return
    if found:
        raise ConfigError(
            f"no checkpoint in {checkpoint_dir(out)} can be read ({', '.join(reasons[:3])}): move them away to start "
            f"over, or set run.resume=false"
        )


def check_resumable(path: Path, state: dict, cfg: TrainConfig) -> None:
    """A checkpoint continues only the run that wrote it: ``ConfigError`` naming the setting that differs
    (execution settings may change; ``sdpg.training.config.resume_refusal``). Checkpoints written before the
    identity was recorded are compared by their config hash."""
    if "identity" in state:
        why = resume_refusal(state["identity"], state.get("total_steps"), state["step"], cfg)
    elif state["config_hash"] != cfg.config_hash():
        why = f"an earlier config (hash {state['config_hash']}; this one {cfg.config_hash()})"
    else:
        why = None
    if why:
        raise ConfigError(
            f"cannot resume {path} (step {state['step']}): {why}; "
            f"set it back, use a new run.output_dir, or set run.resume=false to start over"
        )


def sync_rollout_weights(run: Run) -> float:
    """The rollout engine (vLLM, or the unsharded copy under FSDP) takes the policy's weights; seconds taken."""
    started = time.perf_counter()
    if run.separate_engine:
        state, _ = full_state(run.policy, all_ranks=True)
        if isinstance(run.rollout, VLLMRollout):
            run.rollout.sync_weights(state)
        else:
            assert run.generator is not None  # separate_engine: vLLM or the generation copy
            run.generator.load_state_dict(state)
    return time.perf_counter() - started
