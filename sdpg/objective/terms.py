"""Pure loss terms of the SDPG objective and its baselines.

Every function takes and returns tensors; none reads a config or a global.
Shapes: B sequences in a batch, T response positions (right-padded), V vocabulary.
``mask`` is 1.0 on real response tokens and 0.0 on padding.

Equation numbers refer to SDPG (arXiv 2606.04036); docs/objective.md maps each one here.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from sdpg.objective.registry import POLICY_LOSSES, REF_KL_MODES, AdvantageInputs, DistillDtype, lookup

LossAggMode = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]
RefKLMode = str  # a name registered in REF_KL_MODES (urkl, ufkl, rkl, fkl, k1, k2, k3 built in)
RewardKLEstimator = Literal["k1", "k2", "k3", "abs"]
PolicyLossMode = str  # a name registered in POLICY_LOSSES (dapo, reinforce built in)


# --------------------------------------------------------------------------------------------
# Advantages and schedules
# --------------------------------------------------------------------------------------------


def group_advantages(rewards: Tensor, group_size: int, std_norm: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-relative advantages (GRPO, eq. 2.1).

    ``rewards`` [N] holds N/G consecutive groups of G responses to the same prompt.
    With ``std_norm``: A = (R - mean_G) / (std_G + eps), std unbiased as in GRPO and the SDPG
    reference code. Without (Dr.GRPO, arXiv 2503.20783): A = R - mean_G.
    A group of equal rewards gets A = 0. A group of one response gets A = 0 (its std is undefined).
    """
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards must be [N] with N a multiple of group_size={group_size}, got {tuple(rewards.shape)}")
    r = rewards.float().view(-1, group_size)  # [N/G, G]
    centred = r - r.mean(dim=1, keepdim=True)  # [N/G, G]
    if std_norm and group_size > 1:
        centred = centred / (r.std(dim=1, keepdim=True) + eps)  # [N/G, G]
    if group_size == 1:
        centred = torch.zeros_like(centred)  # [N/G, 1]
    return centred.view(-1)  # [N]


def beta_at(step: int, total_steps: int, beta: float, warmup_steps: int = 0, decay_steps: int = 0) -> float:
    """Distillation coefficient schedule beta(k) = beta * min(1, k/T_warm) * min(1, (T-k)/T_decay).

    A window of 0 switches its factor off. Clamped at 0 past the end of training.
    """
    warm = 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)
    decay = 1.0 if decay_steps <= 0 else min(1.0, (total_steps - step) / decay_steps)
    return float(beta * max(0.0, warm) * max(0.0, decay))


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


def agg_weights(
    mask: Tensor,
    mode: LossAggMode = "token-mean",
    n_tokens: float | Tensor | None = None,
    n_seqs: float | Tensor | None = None,
) -> Tensor:
    """Per-token weights [B, T] such that ``(x * agg_weights(mask, mode)).sum()`` aggregates x.

    token-mean: sum over all tokens / number of tokens (DAPO).
    seq-mean-token-sum: per-sequence sum, mean over sequences (Dr.GRPO).
    seq-mean-token-mean: per-sequence mean, mean over sequences (GRPO).
    ``n_tokens`` / ``n_seqs`` replace this batch's counts when it is one shard of a larger batch (data
    parallelism); then summing the shards' aggregates gives the whole batch's. Empty masks give zeros.
    """
    m = mask.float()  # [B, T]
    if mode == "token-mean":
        return m / max(1.0, float(n_tokens)) if n_tokens is not None else m / m.sum().clamp(min=1.0)  # [B, T]
    n_seq = max(1.0, float(n_seqs)) if n_seqs is not None else max(1, m.shape[0])
    if mode == "seq-mean-token-sum":
        return m / n_seq  # [B, T]
    if mode == "seq-mean-token-mean":
        return m / (m.sum(dim=1, keepdim=True).clamp(min=1.0) * n_seq)  # [B, T]
    raise ValueError(f"unknown loss_agg_mode {mode!r}; expected token-mean, seq-mean-token-sum or seq-mean-token-mean")


