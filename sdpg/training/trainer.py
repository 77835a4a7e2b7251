"""The SDPG trainer: one RL loop, read top to bottom.

    set_up                  ranks, policy (also the teacher), frozen reference, prompts, verifier,
                            rollout engine, AdamW, sinks; resume from the newest checkpoint
                            (``sdpg.training.setup``)
    for each step k:
        rollout     -> Sampled      P prompts, G responses each, y ~ pi_theta(.|x)
        score       -> Scored       R = verifier(y) (+ overlong penalty), group advantages A   (eq. 2.1)
        plan_update -> UpdatePlan   minibatches over the kept rows; on-policy (pi_old from the update) or not
        logprobs    -> LogProbs     no gradient: log pi_old(y_t), log pi_ref(y_t), log q(y_t|c, x)
        advantages  -> Advantages   A of the KL-penalised reward (algo.reward_kl_coef); RLSD/OPSD per-token A
        (balance)                   optim.minibatch_order=balanced: the step's rows re-dealt over the ranks by length
        update      -> Updated      epochs x minibatches x micro-batches of
                                    L = L_out + beta(k) L_OPD+ + alpha L_K                      (eq. 3.5)
        reduce_metrics              loss statistics summed over micro-batches and ranks -> train/*
        evaluate, log, checkpoint

Each phase returns a complete value (a frozen dataclass, every field set when it is built) that the later phases
take as arguments; only ``Run`` (weights, optimizer, sampler, sinks) changes from step to step.

Every method (GRPO, DAPO, Dr.GRPO, SDPG, RLSD, OPSD, OPCD) is a configuration of this loop; the terms of
the loss are pure functions in ``sdpg.objective``. Metrics leave through ``MetricSink`` objects (JSONL and
console by default); orchestration (MLflow, SLURM, Optuna) wraps ``train`` and passes its own sinks and
``should_stop``; this module imports none of it.

Where this loop departs from the paper's setup (SDPG, arXiv 2606.04036; the settings of its authors' scripts in
reference-settings, mapped setting by setting in docs/fidelity.md), each either a setting or a choice stated here:

 1. Log-ratios log(pi/pi_old), log(pi/pi_ref) and the reward's KL estimate are clamped to [-20, 20].
 2. A group of one response gets A = 0 (its standard deviation is undefined).
 3. With ``rollout.tis_cap`` the advantages are multiplied by truncated importance weights
    min(exp(log pi_old - log pi_engine), cap) between the trainer and the rollout engine (not in the paper).
 4. The L_OPD+ teacher is always the current policy on the privileged prompt; ``algo.teacher=frozen``
    changes only the RLSD / OPSD log-ratios.
 5. Every term is aggregated exactly over the whole minibatch on all ranks, and minibatches are whole groups in
    sampling order, by default; the authors' per-micro-batch token-means over verl's token-budget micro-batches
    and verl's balanced, length-ordered minibatches are settings (``optim.loss_aggregation``,
    ``micro_batch_packing``, ``minibatch_order``), on in the paper config. The distillation KL's log-softmaxes
    run in float32 unless ``algo.distill_dtype=bfloat16`` (the authors', also in the paper config).
The authors' behaviour is the default elsewhere: the entropy bonus over all response tokens (OPSD), fp32
parameters with ``model.dtype`` compute (autocast, or FSDP2 mixed precision), minibatches of
``optim.minibatch_prompts`` prompts clipped against the log-probs taken before the first update, the lr warm-up
counted in RL steps with multiplier (k - 1)/W at RL step k, the KL clamp at 20 (``algo.opd_kl_clamp``), the
distillation temperature on the student's logits only, the end-of-sequence position distilled, GRPO's KL in the
reward (``algo.reward_kl_coef``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sdpg import fsio
from sdpg.objective import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    StepLossSettings,
    agg_weights,
    beta_at,
    gate_mask,
    group_advantages,
    kl_penalised_rewards,
    reward_kl_penalty,
    step_loss,
)
from sdpg.training import distributed as dist
from sdpg.training.balance import balanced_rank_order, micro_batch_count, micro_batch_weights, token_budget_micro_batches
from sdpg.training.checkpoint import (
    checkpoint_dir,
    checkpoints,
    disk_usage,
    latest_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
)
from sdpg.training.config import AlgoConfig, TrainConfig, build_config, load_config
from sdpg.training.evaluate import evaluate, pass_at_k
from sdpg.training.metrics import ADDITIVE_STATS, LOSS_STATS
from sdpg.training.model import (
    full_state,
    head_of,
    in_compute_dtype,
    load_policy,
    response_hidden,
    sampled_token_stats,
)
from sdpg.training.randomness import derived_seed, rng_state
from sdpg.training.records import WriteFailed
from sdpg.training.rollout import HFRollout, VLLMRollout, left_pad
from sdpg.training.setup import (
    Run,
    check_newest_checkpoint,
    last_step,
    set_up,
    sync_rollout_weights,
    tokenize_prompts,
    warn_short_responses,
)
from sdpg.training.sinks import ConsoleSink, JsonlSink, MetricSink, default_sinks

__all__ = [
    "ConsoleSink",
    "check_newest_checkpoint",
    "JsonlSink",
    "MetricSink",
    "default_sinks",
    "latest_checkpoint",
    "load_policy",
    "Run",
    "TrainingFailed",
    "last_step",
    "micro_batches",
    "pass_at_k",
    "response_hidden",
    "sampled_token_stats",
    "tokenize_prompts",
    "train",
    "warn_short_responses",
]


# --------------------------------------------------------------------------------------------
# What a run holds, and what one step computes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampled:
    """``rollout``: one step's sequences on this rank (N = prompts x G, T response positions)."""

    prompt_ids: list[int]  # indices into the training rows
    texts: list[str]
    responses: Tensor  # [N, T]
    mask: Tensor  # [N, T] 1 on response tokens
    engine_logp: Tensor | None  # [N, T] log-probs under the rollout engine; None: it reports none (HF)
    truncated: Tensor  # [N] hit max_new_tokens
    student_seq: Tensor  # [N, Ps+T] left-padded x, then y
    student_attn: Tensor  # [N, Ps+T]
    student_prompt_len: int  # Ps
    teacher_seq: Tensor  # [N, Pt+T] left-padded (c, x), then y
    teacher_attn: Tensor  # [N, Pt+T]
    teacher_prompt_len: int  # Pt


@dataclass(frozen=True)
class Scored:
    """``score``: what the verifier says of each sequence, and the rows the update trains on."""

    scores: Tensor  # [N] verifier score (1 or reward.incorrect_reward) plus the overlong penalty
    advantages: Tensor  # [N] group advantages of the scores
    all_advantages: Tensor  # [N_all] every rank's, for global statistics
    keep: Tensor  # [K] rows the update trains on (all, or DAPO's informative groups)


