"""The SDPG trainer: one RL loop, top to bottom.

    for each step k:
        sample prompts x, G responses y ~ pi_theta(.|x)           (rollout backend)
        R = verifier(y), A = group advantages                      (eq. 2.1)
        for each epoch, minibatch, micro-batch:
            student forward on (x, y)   -> hidden, log pi_theta(y_t)
            teacher forward on (c, x, y), same weights, no grad -> hidden
            L = L_out + beta(k) L_OPD+ + alpha L_K                  (eq. 3.5, sdpg.objective)
        AdamW step; metrics to the sinks; eval every N; checkpoint every N

Every method (GRPO, DAPO, Dr.GRPO, SDPG, RLSD, OPSD, OPCD) is a configuration of this loop.
Metrics leave through ``MetricSink`` objects (JSONL and console by default); orchestration
(MLflow, SLURM, Optuna) wraps ``train`` and passes its own sinks and ``should_stop``; this module
imports none of it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import yaml
from torch import Tensor

from sdpg.training import distributed as dist
from sdpg.training.config import TrainConfig, build_config, load_config
from sdpg.training.data import PromptSampler, build_prompts, read_source
from sdpg.objective import (
    FusedKLInputs,
    agg_weights,
    beta_at,
    full_vocab_kl,
    gate_mask,
    group_advantages,
    opsd_token_weights,
    rlsd_advantages,
    sdpg_loss,
    token_entropy,
    token_logprobs,
)
from sdpg.training.rewards import Verifier
from sdpg.training.rollout import HFRollout, VLLMRollout, left_pad

# --------------------------------------------------------------------------------------------
# Metric sinks
# --------------------------------------------------------------------------------------------


class MetricSink(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...


class JsonlSink:
    """One JSON object per step in ``path``. On resume from step k, rows after k are dropped first,
    so a resumed run never holds a step twice."""

    def __init__(self, path: str | Path, resume_step: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        self._f = open(self.path, "a")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._f.write(json.dumps({"step": step, **metrics}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class ConsoleSink:
    """A progress line per step; eval results when there are any."""

    def __init__(self, total_steps: int, stream=sys.stderr):
        self.total, self.stream, self.t0 = total_steps, stream, time.time()

    def log(self, metrics: dict[str, float], step: int) -> None:
        def f(k, fmt="{:.3f}"):
            return fmt.format(metrics[k]) if k in metrics else "-"

        if "train/reward" in metrics:
            print(
                f"[sdpg] step {step}/{self.total} reward {f('train/reward')} acc {f('train/accuracy')} "
                f"entropy {f('train/entropy')} len {f('train/response_length', '{:.1f}')} opd_kl {f('train/opd_kl', '{:.4f}')} "
                f"gate {f('train/gate_fraction', '{:.2f}')} beta {f('train/beta', '{:.2g}')} "
                f"{f('timing/step', '{:.1f}')}s (elapsed {time.time() - self.t0:.0f}s)",
                file=self.stream, flush=True,
            )
        evals = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        if evals:
            print(f"[sdpg] eval @ {step}: " + " ".join(f"{k}={v:.3f}" for k, v in sorted(evals.items())), file=self.stream, flush=True)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# Model helpers
# --------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_policy(cfg: TrainConfig, device: torch.device, log=print):
    """Tokenizer and model from ``model.path``: the embedded model, a local folder or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = cfg.model.path
    if path == "embedded":
        from sdpg.training.embedded import ensure_embedded_model

        path = str(ensure_embedded_model(cfg.model.embedded, log=log))
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"dtype": getattr(torch, cfg.model.dtype), "trust_remote_code": cfg.model.trust_remote_code}
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    model.sdpg_source_path = path  # where the weights came from (the vLLM engine loads the same)
    return tokenizer, model