def aggregate(values: Tensor, mask: Tensor, mode: LossAggMode = "token-mean") -> Tensor:
    """Aggregate per-token ``values`` [B, T] under ``mask`` to a scalar."""
    return (values * agg_weights(mask, mode)).sum()  # []


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the tokens where ``mask`` is set; 0 when none is."""
    m = mask.float()  # [B, T]
    return (values * m).sum() / m.sum().clamp(min=1.0)  # []


# --------------------------------------------------------------------------------------------
# L_out: the verifier (outcome) term
# --------------------------------------------------------------------------------------------


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    clip_c: float | None = 10.0,
    mode: PolicyLossMode = "dapo",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token policy-gradient loss [B, T] and clip statistics, by the loss registered as ``mode``.

    ``advantages`` is [B] (one per sequence) or [B, T] (per token, e.g. RLSD).
    Returns (loss [B, T] zero on padding, stats with pg_clipfrac, pg_clipfrac_lower, ppo_kl).
    """
    fn = lookup(POLICY_LOSSES, "policy loss mode", mode)
    adv = advantages if advantages.dim() == 2 else advantages[:, None].expand_as(logp)  # [B, T]
    return fn(logp, old_logp, adv, mask.float(), clip_low, clip_high, clip_c)


def dapo_loss(
    logp: Tensor, old_logp: Tensor, adv: Tensor, m: Tensor, clip_low: float, clip_high: float, clip_c: float | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """The dual-clip PPO surrogate with DAPO's asymmetric "clip-higher" range (arXiv 2503.14476):
    max(-A r, -A clip(r, 1-eps_low, 1+eps_high)), further bounded by -A c for A < 0 (dual clip,
    arXiv 1912.09729; ``clip_c=None``: no dual clip). ``adv`` and ``m`` [B, T]."""
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    loss_unclipped = -adv * ratio  # [B, T]
    loss_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [B, T]
    loss_ppo = torch.maximum(loss_unclipped, loss_clipped)  # [B, T]
    if clip_c is None:
        loss, dual_clipped = loss_ppo, torch.zeros_like(loss_ppo, dtype=torch.bool)  # [B, T] each
    else:
        loss_dual = torch.minimum(loss_ppo, -adv * clip_c)  # [B, T]
        loss = torch.where(adv < 0, loss_dual, loss_ppo)  # [B, T]
        dual_clipped = (loss_ppo > -adv * clip_c) & (adv < 0)  # [B, T]
    stats = {
        "pg_clipfrac": masked_mean((loss_clipped > loss_unclipped).float(), m).detach(),
        "pg_clipfrac_lower": masked_mean(dual_clipped.float(), m).detach(),
        "ppo_kl": masked_mean(-log_ratio, m).detach(),
    }
    return loss * m, stats


def reinforce_loss(
    logp: Tensor, old_logp: Tensor, adv: Tensor, m: Tensor, clip_low: float, clip_high: float, clip_c: float | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """The on-policy REINFORCE loss -A log pi [B, T]; no clipping, so zero clip statistics."""
    loss = -adv * logp  # [B, T]
    zero = logp.new_zeros(())
    return loss * m, {"pg_clipfrac": zero, "pg_clipfrac_lower": zero, "ppo_kl": zero}


# --------------------------------------------------------------------------------------------
# L_K: the per-token surrogate against a frozen reference
# --------------------------------------------------------------------------------------------


def ref_kl(logp: Tensor, ref_logp: Tensor, mode: RefKLMode) -> Tensor:
    """Per-token reference-KL surrogate [B, T] on the sampled tokens, w = pi_theta / pi_ref, by the
    surrogate registered as ``mode`` (``REF_KL_MODES``).

    SDPG's surrogates (sec. 3.4, app. A.2), whose expected gradient under y ~ pi_theta is exactly
    the gradient of a divergence: ``urkl`` 1/2 log^2 w -> UKL(pi_theta || pi_ref);
    ``ufkl`` 1/w + log w -> UKL(pi_ref || pi_theta); ``rkl`` 1/2 (log w + 1)^2 -> KL(pi_theta || pi_ref);
    ``fkl`` 1/w -> KL(pi_ref || pi_theta). Schulman's estimators of KL(pi_theta || pi_ref):
    ``k1`` log w, ``k2`` 1/2 log^2 w, ``k3`` 1/w - 1 + log w (GRPO's).
    The log-ratio is clamped to [-20, 20] so a rare token cannot overflow 1/w.
    """
    fn = lookup(REF_KL_MODES, "ref_kl mode", mode)
    log_w = (logp - ref_logp).clamp(-20.0, 20.0)  # [B, T]
    return fn(log_w)  # [B, T]


def _urkl(log_w: Tensor) -> Tensor:
    return 0.5 * log_w**2  # [B, T]


def _ufkl(log_w: Tensor) -> Tensor:
    return torch.exp(-log_w) + log_w  # [B, T]


def _rkl(log_w: Tensor) -> Tensor:
    return 0.5 * (log_w + 1.0) ** 2  # [B, T]


def _fkl(log_w: Tensor) -> Tensor:
    return torch.exp(-log_w)  # [B, T]


def _k1(log_w: Tensor) -> Tensor:
    return log_w  # [B, T]


def _k2(log_w: Tensor) -> Tensor:
    return 0.5 * log_w**2  # [B, T]


def _k3(log_w: Tensor) -> Tensor:
    return torch.exp(-log_w) - 1.0 + log_w  # [B, T]


def reward_kl_penalty(old_logp: Tensor, ref_logp: Tensor, mask: Tensor, estimator: RewardKLEstimator = "k1") -> Tensor:
    """Per-sequence sum_t k_t [B] of a KL estimate on the sampled tokens, log w = log pi_old - log pi_ref
    (verl's ``use_kl_in_reward``): k1 log w, k2 1/2 log^2 w, k3 1/w - 1 + log w, abs |log w|. No gradient."""
    log_w = (old_logp - ref_logp).detach().clamp(-20.0, 20.0)  # [B, T]
    if estimator == "k1":
        k = log_w  # [B, T]
    elif estimator == "k2":
        k = 0.5 * log_w**2  # [B, T]
    elif estimator == "k3":
        k = torch.exp(-log_w) - 1.0 + log_w  # [B, T]
    elif estimator == "abs":
        k = log_w.abs()  # [B, T]
    else:
        raise ValueError(f"unknown reward KL estimator {estimator!r}; expected k1, k2, k3 or abs")
    return (k * mask.float()).sum(dim=-1)  # [B]


def kl_penalised_rewards(
    scores: Tensor, old_logp: Tensor, ref_logp: Tensor, mask: Tensor, coef: float, estimator: RewardKLEstimator = "k1"
) -> Tensor:
    """KL in the reward (GRPO as SDPG's Table 1 runs it): the token rewards carry -coef * k_t and the
    score sits on the last token, so the sequence reward entering the group advantage is
    score - coef * sum_t k_t [B]. ``scores`` [B], log-probs and ``mask`` [B, T]."""
    return scores.float() - coef * reward_kl_penalty(old_logp, ref_logp, mask, estimator)  # [B]


# --------------------------------------------------------------------------------------------
# L_OPD: full-vocabulary distillation towards the privileged self-teacher (materialised)
# --------------------------------------------------------------------------------------------


def _upcast(x: Tensor) -> Tensor:
    """Half-precision logits to float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def full_vocab_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    teacher_temperature: float | None = None,
    dtype: DistillDtype = "float32",
) -> Tensor:
    """Per-position KL(p_t || SG[q_t]) [B, T] over the whole vocabulary (eq. 3.2).

    p = softmax(student_logits / temperature), q = softmax(teacher_logits / teacher_temperature)
    (``teacher_temperature`` None: ``temperature``; the authors divide only the student's logits, i.e.
    ``teacher_temperature=1``). The teacher is detached, so only the student gets a gradient. Computed in
    float32 for half-precision inputs; ``dtype`` bfloat16: as the authors' code, the logits in bf16, both
    log-softmaxes, p, the products and the sum in bf16 (the result returned in float32). Holds several
    [B, T, V] tensors: the reference for ``fused_full_vocab_kl``.
    """
    t_temp = temperature if teacher_temperature is None else teacher_temperature
    if dtype == "bfloat16":
        logp = F.log_softmax(student_logits.to(torch.bfloat16) / temperature, dim=-1)  # [B, T, V] bf16
        logq = F.log_softmax(teacher_logits.detach().to(torch.bfloat16) / t_temp, dim=-1)  # [B, T, V] bf16
        return (logp.exp() * (logp - logq)).sum(dim=-1).float()  # [B, T]
    logp = F.log_softmax(_upcast(student_logits) / temperature, dim=-1)  # [B, T, V]
    logq = F.log_softmax(_upcast(teacher_logits.detach()) / t_temp, dim=-1)  # [B, T, V]
    return (logp.exp() * (logp - logq)).sum(dim=-1)  # [B, T]


def clamp_kl(kl: Tensor, max_value: float | None) -> Tensor:
    """min(KL_t, max_value) [B, T] (the authors clamp at 20): a clamped token contributes the constant
    and no gradient. None: unchanged."""
    return kl if max_value is None else kl.clamp(max=max_value)  # [B, T]


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log pi(y_t) [B, T] of the sampled ``tokens`` [B, T] under ``logits`` [B, T, V] (float32)."""
    logp = F.log_softmax(_upcast(logits) / temperature, dim=-1)  # [B, T, V]
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)  # [B, T]


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of the next-token distribution [B, T]: a metric, and with gradient the entropy bonus."""
    logp = F.log_softmax(_upcast(logits) / temperature, dim=-1)  # [B, T, V]
    return -(logp.exp() * logp).sum(dim=-1)  # [B, T]


# --------------------------------------------------------------------------------------------
# Baselines' terms
# --------------------------------------------------------------------------------------------


def rlsd_advantages(
    advantages: Tensor,
    teacher_logp: Tensor,
    old_logp: Tensor,
    eps_w: float = 0.2,
    lam: float = 1.0,
) -> Tensor:
    """RLSD's evidence-weighted per-token advantages [B, T] (arXiv 2604.03128).

    delta = SG[log q(y_t) - log p_old(y_t)], u = clip(exp(sign(A) * delta), 1 - eps_w, 1 + eps_w),
    A_t = A * ((1 - lam) + lam * u). ``advantages`` [B], log-probs [B, T].
    """
    adv = advantages[:, None]  # [B, 1]
    delta = (teacher_logp - old_logp).detach()  # [B, T]
    u = torch.exp(torch.sign(adv) * delta).clamp(1.0 - eps_w, 1.0 + eps_w)  # [B, T]
    return adv * ((1.0 - lam) + lam * u)  # [B, T]


def rlsd_lambda_at(step: int, lam: float, decay_steps: int) -> float:
    """RLSD's mixing weight at RL step ``step`` (counted from 1): lam * max(0, 1 - step / decay_steps),
    reaching 0 at step = decay_steps (the authors' schedule); ``decay_steps`` 0: constant lam."""
    if decay_steps <= 0:
        return float(lam)
    return float(lam * max(0.0, 1.0 - step / decay_steps))


def opsd_token_weights(teacher_logp: Tensor, old_logp: Tensor, advantages: Tensor, max_weight: float = 20.0) -> Tensor:
    """OPSD's per-token weights [B, T] (arXiv 2601.18734): clamp(log q(y_t) - log p_old(y_t), 0, max)
    on sequences with A > 0 and zero elsewhere; used as the advantage inside the PPO ratio clip."""
    w = (teacher_logp - old_logp).detach().clamp(0.0, max_weight)  # [B, T]
    return w * (advantages > 0).float()[:, None]  # [B, T]


def tis_weights(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """Truncated importance weights [B, T] min(pi_old(y_t) / pi_rollout(y_t), cap) on response tokens,
    correcting for a rollout engine (vLLM) whose probabilities differ from the trainer's. No gradient."""
    behaviour = (old_logp - rollout_logp).detach()  # [B, T]
    return torch.exp(behaviour.clamp(max=20.0)).clamp(max=cap) * mask.float()  # [B, T]


def gate_mask(advantages: Tensor, mask: Tensor, enabled: bool = True) -> Tensor:
    """SDPG's A > 0 gate (sec. 3.3) as a token mask [B, T]; the plain ``mask`` when disabled."""
    if not enabled:
        return mask.float()  # [B, T]
    return mask.float() * (advantages > 0).float()[:, None]  # [B, T]


# --------------------------------------------------------------------------------------------
# Advantage estimators (``algo.advantage``)
# --------------------------------------------------------------------------------------------


def _rlsd_estimator(x: AdvantageInputs) -> tuple[Tensor, dict[str, float]]:
    assert x.teacher_logp is not None
    s = x.settings
    lam = rlsd_lambda_at(x.step, s["rlsd_lambda"], s["rlsd_lambda_decay_steps"])  # k from 1: 0 at k = decay
    return rlsd_advantages(x.advantages, x.teacher_logp, x.behaviour_logp, s["rlsd_eps_w"], lam), {"rlsd_lambda": lam}


def _opsd_estimator(x: AdvantageInputs) -> tuple[Tensor, dict[str, float]]:
    assert x.teacher_logp is not None
    return opsd_token_weights(x.teacher_logp, x.behaviour_logp, x.advantages, x.settings["opsd_max_weight"]), {}