@dataclass(frozen=True)
class UpdatePlan:
    """``plan_update``: how the update walks the kept rows, the same on every rank."""

    n_kept_all: int  # kept sequences over all ranks
    n_minibatches: int  # optimizer steps per epoch (0: nothing kept)
    on_policy: bool  # one epoch, one minibatch: pi_old = pi_theta, taken in the update's own forward


@dataclass(frozen=True)
class LogProbs:
    """``logprobs``: the no-gradient passes before the update."""

    old_logp: Tensor | None  # [N, T] log pi_old; None on-policy, where the update's forward gives it
    ref_logp: Tensor | None  # [N, T] when there is a reference (L_K, KL in the reward)
    teacher_logp: Tensor | None  # [N, T] when the advantage needs the teacher (RLSD, OPSD)
    entropy: Tensor  # [N, T] every row's; on-policy only the rows the update skips (it measures the others)


@dataclass(frozen=True)
class Advantages:
    """``advantages``: what the policy-gradient term weighs each sequence (and token) by."""

    sequence: Tensor  # [N] A_i (with the KL in the reward: of the penalised rewards)
    all: Tensor  # [N_all] every rank's, for global statistics
    token: Tensor | None  # [N, T] per-token advantages (RLSD, OPSD); None for sequence-level estimators


@dataclass(frozen=True)
class Updated:
    """``update``: the first epoch's loss statistics, beta(k), the last gradient norm, and pi_old and the
    entropy of every row as the step measured them (on-policy: in the update's forward)."""

    loss_stats: LossStats
    beta: float
    grad_norm: Tensor  # []
    old_logp: Tensor  # [N, T]
    entropy: Tensor  # [N, T]


class LossStats:
    """``sdpg_loss`` statistics of the first epoch, exact whatever the micro-batching and the ranks:
    loss terms (already globally weighted) are summed, means are weighted by their token counts."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(LOSS_STATS, 0.0)  # the same keys on every rank
        self.tokens = 0.0  # response tokens seen
        self.opd_tokens = 0.0  # tokens inside the distillation term

    def add(self, stats: dict[str, Tensor], n_tokens: float) -> None:
        n_opd = float(stats["opd_tokens"])
        for name, value in stats.items():
            if name in ADDITIVE_STATS:
                self.sums[name] += float(value)
            elif name == "opd_kl":
                self.sums[name] += float(value) * n_opd
            elif name not in ("opd_tokens", "beta", "gate_fraction"):  # beta and gate are logged by the loop
                self.sums[name] += float(value) * n_tokens
        self.opd_tokens += n_opd
        self.tokens += n_tokens

    def all_reduce(self, device: torch.device) -> None:
        if not dist.active():
            return
        names = sorted(self.sums)
        summed = dist.all_sum(
            torch.tensor([self.sums[n] for n in names] + [self.tokens, self.opd_tokens], dtype=torch.float64, device=device)
        )
        self.sums = {n: float(v) for n, v in zip(names, summed)}
        self.tokens, self.opd_tokens = float(summed[-2]), float(summed[-1])

    def metrics(self, n_minibatches: int) -> dict[str, float]:
        out = {}
        for name, total in self.sums.items():
            if name in ADDITIVE_STATS:  # averaged over the minibatches of the epoch
                out[f"train/{name}"] = total / max(1, n_minibatches)
            else:
                out[f"train/{name}"] = total / max(1.0, self.opd_tokens if name == "opd_kl" else self.tokens)
        return out


class TrainingFailed(RuntimeError):
    """The run stopped itself (for instance after ``optim.max_nonfinite_steps`` non-finite updates in a row).
    ``reason`` is one sentence; ``result`` is what ``result.json`` holds (status ``failed``)."""

    def __init__(self, reason: str, result: dict[str, Any]):
        super().__init__(reason)
        self.reason, self.result = reason, result


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train(
    config: TrainConfig | dict | str | Path,
    sinks: list[MetricSink] | None = None,
    should_stop: Callable[[], bool] | None = None,
    stop_after_step: int | None = None,
) -> dict[str, Any]:
    """Train one run. Resumes from the newest checkpoint in ``run.output_dir`` when ``run.resume``.

    ``sinks`` replace the default JSONL + console sinks (pass ``default_sinks(...) + [yours]`` to
    add one); the trainer closes them. ``should_stop`` is polled after every step: when it returns True
    the run saves a checkpoint and returns with status ``interrupted`` (preemption). ``stop_after_step``
    does the same at a given step (tests). Returns {status, step, output_dir, metrics, rank, world_size}.
    Sinks, the verifier process, the rollout engine and a process group created here are closed on every
    exit, a raised exception included.
    """
    cfg = _as_config(config)
    with contextlib.ExitStack() as resources:
        run = set_up(cfg, sinks, resources)
        total = last_step(cfg, len(run.train_rows))
        metrics: dict[str, float]
        status, step, metrics = "finished", run.start_step, {}
        if run.start_step == 0 and evaluation_due(run, 0):
            log_metrics(run, run_evaluation(run, 0), 0)
        for step in range(run.start_step + 1, total + 1):
            started = time.perf_counter()
            metrics = {}
            sampled = rollout(run, step, metrics)
            scored = score(run, sampled, metrics)
            plan = plan_update(run, scored)
            logp = logprobs(run, sampled, scored, plan, metrics)
            adv = advantages(run, step, sampled, scored, logp, metrics)
            if cfg.optim.minibatch_order == "balanced":
                sampled, scored, logp, adv = balance(run, sampled, scored, logp, adv)
            updated = update(run, step, sampled, scored, plan, logp, adv, metrics)
            reduce_metrics(run, sampled, plan, adv, updated, metrics)
            if evaluation_due(run, step):
                metrics.update(run_evaluation(run, step))
                for text in sampled.texts[: cfg.run.log_samples]:
                    run.log(f"[sdpg] sample @ {step}: {text[:200]!r}")
            metrics["timing/step"] = time.perf_counter() - started
            log_metrics(run, metrics, step)
            stop = dist.any_true(
                (should_stop is not None and should_stop()) or (stop_after_step is not None and step >= stop_after_step),
                run.device,
            )
            stop_if_diverged(run, step, metrics)
            if step == total or stop or (cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0):
                save_run_state(run, step)
            if stop and step < total:
                status = "interrupted"
                break
        if status == "finished":
            export_final_policy(run, step)
        return write_result(run, status, step, metrics)


def stop_if_diverged(run: Run, step: int, metrics: dict[str, float]) -> None:
    """After ``optim.max_nonfinite_steps`` skipped updates in a row: a checkpoint of the last good state (nothing
    non-finite was applied to it), ``result.json`` with status failed, and ``TrainingFailed`` with the reason."""
    limit = run.cfg.optim.max_nonfinite_steps
    if run.nonfinite_in_a_row < limit:
        return
    path = save_run_state(run, step)
    reason = (
        f"training stopped at step {step}: the loss or gradient norm was not finite in {run.nonfinite_in_a_row} "
        f"optimizer steps in a row (optim.max_nonfinite_steps={limit}), none of them applied; the last good state is {path}"
    )
    raise TrainingFailed(reason, write_result(run, "failed", step, metrics, reason))


def write_result(run: Run, status: str, step: int, metrics: dict[str, float], reason: str | None = None) -> dict[str, Any]:
    """The run's outcome, also written to ``result.json`` by rank 0."""
    result = {
        "status": status,
        "step": step,
        "output_dir": str(run.out),
        "metrics": metrics,
        "rank": run.rank,
        "world_size": run.world,
    }
    if reason is not None:
        result["reason"] = reason
    if run.main_rank:
        fsio.write_json(run.out / "result.json", result, root=run.out, indent=1)
    return result