def response_hidden(model, ids: Tensor, attn: Tensor, prompt_len: int, n_resp: int) -> Tensor:
    """Last hidden states that predict the response tokens: positions P-1 .. P+T-2 -> [b, T, H].

    The backbone's output is taken without the full logits. Under FSDP2 the root module's forward must
    run (its hooks gather and later reduce-scatter the root's parameters), so it is called with
    ``logits_to_keep=1`` and the backbone's output is caught by a hook."""
    backbone = getattr(model, model.base_model_prefix)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)  # [b, L]
    if getattr(model, "sdpg_fsdp", False):
        box = {}
        def grab(mod, args, out):
            h = out if isinstance(out, Tensor) else getattr(out, "last_hidden_state", None)
            box.setdefault("h", h if h is not None else out[0])

        handle = backbone.register_forward_hook(grab)
        try:
            model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False, logits_to_keep=1)
        finally:
            handle.remove()
        h = box["h"]  # [b, L, H]
    else:
        h = backbone(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state  # [b, L, H]
    return h[:, prompt_len - 1 : prompt_len - 1 + n_resp]  # [b, T, H]


def shard_fsdp(model) -> None:
    """FSDP2: each decoder layer its own unit, the root (embeddings, final norm, tied head) kept gathered
    from its forward to its backward so the fused KL can use the head. FSDP averages gradients over ranks;
    the trainer scales each loss by the world size, since its weights already carry the global normaliser."""
    from torch.distributed.fsdp import fully_shard

    backbone = getattr(model, model.base_model_prefix)
    for layer in backbone.layers:
        fully_shard(layer)
    fully_shard(model, reshard_after_forward=False)
    model.sdpg_fsdp = True


def full_state(model, optimizer=None, all_ranks: bool = False) -> tuple[dict, dict | None]:
    """Unsharded model (and optimizer) state dicts: on rank 0 only (CPU) or on every rank."""
    if not getattr(model, "sdpg_fsdp", False):
        return model.state_dict(), (optimizer.state_dict() if optimizer is not None else None)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=not all_ranks)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return msd, osd


def load_full_state(model, optimizer, msd: dict, osd: dict) -> None:
    if not getattr(model, "sdpg_fsdp", False):
        model.load_state_dict(msd)
        optimizer.load_state_dict(osd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, msd, options=opts)
    set_optimizer_state_dict(model, optimizer, osd, options=opts)


def head_of(model) -> tuple[Tensor, Tensor | None]:
    head = model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)  # [V, H], [V] | None


def derived_seed(*parts) -> int:
    """A 31-bit seed from (run seed, step, kind, index): the same on every rank and world size."""
    import hashlib

    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    s = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / "checkpoints").glob("step_*.pt"))
    return ckpts[-1] if ckpts else None


def save_checkpoint(out: Path, step: int, state: dict, keep: int) -> Path:
    d = out / "checkpoints"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:07d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in sorted(d.glob("step_*.pt"))[:-keep]:
        old.unlink()
    return path


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


@torch.no_grad()
def evaluate(rollout, tokenizer, verifier: Verifier, eval_sets: dict, cfg: TrainConfig, step: int = 0,
             rank: int = 0, world: int = 1, device: torch.device | str = "cpu") -> dict[str, float]:
    """mean@k, unbiased pass@k and greedy accuracy per benchmark. Problems are split across ranks and
    the per-problem results gathered; with ``rollout.seed_per_prompt`` each problem's samples are
    seeded, so the numbers do not depend on the number of ranks."""
    ec = cfg.eval
    max_new = ec.max_new_tokens or cfg.rollout.max_new_tokens
    metrics: dict[str, float] = {}
    for name, (rows, prompt_ids) in eval_sets.items():
        k = ec.n_samples
        mine = list(range(rank, len(rows), world))
        seeds = [derived_seed(cfg.run.seed, step, "eval", name, i) for i in mine] if cfg.rollout.seed_per_prompt else None
        ro = rollout.generate([prompt_ids[i] for i in mine], k, temperature=ec.temperature, top_p=ec.top_p,
                              max_new_tokens=max_new, seeds=seeds)
        texts = tokenizer.batch_decode(ro.responses, skip_special_tokens=True)
        answers = [rows[i]["answer"] for i in mine for _ in range(k)]
        correct = torch.tensor(verifier.correctness(texts, answers), device=device).view(len(mine), k)  # [n_local, k]
        lengths = ro.mask.sum(-1).to(device).view(len(mine), k)  # [n_local, k]
        correct, lengths = dist.all_gather_cat(correct), dist.all_gather_cat(lengths)  # [n, k]
        metrics[f"eval/{name}/mean@{k}"] = float(correct.mean())
        metrics[f"eval/{name}/response_length"] = float(lengths.float().mean())
        for kk in ec.pass_k:
            metrics[f"eval/{name}/pass@{kk}"] = float(np.mean([pass_at_k(k, int(c), kk) for c in correct.sum(-1)]))
        if ec.greedy:
            g = rollout.generate([prompt_ids[i] for i in mine], 1, greedy=True, max_new_tokens=max_new)
            gt = tokenizer.batch_decode(g.responses, skip_special_tokens=True)
            ok = torch.tensor(verifier.correctness(gt, [rows[i]["answer"] for i in mine]), device=device)  # [n_local]
            metrics[f"eval/{name}/greedy"] = float(dist.all_gather_cat(ok).mean())
    return metrics


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _as_config(config: TrainConfig | dict | str | Path) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return build_config(config)
    return load_config(config)