def _as_config(config: TrainConfig | dict | str | Path) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return build_config(config)
    return load_config(config)


# --------------------------------------------------------------------------------------------
# Rollout
# --------------------------------------------------------------------------------------------


def rollout(run: Run, step: int, metrics: dict[str, float]) -> Sampled:
    """G responses for each of this rank's prompts; the sequences [prompt | response] the forwards read."""
    cfg, device, G = run.cfg, run.device, run.cfg.rollout.group_size
    prompt_ids = run.sampler.next(cfg.rollout.prompts_per_step)[run.rank :: run.world]  # one global draw, split
    started = time.perf_counter()
    seeds = [derived_seed(cfg.run.seed, step, "rollout", i) for i in prompt_ids] if cfg.rollout.seed_per_prompt else None
    with run.compute() if isinstance(run.rollout, HFRollout) else contextlib.nullcontext():
        samples = run.rollout.generate(
            [run.student_prompts[i] for i in prompt_ids],
            G,
            temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p,
            top_k=cfg.rollout.top_k,
            max_new_tokens=cfg.rollout.max_new_tokens,
            seeds=seeds,
        )
    metrics["timing/rollout"] = time.perf_counter() - started
    responses, mask = samples.responses.to(device), samples.mask.to(device)  # [N, T], [N, T]
    pad = run.tokenizer.pad_token_id
    student_ids, student_attn = left_pad([run.student_prompts[i] for i in prompt_ids for _ in range(G)], pad)  # [N, Ps]
    teacher_ids, teacher_attn = left_pad([run.teacher_prompts[i] for i in prompt_ids for _ in range(G)], pad)  # [N, Pt]
    return Sampled(
        prompt_ids=prompt_ids,
        texts=run.tokenizer.batch_decode(samples.responses, skip_special_tokens=True),
        responses=responses,
        mask=mask,
        engine_logp=samples.logprobs.to(device) if samples.logprobs is not None else None,  # [N, T]
        truncated=samples.truncated.to(device),  # [N]
        student_seq=torch.cat([student_ids.to(device), responses], 1),  # [N, Ps+T]
        student_attn=torch.cat([student_attn.to(device), mask.long()], 1),  # [N, Ps+T]
        student_prompt_len=student_ids.shape[1],
        teacher_seq=torch.cat([teacher_ids.to(device), responses], 1),  # [N, Pt+T]
        teacher_attn=torch.cat([teacher_attn.to(device), mask.long()], 1),  # [N, Pt+T]
        teacher_prompt_len=teacher_ids.shape[1],
    )


# --------------------------------------------------------------------------------------------
# Score
# --------------------------------------------------------------------------------------------


def score(run: Run, sampled: Sampled, metrics: dict[str, float]) -> Scored:
    """Scores (1 correct, ``reward.incorrect_reward`` otherwise, plus DAPO's overlong penalty), group
    advantages, reward statistics over all ranks; DAPO's filter of uninformative groups. With the KL in the
    reward (``algo.reward_kl_coef``) ``advantages`` recomputes the advantages once log pi_old is known."""
    algo, device, G = run.cfg.algo, run.device, run.cfg.rollout.group_size
    started = time.perf_counter()
    answers = [run.train_rows[i]["answer"] for i in sampled.prompt_ids for _ in range(G)]
    correct = torch.tensor(run.verifier.correctness(sampled.texts, answers))  # [N]
    lengths = sampled.mask.sum(-1)  # [N]
    wrong = run.cfg.reward.incorrect_reward
    rewards = correct + wrong * (1.0 - correct) + torch.tensor(run.verifier.overlong(lengths.long().tolist()))  # [N]
    advantages = group_advantages(rewards, G, std_norm=algo.std_norm).to(device)  # [N]
    metrics["timing/reward"] = time.perf_counter() - started
    all_rewards, all_correct = dist.all_gather_cat(rewards.to(device)), dist.all_gather_cat(correct.to(device))  # [N_all]
    all_lengths, all_truncated = dist.all_gather_cat(lengths.float()), dist.all_gather_cat(sampled.truncated.float())
    all_advantages = dist.all_gather_cat(advantages)  # [N_all]
    metrics.update(
        {
            "train/reward": float(all_rewards.mean()),
            "train/accuracy": float(all_correct.mean()),
            "train/response_length": float(all_lengths.mean()),
            "train/truncated": float(all_truncated.mean()),
            "train/solve_all": float((all_correct.view(-1, G).min(-1).values == 1).float().mean()),
            "train/solve_none": float((all_correct.view(-1, G).max(-1).values == 0).float().mean()),
        }
    )
    N = len(rewards)
    keep = torch.arange(N)  # [K]
    if algo.filter_groups:  # DAPO dynamic sampling: only groups with a learning signal
        by_group = rewards.view(-1, G)  # [N/G, G]
        informative = (by_group.max(-1).values != by_group.min(-1).values).repeat_interleave(G)  # [N]
        keep = informative.nonzero().view(-1)  # [K]
        metrics["train/kept_fraction"] = float(dist.all_sum(informative.float().sum()) / (N * run.world))
    return Scored(scores=rewards.to(device), advantages=advantages, all_advantages=all_advantages, keep=keep)


def plan_update(run: Run, scored: Scored) -> UpdatePlan:
    """The number of minibatches over the kept rows of all ranks (``optim.minibatch_prompts`` whole groups, or
    ``optim.minibatch_size`` sequences), and whether the update is on-policy: one epoch of one minibatch, where
    pi_old is read from the update's own forward (not with the KL in the reward: its advantages need pi_old first)."""
    cfg, optim = run.cfg, run.cfg.optim
    n_kept_all = int(dist.all_sum(torch.tensor(float(len(scored.keep)))).item())
    if optim.minibatch_prompts:  # global prompts per optimizer step, their groups kept whole
        n_groups = n_kept_all // cfg.rollout.group_size
        n_minibatches = max(1, math.ceil(n_groups / optim.minibatch_prompts)) if n_groups else 0
    else:
        minibatch = optim.minibatch_size or max(1, n_kept_all)  # global sequences per optimizer step
        n_minibatches = max(1, math.ceil(n_kept_all / minibatch)) if n_kept_all else 0
    on_policy = optim.ppo_epochs == 1 and n_minibatches <= 1 and cfg.algo.reward_kl_coef == 0
    return UpdatePlan(n_kept_all=n_kept_all, n_minibatches=n_minibatches, on_policy=on_policy)