def train(
    config: TrainConfig | dict | str | Path,
    sinks: list[MetricSink] | None = None,
    should_stop: Callable[[], bool] | None = None,
    stop_after_step: int | None = None,
) -> dict[str, Any]:
    """Train one run. Resumes from the newest checkpoint in ``run.output_dir`` when ``run.resume``.

    ``sinks`` replace the default JSONL + console sinks (pass ``default_sinks(...) + [yours]`` to
    add one). ``should_stop`` is polled after every step: when it returns True the run saves a
    checkpoint and returns with status ``interrupted`` (preemption). ``stop_after_step`` does the
    same at a given step (tests). Returns {status, step, output_dir, metrics}.
    """
    cfg = _as_config(config)
    rc, ac, oc = cfg.run, cfg.algo, cfg.optim
    out = Path(rc.output_dir)
    if rc.threads:
        torch.set_num_threads(rc.threads)
    device = resolve_device(cfg.model.device)
    rank, world, own_group = dist.init(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", dist.local_rank())
        torch.cuda.set_device(device)
    main_rank = rank == 0
    if cfg.rollout.prompts_per_step % world:
        raise ValueError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} must be divisible by the {world} ranks")
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.resolved(), sort_keys=False))
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if main_rank else (lambda msg: None)  # noqa: E731
    seed_everything(rc.seed)

    # ---- policy (also the teacher: same weights), frozen reference when L_K is on
    if main_rank:  # one rank builds the embedded model; the others find it in the cache
        tokenizer, policy = load_policy(cfg, device, log)
    dist.barrier()
    if not main_rank:
        tokenizer, policy = load_policy(cfg, device, log)
    seed_everything(rc.seed + 1_000_003 * rank)  # model loading may draw random numbers; ranks sample differently
    reference = copy.deepcopy(policy).eval().requires_grad_(False) if ac.needs_reference else None
    use_fsdp = world > 1 and (cfg.model.fsdp is True or (cfg.model.fsdp == "auto" and device.type == "cuda"))
    generator_model = None
    if use_fsdp:
        if cfg.rollout.backend == "hf":  # sampling runs on an unsharded copy: ranks stop generating at different times
            generator_model = copy.deepcopy(policy).eval().requires_grad_(False)
        shard_fsdp(policy)

    # ---- data: prompts tokenised once
    def tokenize(rows: list[dict], what: str) -> tuple[list[list[int]], list[list[int]]]:
        s_ids, t_ids, cut = [], [], 0
        limit = cfg.data.max_prompt_tokens
        for r in rows:
            s, t = (tokenizer.encode(x, add_special_tokens=False) for x in build_prompts(r, cfg.data, tokenizer))
            cut += (len(s) > limit) + (len(t) > limit)
            s_ids.append(s[-limit:])
            t_ids.append(t[-limit:])
        if cut:
            log(f"[sdpg] warning: {cut} {what} prompts (student and teacher views) longer than data.max_prompt_tokens={limit} were cut from the left")
        return s_ids, t_ids

    rows = read_source(cfg.data.train, cfg.data, "train")[: cfg.data.train_limit]
    student_prompts, teacher_prompts = tokenize(rows, "training")
    eval_sets = {}
    for name, src in cfg.data.eval.items():
        erows = read_source(src, cfg.data, "test")[: cfg.data.eval_limit]
        eval_sets[name] = (erows, tokenize(erows, name)[0])
    sampler = PromptSampler(len(rows), rc.seed, cfg.data.shuffle)
    verifier_kind = cfg.reward.verifier if cfg.reward.verifier != "auto" else ("exact" if cfg.data.train == "embedded" else "math")
    verifier = Verifier(verifier_kind, cfg.reward.timeout_s, cfg.reward.overlong_buffer, cfg.reward.overlong_penalty,
                        cfg.rollout.max_new_tokens)
    if cfg.rollout.backend == "vllm":
        rollout = VLLMRollout(policy.sdpg_source_path, tokenizer, dtype=cfg.model.dtype,
                              max_model_len=min(getattr(policy.config, "max_position_embeddings", 1 << 30),
                                                cfg.data.max_prompt_tokens + max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens or 0)),
                              gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization, seed=rc.seed + rank,
                              cpu_memory_gb=cfg.rollout.vllm_cpu_memory_gb)
    else:
        rollout = HFRollout(generator_model if generator_model is not None else policy, tokenizer, cfg.rollout.batch_size)

    def sync_rollout_weights() -> float:
        """The rollout engine (vLLM, or the unsharded copy under FSDP) takes the policy's new weights."""
        t0 = time.perf_counter()
        if isinstance(rollout, VLLMRollout) or generator_model is not None:
            sd, _ = full_state(policy, all_ranks=True)
            if isinstance(rollout, VLLMRollout):
                rollout.sync_weights(sd)
            else:
                generator_model.load_state_dict(sd)
        return time.perf_counter() - t0

    # ---- optimizer: AdamW, linear warm-up then constant
    opt = torch.optim.AdamW(policy.parameters(), lr=oc.lr, weight_decay=oc.weight_decay, betas=oc.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, oc.warmup_steps)) if oc.warmup_steps else 1.0)

    # ---- resume
    start = 0
    ckpt_path = latest_checkpoint(out) if rc.resume else None
    if ckpt_path is not None:
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ck["config_hash"] != cfg.config_hash():
            raise RuntimeError(f"{ckpt_path} was written by another config (hash {ck['config_hash']} != {cfg.config_hash()}); "
                               f"use a new run.output_dir or run.resume=false")
        load_full_state(policy, opt, ck["model"], ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        sampler.load_state_dict(ck["sampler"])
        rngs = ck["rng"] if isinstance(ck["rng"], list) else [ck["rng"]]
        if len(rngs) == world:
            set_rng_state(rngs[rank])
        else:  # another world size: every rank starts a fresh stream derived from the step
            seed_everything(derived_seed(rc.seed, ck["step"], "resume", rank))
        start = ck["step"]
        log(f"[sdpg] resumed from {ckpt_path} at step {start}")
    if not main_rank:
        sinks = []  # rank 0 logs for all
    sinks = sinks if sinks is not None else default_sinks(out, start, rc.total_steps)
    if start > 0:
        sync_rollout_weights()  # resumed weights differ from the folder the engine loaded

    def checkpoint(step: int) -> None:
        rngs = [rng_state()]
        if dist.active():
            rngs = [None] * world
            torch.distributed.all_gather_object(rngs, rng_state())
        msd, osd = full_state(policy, opt)  # a collective under FSDP: every rank takes part
        if main_rank:
            save_checkpoint(out, step, {
                "step": step, "model": msd, "optimizer": osd, "scheduler": sched.state_dict(),
                "sampler": sampler.state_dict(), "rng": rngs if world > 1 else rngs[0], "config_hash": cfg.config_hash(),
            }, rc.keep_checkpoints)
        dist.barrier()

    G, P_step = cfg.rollout.group_size, cfg.rollout.prompts_per_step
    temp = cfg.rollout.temperature
    need_teacher_fwd = ac.needs_distillation
    last_metrics: dict[str, float] = {}
    status = "finished"

    if start == 0 and cfg.eval.every > 0 and eval_sets:
        t0 = time.perf_counter()
        m0 = evaluate(rollout, tokenizer, verifier, eval_sets, cfg, 0, rank, world, device)
        m0["timing/eval"] = time.perf_counter() - t0
        for s in sinks:
            s.log(m0, 0)

    step = start
    for step in range(start + 1, rc.total_steps + 1):
        t_step = time.perf_counter()
        m: dict[str, float] = {}

        # ---- 1. rollouts: G responses per prompt
        idx_all = sampler.next(P_step)  # the same global draw on every rank
        idx = idx_all[rank::world]  # this rank's prompts
        t0 = time.perf_counter()
        seeds = [derived_seed(rc.seed, step, "rollout", i) for i in idx] if cfg.rollout.seed_per_prompt else None
        ro = rollout.generate([student_prompts[i] for i in idx], G, temperature=temp, top_p=cfg.rollout.top_p,
                              top_k=cfg.rollout.top_k, max_new_tokens=cfg.rollout.max_new_tokens, seeds=seeds)
        m["timing/rollout"] = time.perf_counter() - t0
        responses, mask = ro.responses.to(device), ro.mask.to(device)  # [N, T], [N, T]
        ro_logp = ro.logprobs.to(device) if ro.logprobs is not None else None  # [N, T] under the rollout engine
        N, T = responses.shape

        # ---- 2. rewards and group advantages
        t0 = time.perf_counter()
        texts = tokenizer.batch_decode(ro.responses, skip_special_tokens=True)
        answers = [rows[i]["answer"] for i in idx for _ in range(G)]
        correct = torch.tensor(verifier.correctness(texts, answers))  # [N]
        lengths = mask.sum(-1)  # [N]
        rewards = correct + torch.tensor(verifier.overlong(lengths.long().tolist()))  # [N]
        adv = group_advantages(rewards, G, std_norm=ac.std_norm).to(device)  # [N]
        m["timing/reward"] = time.perf_counter() - t0
        g_rewards, g_correct = dist.all_gather_cat(rewards.to(device)), dist.all_gather_cat(correct.to(device))  # [N_all]
        g_lengths, g_trunc = dist.all_gather_cat(lengths.float()), dist.all_gather_cat(ro.truncated.to(device).float())
        g_adv = dist.all_gather_cat(adv)  # [N_all]
        m.update({
            "train/reward": float(g_rewards.mean()), "train/accuracy": float(g_correct.mean()),
            "train/response_length": float(g_lengths.mean()), "train/truncated": float(g_trunc.mean()),
            "train/solve_all": float((g_correct.view(-1, G).min(-1).values == 1).float().mean()),
            "train/solve_none": float((g_correct.view(-1, G).max(-1).values == 0).float().mean()),
        })
        keep = torch.arange(N)
        if ac.filter_groups:  # DAPO dynamic sampling: only groups with a learning signal
            r = rewards.view(-1, G)  # [N/G, G]
            informative = (r.max(-1).values != r.min(-1).values).repeat_interleave(G)  # [N]
            keep = informative.nonzero().view(-1)
            m["train/kept_fraction"] = float(dist.all_sum(informative.float().sum()) / (N * world))

        # ---- 3. sequences: [left-padded prompt | response]; teacher prompts carry the context c
        s_ids, s_attn = left_pad([student_prompts[i] for i in idx for _ in range(G)], tokenizer.pad_token_id)  # [N, P]
        s_seq = torch.cat([s_ids.to(device), responses], 1)  # [N, P+T]
        s_att = torch.cat([s_attn.to(device), mask.long()], 1)  # [N, P+T]
        Ps = s_ids.shape[1]
        t_ids, t_attn = left_pad([teacher_prompts[i] for i in idx for _ in range(G)], tokenizer.pad_token_id)  # [N, Pt]
        t_seq = torch.cat([t_ids.to(device), responses], 1)  # [N, Pt+T]
        t_att = torch.cat([t_attn.to(device), mask.long()], 1)  # [N, Pt+T]
        Pt = t_ids.shape[1]
        mb = oc.micro_batch_size

        # ---- 4. log-probs before the update (no grad): old policy, reference, teacher on y_t
        t0 = time.perf_counter()
        n_keep_all = int(dist.all_sum(torch.tensor(float(len(keep)))).item())  # kept sequences over all ranks
        minibatch = oc.minibatch_size or max(1, n_keep_all)  # global sequences per optimizer step
        n_minibatches = max(1, math.ceil(n_keep_all / minibatch)) if n_keep_all else 0
        on_policy = oc.ppo_epochs == 1 and n_minibatches == 1
        old_logp = torch.zeros(N, T, device=device)  # [N, T]
        ref_logp = torch.zeros(N, T, device=device) if ac.alpha > 0 else None  # [N, T]
        teacher_logp = torch.zeros(N, T, device=device) if ac.needs_teacher_logprobs else None  # [N, T]
        entropy = torch.zeros(N, T, device=device)  # [N, T]
        unseen = torch.ones(N, dtype=torch.bool)
        unseen[keep] = False  # rows the update skips (filter_groups): entropy from this pass
        # one decision for all ranks (under FSDP every rank must run the same forwards)
        entropy_pass = on_policy and dist.any_true(bool(unseen.any()), device)
        with torch.no_grad():
            for s in range(0, N, mb):
                sl = slice(s, s + mb)
                if entropy_pass and (use_fsdp or unseen[sl].any()):
                    h = response_hidden(policy, s_seq[sl], s_att[sl], Ps, T)  # [b, T, H]
                    entropy[sl] = token_entropy(torch.nn.functional.linear(h, *head_of(policy)), temp)
                if not on_policy:
                    h = response_hidden(policy, s_seq[sl], s_att[sl], Ps, T)  # [b, T, H]
                    logits = torch.nn.functional.linear(h, *head_of(policy))  # [b, T, V]
                    old_logp[sl] = token_logprobs(logits, responses[sl], temp)
                    entropy[sl] = token_entropy(logits, temp)
                if ref_logp is not None:
                    h = response_hidden(reference, s_seq[sl], s_att[sl], Ps, T)  # [b, T, H]
                    ref_logp[sl] = token_logprobs(reference.get_output_embeddings()(h), responses[sl], temp)
                if teacher_logp is not None:  # the privileged view: current policy, or the frozen initial model
                    tm = reference if ac.teacher == "frozen" else policy
                    h = response_hidden(tm, t_seq[sl], t_att[sl], Pt, T)  # [b, T, H]
                    teacher_logp[sl] = token_logprobs(tm.get_output_embeddings()(h), responses[sl], temp)
        m["timing/logprobs"] = time.perf_counter() - t0

        # per-token advantages of L_out for RLSD / OPSD
        token_adv = None
        if ac.advantage == "rlsd" or ac.advantage == "opsd":
            base_logp = old_logp if not on_policy else _current_logp(policy, s_seq, s_att, Ps, responses, temp, mb)
            if ac.advantage == "rlsd":
                lam = ac.rlsd_lambda * (max(0.0, 1.0 - (step - 1) / ac.rlsd_lambda_decay_steps) if ac.rlsd_lambda_decay_steps else 1.0)
                m["train/rlsd_lambda"] = lam
                token_adv = rlsd_advantages(adv, teacher_logp, base_logp, ac.rlsd_eps_w, lam)  # [N, T]
            else:
                token_adv = opsd_token_weights(teacher_logp, base_logp, adv, ac.opsd_max_weight)  # [N, T]

        # ---- 5. update: epochs x minibatches x micro-batches
        if isinstance(rollout, VLLMRollout):
            rollout.sleep()  # GPU: free the engine's KV cache while training
        t0 = time.perf_counter()
        beta_k = beta_at(step, rc.total_steps, ac.beta, ac.beta_warmup_steps, ac.beta_decay_steps)
        policy.train()
        sums: dict[str, float] = dict.fromkeys(LOSS_STATS + ("_opd_tokens", "_tokens"), 0.0)  # same keys on every rank
        grad_norm = torch.zeros(())
        m["train/skipped_update"] = float(n_keep_all == 0)  # every group uninformative (filter_groups)
        for epoch in range(oc.ppo_epochs if n_keep_all else 0):
            order = keep[torch.randperm(len(keep))] if n_minibatches > 1 or oc.ppo_epochs > 1 else keep
            for rows_mb in torch.tensor_split(order, n_minibatches):  # the same number of minibatches on every rank
                rows_mb = rows_mb.to(device)  # [M]
                # aggregation weights normalised over the whole minibatch on all ranks, so neither
                # micro-batching nor the number of ranks changes the update
                mk, gk = mask[rows_mb], gate_mask(adv[rows_mb], mask[rows_mb], ac.gate)  # [M, T] each
                if ac.opd_exclude_stop:  # no distillation at the end-of-sequence position
                    gk = gk * (responses[rows_mb] != tokenizer.eos_token_id).float()  # [M, T]
                counts = dist.all_sum(torch.stack([mk.sum(), torch.tensor(float(len(rows_mb)), device=device), gk.sum()]))
                w_mb = agg_weights(mk, ac.loss_agg_mode, n_tokens=counts[0], n_seqs=counts[1])  # [M, T]
                opd_w_mb = (w_mb * gk if ac.opd_norm == "all"
                            else agg_weights(gk, ac.loss_agg_mode, n_tokens=counts[2], n_seqs=counts[1]))  # [M, T]
                opt.zero_grad(set_to_none=True)
                groups = micro_batches(mk.sum(-1), mb, oc.micro_batch_tokens, Ps)
                if use_fsdp:  # every rank must run as many forwards: pad with zero-weight micro-batches
                    n_max = int(dist.all_max(torch.tensor(float(len(groups)), device=device)).item())
                    groups += [None] * (n_max - len(groups))
                for u in groups:
                    dummy = u is None
                    if dummy:
                        u = torch.tensor([0])
                    r = rows_mb[u] if len(rows_mb) else torch.tensor([0], device=device)  # [b]
                    tb = max(1, int(mask[r].sum(-1).max()))  # the longest response here; beyond it, padding
                    y, mr = responses[r, :tb], mask[r, :tb]  # [b, tb]
                    h = response_hidden(policy, s_seq[r, : Ps + tb], s_att[r, : Ps + tb], Ps, tb)  # [b, tb, H]
                    W_head, b_head = head_of(policy)  # after the forward: under FSDP the gathered head
                    logits = torch.nn.functional.linear(h, W_head, b_head)  # [b, tb, V]
                    logp = token_logprobs(logits, y, temp)  # [b, tb]
                    if on_policy:
                        entropy[r, :tb] = token_entropy(logits.detach(), temp)
                        if epoch == 0:
                            old_logp[r, :tb] = logp.detach()
                    old_r = logp.detach() if on_policy else old_logp[r, :tb]  # [b, tb]
                    adv_r = token_adv[r, :tb] if token_adv is not None else None  # [b, tb]
                    if ro_logp is not None and cfg.rollout.tis_cap is not None:  # truncated importance sampling
                        behaviour = old_r - ro_logp[r, :tb]  # [b, tb]
                        tis = torch.exp(behaviour.clamp(max=20.0)).clamp(max=cfg.rollout.tis_cap) * mr  # [b, tb]
                        adv_r = (adv_r if adv_r is not None else adv[r][:, None]) * tis  # [b, tb]
                    opd = None
                    if need_teacher_fwd and (use_fsdp or bool(opd_w_mb[u].any())):
                        with torch.no_grad():
                            ht = response_hidden(policy, t_seq[r, : Pt + tb], t_att[r, : Pt + tb], Pt, tb)  # [b, tb, H]
                        if ac.opd_impl == "fused":
                            opd = FusedKLInputs(h, ht, W_head, b_head, temperature=ac.distill_temperature)
                        else:
                            opd = full_vocab_kl(logits, torch.nn.functional.linear(ht, W_head, b_head), ac.distill_temperature)  # [b, tb]
                    loss, st = sdpg_loss(
                        logp, old_r, adv[r], mr,
                        token_advantages=adv_r,
                        opd=opd, ref_logp=ref_logp[r, :tb] if ref_logp is not None else None,
                        beta=beta_k, alpha=ac.alpha, kl_mode=ac.kl_mode, gate=ac.gate, opd_norm=ac.opd_norm,
                        pg_coef=ac.pg_coef, policy_mode=ac.policy_loss, clip_low=ac.clip_low, clip_high=ac.clip_high,
                        clip_c=ac.clip_c, loss_agg_mode=ac.loss_agg_mode,
                        token_weights=w_mb[u, :tb] if not dummy else torch.zeros_like(mr),
                        opd_token_weights=opd_w_mb[u, :tb] if not dummy else torch.zeros_like(mr),
                    )
                    if dummy:
                        loss = loss * 0.0  # a forward/backward for FSDP's collectives only
                    elif use_fsdp:
                        loss = loss * world  # FSDP averages over ranks; the weights are already global
                    loss.backward()
                    if epoch == 0 and not dummy:  # statistics of the first pass, exact whatever the micro-batching / ranks
                        n_tok = float(mr.sum())
                        n_opd = float(st.pop("opd_tokens"))
                        for k, v in st.items():
                            if k in ADDITIVE_STATS:  # already globally weighted: sum; averaged over minibatches below
                                sums[k] = sums.get(k, 0.0) + float(v)
                            elif k == "opd_kl":
                                sums[k] = sums.get(k, 0.0) + float(v) * n_opd
                            elif k != "beta" and k != "gate_fraction":
                                sums[k] = sums.get(k, 0.0) + float(v) * n_tok
                        sums["_opd_tokens"] = sums.get("_opd_tokens", 0.0) + n_opd
                        sums["_tokens"] = sums.get("_tokens", 0.0) + n_tok
                if not use_fsdp:  # FSDP has reduce-scattered the gradients already
                    dist.all_reduce_grads(list(policy.parameters()))
                grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), oc.grad_clip if oc.grad_clip > 0 else float("inf"))
                if hasattr(grad_norm, "full_tensor"):
                    grad_norm = grad_norm.full_tensor()
                opt.step()
                sched.step()
        policy.eval()
        m["timing/update"] = time.perf_counter() - t0
        if isinstance(rollout, VLLMRollout) or generator_model is not None:
            m["timing/weight_sync"] = sync_rollout_weights()
        if ro_logp is not None:  # trainer vs rollout engine on the sampled tokens (before this update)
            d = dist.all_sum(torch.stack([((old_logp - ro_logp) * mask).sum(), ((old_logp - ro_logp).abs() * mask).sum(),
                                          (torch.exp((old_logp - ro_logp).clamp(-20, 20)) * mask).sum(), mask.sum()]))
            m["train/rollout_logprob_diff"] = float(d[1] / d[3].clamp(min=1))
            m["train/rollout_is_ratio"] = float(d[2] / d[3].clamp(min=1))
        if dist.active():  # sums over ranks
            keys = sorted(sums)
            red = dist.all_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device))
            sums = {k: float(v) for k, v in zip(keys, red)}
        opd_tokens, tokens = sums.pop("_opd_tokens", 0.0), sums.pop("_tokens", 0.0)
        for k, v in sums.items():
            if k in ADDITIVE_STATS:
                m[f"train/{k}"] = v / max(1, n_minibatches)
            else:
                m[f"train/{k}"] = v / max(1.0, opd_tokens if k == "opd_kl" else tokens)
        m["train/beta"] = beta_k
        m["train/gate_fraction"] = float((g_adv > 0).float().mean()) if ac.gate else 1.0
        ent = dist.all_sum(torch.stack([(entropy * mask).sum(), mask.sum()]))
        m["train/entropy"] = float(ent[0] / ent[1].clamp(min=1.0))
        m["train/grad_norm"] = float(grad_norm)
        m["train/lr"] = sched.get_last_lr()[0]

        # ---- 6. evaluation, logging, checkpoint
        if cfg.eval.every > 0 and eval_sets and (step % cfg.eval.every == 0 or step == rc.total_steps):
            t0 = time.perf_counter()
            m.update(evaluate(rollout, tokenizer, verifier, eval_sets, cfg, step, rank, world, device))
            m["timing/eval"] = time.perf_counter() - t0
            for t in texts[: rc.log_samples]:
                log(f"[sdpg] sample @ {step}: {t[:200]!r}")
        m["timing/step"] = time.perf_counter() - t_step
        for s in sinks:
            s.log(m, step)
        last_metrics = m
        interrupted = dist.any_true((should_stop is not None and should_stop()) or
                                    (stop_after_step is not None and step >= stop_after_step), device)
        if step == rc.total_steps or interrupted or (rc.checkpoint_every and step % rc.checkpoint_every == 0):
            checkpoint(step)
        if interrupted and step < rc.total_steps:
            status = "interrupted"
            break

    verifier.close()
    if sinks is not None:
        for s in sinks:
            s.close()
    result = {"status": status, "step": step, "output_dir": str(out), "metrics": last_metrics, "rank": rank, "world_size": world}
    if main_rank:
        (out / "result.json").write_text(json.dumps(result, indent=1))
    if own_group:
        dist.shutdown()
    return result


def micro_batches(lengths: Tensor, size: int, token_budget: int | None, prompt_len: int) -> list[Tensor]:
    """Positions of each micro-batch within a minibatch of sequences with response ``lengths`` [M]:
    consecutive groups of ``size``, or, with a token budget, sequences sorted by length and packed while
    rows x (prompt_len + the group's longest response) stays within the budget (one row at least)."""
    M = len(lengths)
    if not token_budget:
        return [torch.arange(s, min(s + size, M)) for s in range(0, M, size)]
    out, cur, cur_max = [], [], 0
    for i in torch.argsort(lengths, descending=True, stable=True).tolist():
        need = int(lengths[i]) + prompt_len
        if cur and (len(cur) + 1) * max(cur_max, need) > token_budget:
            out.append(torch.tensor(cur))
            cur, cur_max = [], 0
        cur.append(i)
        cur_max = max(cur_max, need)
    if cur:
        out.append(torch.tensor(cur))
    return out


LOSS_STATS = ("pg_loss", "pg_clipfrac", "pg_clipfrac_lower", "ppo_kl", "opd_loss", "opd_kl", "ref_kl", "ref_kl_surrogate")
ADDITIVE_STATS = ("pg_loss", "opd_loss")  # terms of the loss: micro-batch parts add up


def _current_logp(policy, seq, att, P, responses, temp, mb) -> Tensor:
    """log pi_theta(y_t) [N, T] without gradient (the on-policy p_old)."""
    out = []
    with torch.no_grad():
        for s in range(0, seq.shape[0], mb):
            h = response_hidden(policy, seq[s : s + mb], att[s : s + mb], P, responses.shape[1])  # [b, T, H]
            out.append(token_logprobs(torch.nn.functional.linear(h, *head_of(policy)), responses[s : s + mb], temp))  # [b, T]
    return torch.cat(out)  # [N, T]


def default_sinks(out: Path, resume_step: int, total_steps: int) -> list[MetricSink]:
    return [JsonlSink(out / "metrics.jsonl", resume_step), ConsoleSink(total_steps)]