# --------------------------------------------------------------------------------------------
# Reference / teacher log-probs (no gradient)
# --------------------------------------------------------------------------------------------


def logprobs(run: Run, sampled: Sampled, scored: Scored, plan: UpdatePlan, metrics: dict[str, float]) -> LogProbs:
    """Before the update, no gradient: log pi_old (unless on-policy, where the update's own forward gives it),
    log pi_ref for L_K and the KL in the reward, the teacher's log q(y_t | c, x) for RLSD / OPSD, the entropy of
    rows the update skips."""
    cfg, algo, optim, device = run.cfg, run.cfg.algo, run.cfg.optim, run.device
    temperature, size = cfg.rollout.temperature, optim.micro_batch_size
    head: dict[str, Any] = {
        "impl": optim.loss_impl,
        "chunk_size": optim.loss_chunk_size,
    }  # chunked (no [b, T, V]) unless materialised
    N, T = sampled.responses.shape
    started = time.perf_counter()
    old_logp = torch.zeros(N, T, device=device) if not plan.on_policy else None  # [N, T]
    need_ref = algo.alpha > 0 or algo.reward_kl_coef > 0
    ref_logp = torch.zeros(N, T, device=device) if need_ref else None  # [N, T]
    teacher_logp = torch.zeros(N, T, device=device) if algo.needs_teacher_logprobs else None  # [N, T]
    entropy = torch.zeros(N, T, device=device)  # [N, T]
    skipped = torch.ones(N, dtype=torch.bool)
    skipped[scored.keep] = False  # rows the update does not see (filter_groups): their entropy comes from here
    # one decision for all ranks (under FSDP every rank must run the same forwards)
    entropy_pass = plan.on_policy and dist.any_true(bool(skipped.any()), device)
    teacher = run.reference if algo.teacher == "frozen" else run.policy  # the privileged view's weights
    with torch.no_grad(), run.compute():
        for first in range(0, N, size):
            rows = slice(first, first + size)
            tokens = sampled.responses[rows]  # [b, T]
            seq, attn, prompt_len = sampled.student_seq[rows], sampled.student_attn[rows], sampled.student_prompt_len
            if entropy_pass and (run.use_fsdp or skipped[rows].any()):
                entropy[rows] = _asked(
                    sampled_token_stats(
                        run.policy, seq, attn, prompt_len, tokens, temperature, logprobs=False, entropy=True, **head
                    ).entropy
                )
            if old_logp is not None:
                stats = sampled_token_stats(run.policy, seq, attn, prompt_len, tokens, temperature, entropy=True, **head)
                old_logp[rows], entropy[rows] = _asked(stats.logp), _asked(stats.entropy)
            if ref_logp is not None:
                ref_logp[rows] = _asked(
                    sampled_token_stats(run.reference, seq, attn, prompt_len, tokens, temperature, **head).logp
                )
            if teacher_logp is not None:
                teacher_logp[rows] = _asked(
                    sampled_token_stats(
                        teacher,
                        sampled.teacher_seq[rows],
                        sampled.teacher_attn[rows],
                        sampled.teacher_prompt_len,
                        tokens,
                        temperature,
                        **head,
                    ).logp
                )
    metrics["timing/logprobs"] = time.perf_counter() - started
    return LogProbs(old_logp=old_logp, ref_logp=ref_logp, teacher_logp=teacher_logp, entropy=entropy)


def advantages(run: Run, step: int, sampled: Sampled, scored: Scored, logp: LogProbs, metrics: dict[str, float]) -> Advantages:
    """The advantages the update uses: the score's group advantages, or with the KL in the reward
    (``algo.reward_kl_coef``, GRPO as Table 1) those of score - coef * sum_t k_t; then the per-token advantages
    of RLSD / OPSD (on-policy, their pi_old is one more no-gradient pass of the policy, counted in
    ``timing/logprobs``)."""
    cfg, algo = run.cfg, run.cfg.algo
    started = time.perf_counter()
    sequence, all_advantages = scored.advantages, scored.all_advantages  # [N], [N_all]
    token = None
    with torch.no_grad(), run.compute():
        if algo.reward_kl_coef > 0:  # the KL in the reward (GRPO as Table 1): score - coef * sum_t k_t
            assert logp.old_logp is not None and logp.ref_logp is not None  # never on-policy; a reference is loaded
            rewards = kl_penalised_rewards(
                scored.scores, logp.old_logp, logp.ref_logp, sampled.mask, algo.reward_kl_coef, algo.reward_kl_estimator
            )  # [N]
            sequence = group_advantages(rewards, cfg.rollout.group_size, std_norm=algo.std_norm)  # [N]
            all_advantages = dist.all_gather_cat(sequence)  # [N_all]
            penalty = reward_kl_penalty(logp.old_logp, logp.ref_logp, sampled.mask, algo.reward_kl_estimator)  # [N]
            metrics["train/reward_kl"] = float(dist.all_gather_cat(penalty).mean())
            metrics["train/score"] = metrics["train/reward"]
            metrics["train/reward"] = float(dist.all_gather_cat(rewards).mean())
        estimator = ADVANTAGE_ESTIMATORS[algo.advantage]
        if estimator.token_advantages is not None:  # per-token advantages (RLSD, OPSD)
            behaviour_logp = logp.old_logp if logp.old_logp is not None else _policy_logp(run, sampled)  # [N, T]
            inputs = AdvantageInputs(sequence, logp.teacher_logp, behaviour_logp, step, algo.model_dump())
            token, extra = estimator.token_advantages(inputs)  # [N, T]
            metrics.update({f"train/{k}": v for k, v in extra.items()})
    metrics["timing/logprobs"] += time.perf_counter() - started
    return Advantages(sequence=sequence, all=all_advantages, token=token)


def _asked(x: Tensor | None) -> Tensor:
    """A statistic that was asked for (``sampled_token_stats`` leaves the others None)."""
    assert x is not None
    return x


def _policy_logp(run: Run, sampled: Sampled) -> Tensor:
    """log pi_theta(y_t) [N, T] of every row, in micro-batches (the on-policy pi_old, before the update)."""
    optim, temperature = run.cfg.optim, run.cfg.rollout.temperature
    size = optim.micro_batch_size
    seq, attn, prompt_len = sampled.student_seq, sampled.student_attn, sampled.student_prompt_len
    with run.compute():
        parts = [
            _asked(
                sampled_token_stats(
                    run.policy,
                    seq[s : s + size],
                    attn[s : s + size],
                    prompt_len,
                    sampled.responses[s : s + size],
                    temperature,
                    impl=optim.loss_impl,
                    chunk_size=optim.loss_chunk_size,
                ).logp
            )
            for s in range(0, seq.shape[0], size)
        ]  # [b, T] each
    return torch.cat(parts)  # [N, T]


# --------------------------------------------------------------------------------------------
# Balance (optim.minibatch_order=balanced): the authors' minibatch make-up
# --------------------------------------------------------------------------------------------


def balance(
    run: Run, sampled: Sampled, scored: Scored, logp: LogProbs, adv: Advantages
) -> tuple[Sampled, Scored, LogProbs, Advantages]:
    """verl's ``_balance_batch``: the step's sequences of all ranks, in sampling order, are split into one
    equal share per rank by length (groups split over ranks), each share ordered short -> long -> short
    (``balanced_rank_order``); this rank's rows are replaced by its share, in that order, so that the update's
    minibatches (consecutive slices) are the authors'. Every per-row tensor the update and the metrics read
    travels with its row (the kept rows: all of them, in the new order); under several ranks every rank briefly
    holds the whole step's rows."""
    G, world = run.cfg.rollout.group_size, run.world
    N = sampled.responses.shape[0]
    Ps, Pt = sampled.student_prompt_len, sampled.teacher_prompt_len
    n_tokens = sampled.student_attn[:, :Ps].sum(-1) + sampled.mask.sum(-1)  # [N] prompt + response tokens
    gathered = dist.all_gather_cat(n_tokens.long()).tolist()  # [N_all] rank order: rank r's row j at r N + j
    # sampling order: the step's prompts were dealt out round-robin (prompt p to rank p % world), G rows each
    to_sampling = [((q % N) // G * world + q // N) * G + (q % N) % G for q in range(len(gathered))]
    to_rank_order = {s_: q for q, s_ in enumerate(to_sampling)}
    by_sampling = [0] * len(gathered)
    for q, s_ in enumerate(to_sampling):
        by_sampling[s_] = int(gathered[q])
    share = balanced_rank_order(by_sampling, world)[run.rank]
    mine = torch.tensor([to_rank_order[s_] for s_ in share], device=run.device)

    def take(x: Tensor, fill: float = 0, left: bool = False) -> Tensor:
        """This rank's share of ``x`` [N, ...] (2-D: padded to the widest rank's width first)."""
        dtype = x.dtype
        y = x.long() if dtype == torch.bool else x
        if y.dim() == 2:
            pad = int(dist.all_max(torch.tensor(float(y.shape[1]), device=run.device)).item()) - y.shape[1]
            y = torch.nn.functional.pad(y, (pad, 0) if left else (0, pad), value=fill)
        return dist.all_gather_cat(y)[mine].to(dtype)

    def take_if(x: Tensor | None) -> Tensor | None:
        return None if x is None else take(x)

    pad_id = run.tokenizer.pad_token_id or 0

    def take_seq(seq: Tensor, attn: Tensor, prompt_len: int) -> tuple[Tensor, Tensor, int]:
        """[left-padded prompt | response] rows: the prompt part padded on the left, the response on the right."""
        p_ids, p_attn = take(seq[:, :prompt_len], pad_id, left=True), take(attn[:, :prompt_len], 0, left=True)
        r_ids, r_attn = take(seq[:, prompt_len:], pad_id), take(attn[:, prompt_len:], 0)
        return torch.cat([p_ids, r_ids], 1), torch.cat([p_attn, r_attn], 1), p_ids.shape[1]

    student_seq, student_attn, student_prompt_len = take_seq(sampled.student_seq, sampled.student_attn, Ps)
    teacher_seq, teacher_attn, teacher_prompt_len = take_seq(sampled.teacher_seq, sampled.teacher_attn, Pt)
    balanced = Sampled(
        prompt_ids=sampled.prompt_ids,  # this rank's draw (the logged samples), not the rows it now holds
        texts=sampled.texts,
        responses=take(sampled.responses, pad_id),
        mask=take(sampled.mask),
        engine_logp=take_if(sampled.engine_logp),
        truncated=take(sampled.truncated),
        student_seq=student_seq,
        student_attn=student_attn,
        student_prompt_len=student_prompt_len,
        teacher_seq=teacher_seq,
        teacher_attn=teacher_attn,
        teacher_prompt_len=teacher_prompt_len,
    )
    return (
        balanced,
        Scored(
            scores=take(scored.scores),
            advantages=take(scored.advantages),
            all_advantages=scored.all_advantages,
            keep=torch.arange(len(mine)),
        ),
        LogProbs(
            old_logp=take_if(logp.old_logp),
            ref_logp=take_if(logp.ref_logp),
            teacher_logp=take_if(logp.teacher_logp),
            entropy=take(logp.entropy),
        ),
        Advantages(sequence=take(adv.sequence), all=adv.all, token=take_if(adv.token)),
    )


# --------------------------------------------------------------------------------------------
# Update
# --------------------------------------------------------------------------------------------


def update(
    run: Run,
    step: int,
    sampled: Sampled,
    scored: Scored,
    plan: UpdatePlan,
    logp: LogProbs,
    adv: Advantages,
    metrics: dict[str, float],
) -> Updated:
    """ppo_epochs passes over the kept rows, one optimizer step per minibatch (``optim.minibatch_prompts``:
    whole groups, in order, as the authors; ``optim.minibatch_size``: sequences drawn at random); the lr
    schedule steps per optimizer step or once per RL step (``optim.lr_schedule_unit``); then the rollout
    engine takes the new weights. On-policy the forward of the one minibatch also gives pi_old and the entropy
    of the rows it trains on."""
    cfg, optim = run.cfg, run.cfg.optim
    if logp.old_logp is not None:
        old_logp, entropy, measured = logp.old_logp, logp.entropy, None
    else:  # on-policy: written by the update's forward, row by row
        old_logp, entropy = torch.zeros_like(logp.entropy), logp.entropy.clone()  # [N, T], [N, T]
        measured = (old_logp, entropy)
    if isinstance(run.rollout, VLLMRollout):
        run.rollout.sleep()  # GPU: free the engine's KV cache while training
    started = time.perf_counter()
    beta_k = beta_at(step, cfg.run.total_steps, cfg.algo.beta, cfg.algo.beta_warmup_steps, cfg.algo.beta_decay_steps)
    loss_stats = LossStats()
    grad_norm = torch.zeros(())
    metrics["train/skipped_update"] = float(plan.n_kept_all == 0)  # every group uninformative (filter_groups)
    metrics["train/lr"] = float(run.scheduler.get_last_lr()[0])  # the lr of this step's (first) update
    per_update = optim.lr_schedule_unit == "optimizer_step"
    n_nonfinite = 0
    run.policy.train()
    keep = scored.keep  # [K]
    for epoch in range(optim.ppo_epochs if plan.n_kept_all else 0):
        if optim.minibatch_order == "balanced":  # consecutive slices of this rank's short -> long -> short share
            parts = list(torch.tensor_split(keep, plan.n_minibatches))
        elif optim.minibatch_prompts:  # consecutive whole groups; the same number of minibatches on every rank
            groups = keep.view(-1, cfg.rollout.group_size)  # [K/G, G]
            parts = [part.reshape(-1) for part in torch.tensor_split(groups, plan.n_minibatches)]
        else:
            shuffle = plan.n_minibatches > 1 or optim.ppo_epochs > 1
            order = keep[torch.randperm(len(keep))] if shuffle else keep
            parts = list(torch.tensor_split(order, plan.n_minibatches))  # the same number of minibatches on every rank
        for rows in parts:
            step_stats = loss_stats if epoch == 0 else None
            grad_norm, applied = optimizer_step(run, sampled, logp, adv, measured, rows.to(run.device), beta_k, step_stats)
            if per_update:
                run.scheduler.step()
            n_nonfinite += not applied
            run.nonfinite_in_a_row = 0 if applied else run.nonfinite_in_a_row + 1
            if run.nonfinite_in_a_row >= optim.max_nonfinite_steps:
                break
        if run.nonfinite_in_a_row >= optim.max_nonfinite_steps:
            break
    if not per_update:
        run.scheduler.step()
    metrics["train/nonfinite_skipped"] = float(n_nonfinite)
    run.policy.eval()
    metrics["timing/update"] = time.perf_counter() - started
    if run.separate_engine:
        metrics["timing/weight_sync"] = sync_rollout_weights(run)
    return Updated(loss_stats=loss_stats, beta=beta_k, grad_norm=grad_norm, old_logp=old_logp, entropy=entropy)


def optimizer_step(
    run: Run,
    sampled: Sampled,
    logp: LogProbs,
    adv: Advantages,
    measured: tuple[Tensor, Tensor] | None,
    rows: Tensor,
    beta_k: float,
    loss_stats: LossStats | None,
) -> tuple[Tensor, bool]:
    """One AdamW step on the minibatch ``rows`` [M], accumulated over micro-batches; returns the gradient norm
    and whether the step was applied: a non-finite loss (on any rank) or gradient norm skips it. ``measured``
    (on-policy): the [N, T] pi_old and entropy the forwards write.

    Aggregation weights (``optim.loss_aggregation``) are normalised over the whole minibatch on all ranks, so
    neither micro-batching nor the number of ranks changes the update; or, as the authors, per micro-batch."""
    algo, optim, device = run.cfg.algo, run.cfg.optim, run.device
    mask = sampled.mask[rows]  # [M, T]
    if optim.micro_batch_packing == "balanced" and optim.micro_batch_tokens:  # verl's dynamic batch size
        n_tokens = (sampled.student_attn[rows, : sampled.student_prompt_len].sum(-1) + mask.sum(-1)).long().tolist()  # [M]
        count = micro_batch_count(n_tokens, optim.micro_batch_tokens)
        count = int(dist.all_max(torch.tensor(float(count), device=device)).item())  # the same on every rank
        positions = [torch.tensor(g) for g in token_budget_micro_batches(n_tokens, count)]
    else:
        positions = micro_batches(mask.sum(-1), optim.micro_batch_size, optim.micro_batch_tokens, sampled.student_prompt_len)
    weights, opd_weights, entropy_weights = token_weights(
        mask,
        adv.sequence[rows],
        sampled.responses[rows],
        run.tokenizer.eos_token_id,
        algo,
        dist.all_sum,
        positions if optim.loss_aggregation == "micro_batch" else None,
        run.world,
    )  # [M, T] each
    run.optimizer.zero_grad(set_to_none=True)
    groups: list[Tensor | None] = list(positions)
    if run.use_fsdp:  # every rank must run as many forwards: pad with zero-weight micro-batches
        n_most = int(dist.all_max(torch.tensor(float(len(groups)), device=device)).item())
        groups += [None] * (n_most - len(groups))
    finite_loss = True
    all_weights = (weights, opd_weights, entropy_weights)
    for group in groups:
        finite_loss &= micro_batch_backward(run, sampled, logp, adv, measured, rows, group, all_weights, beta_k, loss_stats)
    if not run.use_fsdp:  # FSDP has reduce-scattered the gradients already
        dist.all_reduce_grads(list(run.policy.parameters()))
    grad_norm = torch.nn.utils.clip_grad_norm_(run.policy.parameters(), optim.grad_clip if optim.grad_clip > 0 else float("inf"))
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    if dist.any_true(not (finite_loss and bool(torch.isfinite(grad_norm))), device):
        run.optimizer.zero_grad(set_to_none=True)  # nothing of this minibatch reaches the weights or Adam's moments
        return grad_norm, False
    run.optimizer.step()
    return grad_norm, True


def minibatch_weights(
    mask: Tensor,
    advantages: Tensor,
    tokens: Tensor,
    eos_id: int | None,
    algo: AlgoConfig,
    all_sum: Callable[[Tensor], Tensor] = lambda t: t,
) -> tuple[Tensor, Tensor]:
    """Aggregation weights [M, T] of a minibatch's L_out (with L_K) and of L_OPD+, normalised over the whole
    minibatch on all ranks (``token_weights`` without micro-batches)."""
    pg, opd, _ = token_weights(mask, advantages, tokens, eos_id, algo, all_sum)
    return pg, opd


def token_weights(
    mask: Tensor,
    advantages: Tensor,
    tokens: Tensor,
    eos_id: int | None,
    algo: AlgoConfig,
    all_sum: Callable[[Tensor], Tensor] = lambda t: t,
    micro: list[Tensor] | None = None,
    world: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Aggregation weights [M, T] of a minibatch's L_out (with L_K), of L_OPD+ and of the entropy bonus.
    ``mask`` [M, T], ``advantages`` [M], ``tokens`` [M, T].

    ``micro`` None: normalised over the whole minibatch on all ranks (``all_sum`` sums the counts over ranks),
    so neither micro-batching nor the number of ranks changes the update. ``micro`` the positions of each
    micro-batch: the authors' aggregation (``micro_batch_weights``), each micro-batch normalised over its own
    tokens, scaled by its share of the rank's sequences, over ``world`` ranks.

    L_out: over all response tokens, or (``algo.pg_norm`` gated, OPSD) over the tokens of sequences with A > 0.
    L_OPD+: the gated (and, with ``opd_exclude_stop``, non-EOS) tokens under the all-token weights, or
    normalised over themselves (``opd_norm`` gated). Entropy: all response tokens, or L_out's
    (``algo.entropy_tokens``)."""
    gated = gate_mask(advantages, mask, True)  # [M, T] tokens of sequences with A > 0
    distil = gate_mask(advantages, mask, algo.gate)  # [M, T] tokens L_OPD+ may use
    if algo.opd_exclude_stop and eos_id is not None:  # no distillation at the end-of-sequence position
        distil = distil * (tokens != eos_id).float()  # [M, T]
    if micro is not None:  # the authors' per-micro-batch aggregation

        def over(covered: Tensor) -> Tensor:
            return micro_batch_weights(covered, micro, algo.loss_agg_mode, world)  # [M, T]

        every = over(mask)  # [M, T]
        pg_w = every if algo.pg_norm == "all" else over(gated)  # [M, T]
        opd_w = every * distil if algo.opd_norm == "all" else over(distil)  # [M, T]
        return pg_w, opd_w, every if algo.entropy_tokens == "all" else pg_w
    n_seq = torch.tensor(float(mask.shape[0]), device=mask.device)
    n_gated_seq = (advantages > 0).float().sum()
    counts = all_sum(torch.stack([mask.sum(), n_seq, distil.sum(), gated.sum(), n_gated_seq]))  # [5]
    everything = agg_weights(mask, algo.loss_agg_mode, n_tokens=counts[0], n_seqs=counts[1])  # [M, T]
    if algo.pg_norm == "all":
        pg = everything  # [M, T]
    else:
        pg = agg_weights(gated, algo.loss_agg_mode, n_tokens=counts[3], n_seqs=counts[4])  # [M, T]
    if algo.opd_norm == "all":
        opd = everything * distil  # [M, T]
    else:
        opd = agg_weights(distil, algo.loss_agg_mode, n_tokens=counts[2], n_seqs=counts[1])  # [M, T]
    return pg, opd, everything if algo.entropy_tokens == "all" else pg


def micro_batch_backward(
    run: Run,
    sampled: Sampled,
    logp: LogProbs,
    adv: Advantages,
    measured: tuple[Tensor, Tensor] | None,
    rows: Tensor,
    positions: Tensor | None,
    all_weights: tuple[Tensor, Tensor, Tensor],
    beta_k: float,
    loss_stats: LossStats | None,
) -> bool:
    """Forward and backward of the micro-batch at ``positions`` of the minibatch ``rows``; returns whether its
    loss was finite. ``positions`` None: a zero-weight forward/backward that only keeps FSDP's collectives in
    step across ranks. ``all_weights``: the minibatch's L_out, L_OPD+ and entropy weights [M, T]. ``measured``
    (on-policy): pi_old and the entropy [N, T], which this forward's pi_theta gives."""
    cfg, algo, optim = run.cfg, run.cfg.algo, run.cfg.optim
    weights, opd_weights, entropy_weights = all_weights
    padding = positions is None
    if positions is None:
        positions = torch.tensor([0])
    seqs = rows[positions] if len(rows) else torch.tensor([0], device=run.device)  # [b]
    n_resp = max(1, int(sampled.mask[seqs].sum(-1).max()))  # the longest response here; beyond it, padding
    tokens, mask = sampled.responses[seqs, :n_resp], sampled.mask[seqs, :n_resp]  # [b, tb]
    Ps, Pt = sampled.student_prompt_len, sampled.teacher_prompt_len
    with run.compute():  # the network in the compute dtype over the fp32 parameters
        hidden = response_hidden(
            run.policy, sampled.student_seq[seqs, : Ps + n_resp], sampled.student_attn[seqs, : Ps + n_resp], Ps, n_resp
        )  # [b, tb, H]
        teacher_hidden = None
        if algo.needs_distillation and (run.use_fsdp or bool(opd_weights[positions].any())):
            with torch.no_grad():  # the teacher: the current policy on the privileged prompt (c, x)
                teacher_hidden = response_hidden(
                    run.policy,
                    sampled.teacher_seq[seqs, : Pt + n_resp],
                    sampled.teacher_attn[seqs, : Pt + n_resp],
                    Pt,
                    n_resp,
                )  # [b, tb, H]
    head_weight, head_bias = head_of(run.policy)  # after the forward: under FSDP the gathered head
    # the loss runs its own GEMMs outside autocast: hidden states and head in the compute dtype
    dtype = getattr(torch, cfg.model.dtype)
    hidden, head_weight, head_bias = in_compute_dtype(dtype, hidden, head_weight, head_bias)
    if teacher_hidden is not None:
        teacher_hidden = teacher_hidden.to(dtype)
    settings = StepLossSettings(
        beta=beta_k,
        alpha=algo.alpha,
        kl_mode=algo.kl_mode,
        gate=algo.gate,
        opd_norm=algo.opd_norm,
        pg_coef=algo.pg_coef,
        policy_mode=algo.policy_loss,
        clip_low=algo.clip_low,
        clip_high=algo.clip_high,
        clip_c=algo.clip_c,
        loss_agg_mode=algo.loss_agg_mode,
        entropy_coef=algo.entropy_coef,
        temperature=cfg.rollout.temperature,
        kl_student_temperature=algo.distill_temperature,
        # the authors divide only the student's logits
        kl_teacher_temperature=1.0 if algo.distill_temperature_on == "student" else algo.distill_temperature,
        kl_clamp=algo.opd_kl_clamp,
        tis_cap=cfg.rollout.tis_cap,
        distill_dtype=algo.distill_dtype,
    )
    # pi_old: on-policy (one epoch, one minibatch) it is SG[pi_theta] of this very forward, formed inside the loss
    loss, stats, per_token = step_loss(
        hidden,
        head_weight,
        head_bias,
        tokens,
        adv.sequence[seqs],
        mask,
        settings,
        teacher_hidden=teacher_hidden,
        old_logp=logp.old_logp[seqs, :n_resp] if logp.old_logp is not None else None,
        ref_logp=logp.ref_logp[seqs, :n_resp] if logp.ref_logp is not None else None,
        rollout_logp=sampled.engine_logp[seqs, :n_resp] if sampled.engine_logp is not None else None,
        token_advantages=adv.token[seqs, :n_resp] if adv.token is not None else None,
        token_weights=weights[positions, :n_resp] if not padding else torch.zeros_like(mask),
        opd_token_weights=opd_weights[positions, :n_resp] if not padding else torch.zeros_like(mask),
        entropy_token_weights=entropy_weights[positions, :n_resp] if not padding else torch.zeros_like(mask),
        impl=optim.loss_impl,
        chunk_size=optim.loss_chunk_size,
    )
    if measured is not None and not padding:  # pi_old is this forward's pi_theta
        old_logp, entropy = measured  # [N, T], [N, T]
        entropy[seqs, :n_resp] = per_token.entropy
        old_logp[seqs, :n_resp] = per_token.logp
    if padding:
        loss = loss * 0.0
    elif run.use_fsdp:
        loss = loss * run.world  # FSDP averages over ranks; the weights are already global
    if loss.requires_grad:  # without: no term has a gradient here (OPCD on a micro-batch with nothing distilled)
        loss.backward()
    if loss_stats is not None and not padding:
        loss_stats.add(stats, n_tokens=float(mask.sum()))
    return padding or bool(torch.isfinite(loss.detach()))


def micro_batches(lengths: Tensor, size: int, token_budget: int | None, prompt_len: int) -> list[Tensor]:
    """Positions of each micro-batch within a minibatch of sequences with response ``lengths`` [M]:
    consecutive groups of ``size``, or, with a token budget, sequences sorted by length and packed while
    rows x (prompt_len + the group's longest response) stays within the budget (one row at least)."""
    M = len(lengths)
    if not token_budget:
        return [torch.arange(s, min(s + size, M)) for s in range(0, M, size)]
    groups: list[Tensor] = []
    current: list[int] = []
    current_max = 0
    for i in torch.argsort(lengths, descending=True, stable=True).tolist():
        need = int(lengths[i]) + prompt_len
        if current and (len(current) + 1) * max(current_max, need) > token_budget:
            groups.append(torch.tensor(current))
            current, current_max = [], 0
        current.append(i)
        current_max = max(current_max, need)
    if current:
        groups.append(torch.tensor(current))
    return groups


# --------------------------------------------------------------------------------------------
# Reduce metrics
# --------------------------------------------------------------------------------------------


def reduce_metrics(
    run: Run, sampled: Sampled, plan: UpdatePlan, adv: Advantages, updated: Updated, metrics: dict[str, float]
) -> None:
    """train/* metrics of the step, over all ranks."""
    mask = sampled.mask
    if sampled.engine_logp is not None:  # trainer vs rollout engine on the sampled tokens (before this update)
        gap = updated.old_logp - sampled.engine_logp  # [N, T]
        sums = dist.all_sum(
            torch.stack([(gap * mask).sum(), (gap.abs() * mask).sum(), (torch.exp(gap.clamp(-20, 20)) * mask).sum(), mask.sum()])
        )
        metrics["train/rollout_logprob_diff"] = float(sums[1] / sums[3].clamp(min=1))
        metrics["train/rollout_is_ratio"] = float(sums[2] / sums[3].clamp(min=1))
    updated.loss_stats.all_reduce(run.device)
    metrics.update(updated.loss_stats.metrics(plan.n_minibatches))
    metrics["train/beta"] = updated.beta
    metrics["train/gate_fraction"] = float((adv.all > 0).float().mean()) if run.cfg.algo.gate else 1.0
    entropy = dist.all_sum(torch.stack([(updated.entropy * mask).sum(), mask.sum()]))
    metrics["train/entropy"] = float(entropy[0] / entropy[1].clamp(min=1.0))
    metrics["train/grad_norm"] = float(updated.grad_norm)


# --------------------------------------------------------------------------------------------
# Evaluate, log, checkpoint
# --------------------------------------------------------------------------------------------


def evaluation_due(run: Run, step: int) -> bool:
    every = run.cfg.eval.every
    last = last_step(run.cfg, len(run.train_rows))
    return every > 0 and bool(run.eval_sets) and (step % every == 0 or step == last)


def run_evaluation(run: Run, step: int) -> dict[str, float]:
    started = time.perf_counter()
    with run.compute() if isinstance(run.rollout, HFRollout) else contextlib.nullcontext():
        metrics = evaluate(
            run.rollout,
            run.tokenizer,
            run.verifier,
            run.eval_sets,
            run.cfg,
            step,
            run.rank,
            run.world,
            run.device,
            extra_scorers=run.eval_scorers,
        )
    metrics["timing/eval"] = time.perf_counter() - started
    return metrics


def log_metrics(run: Run, metrics: dict[str, float], step: int) -> None:
    for sink in run.sinks:
        sink.log(metrics, step)


def export_final_policy(run: Run, step: int) -> Path:
    """The finished policy as a Hugging Face folder in ``<run>/hf`` (``sdpg.training.export``): a collective
    under FSDP, written by rank 0."""
    from sdpg.training.export import EXPORT_DIRNAME, write_hf_folder

    started = time.perf_counter()
    model_state, _ = full_state(run.policy)  # a collective under FSDP; the full state on rank 0
    dest = run.out / EXPORT_DIRNAME
    if run.main_rank:
        write_hf_folder(
            run.policy.config, run.tokenizer, model_state, run.cfg, step, dest, source=f"{run.out.resolve()} step {step}"
        )
        size = sum(f.stat().st_size for f in dest.iterdir()) / 2**20
        seconds = time.perf_counter() - started
        run.log(f"[sdpg] exported the policy of step {step} to {dest} ({run.cfg.model.dtype}, {size:.1f} MiB, {seconds:.1f} s)")
    dist.barrier()
    return dest


@contextlib.contextmanager
def _writing(path: Path, step: int):
    """An ``OSError`` while writing ``path`` becomes ``WriteFailed`` naming it and the step; also one that
    torch's zip writer turned into a ``RuntimeError`` while closing the cut file (its cause or context)."""
    try:
        yield
    except OSError as e:
        raise WriteFailed(path, step, e) from e
    except fsio.WriteRefused as e:  # fsio's one sentence for an OSError (full disk, read-only folder)
        if not isinstance(e.__cause__, OSError):
            raise
        raise WriteFailed(path, step, e.__cause__) from e
    except RuntimeError as e:
        cause = e.__cause__ or e.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise WriteFailed(path, step, cause) from e


def save_run_state(run: Run, step: int) -> Path:
    """A resumable checkpoint of ``step``: a collective (every rank takes part), written by rank 0; under FSDP
    a sharded checkpoint every rank writes its shards of (``save_sharded_checkpoint``), no full state gathered."""
    rngs: list[Any] = [rng_state()]
    if dist.active():
        rngs = [None] * run.world
        torch.distributed.all_gather_object(rngs, rng_state())
    if run.use_fsdp:
        started = time.perf_counter()
        run_state = {
            "step": step,
            "scheduler": run.scheduler.state_dict(),
            "sampler": run.sampler.state_dict(),
            "rng": rngs,
            "config_hash": run.cfg.config_hash(),
            "world_size": run.world,
        }
        path = save_sharded_checkpoint(
            run.out, step, run.policy, run.optimizer, run_state, run.cfg.run.keep_checkpoints, run.rank
        )
        if run.main_rank:
            kept = checkpoints(run.out)
            sizes = ", ".join(f"{p.name} {disk_usage(p) / 2**20:.1f} MiB" for p in kept)
            run.log(
                f"[sdpg] sharded checkpoint of step {step} by {run.world} ranks in {time.perf_counter() - started:.1f} s; "
                f"kept {len(kept)} (run.keep_checkpoints={run.cfg.run.keep_checkpoints}): {sizes}"
            )
        return path
    model_state, optim_state = full_state(run.policy, run.optimizer)  # a collective under FSDP
    path = checkpoint_dir(run.out) / f"step_{step:07d}.pt"
    if run.main_rank:
        with _writing(path, step):
            path = save_checkpoint(
                run.out,
                step,
                {
                    "step": step,
                    "model": model_state,
                    "optimizer": optim_state,
                    "scheduler": run.scheduler.state_dict(),
                    "sampler": run.sampler.state_dict(),
                    "rng": rngs if run.world > 1 else rngs[0],
                    "config_hash": run.cfg.config_hash(),
                    "identity": run.cfg.resume_identity(),  # what a resume must share (execution settings aside)
                    "total_steps": run.cfg.run.total_steps,
                },
                run.cfg.run.keep_checkpoints,
            )
    dist.barrier()
    return path
