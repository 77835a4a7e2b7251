"""The full SDPG objective L = L_out + beta(k) * L_OPD+ + alpha * L_K (eq. 3.5), plus an optional
entropy bonus (OPSD's script) and the per-token KL clamp of L_OPD+ (the authors' 20).

Baselines are settings of the same function: GRPO/DAPO/Dr.GRPO (beta = 0, alpha and kl_mode
k3 or 0), RLSD (per-token advantages from ``rlsd_advantages``), OPSD (per-token weights from
``opsd_token_weights``), OPCD (pg_coef = 0, gate off: pure full-vocabulary self-distillation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from sdpg.objective.fused import fused_weighted_full_vocab_kl
from sdpg.objective.terms import (
    LossAggMode,
    PolicyLossMode,
    RefKLMode,
    agg_weights,
    clamp_kl,
    full_vocab_kl,
    gate_mask,
    masked_mean,
    policy_loss,
    ref_kl,
)

OPDNorm = Literal["all", "gated"]


@dataclass(frozen=True)
class FusedKLInputs:
    """What the fused distillation term needs: last hidden states of the student (on x, y) and of
    the teacher (on c, x, y) at the response positions, and the shared output head."""

    student_hidden: Tensor  # [B, T, H], with gradient
    teacher_hidden: Tensor  # [B, T, H], no gradient
    lm_head_weight: Tensor  # [V, H]
    lm_head_bias: Tensor | None = None  # [V]
    temperature: float = 1.0
    chunk_size: int | None = None
    teacher_temperature: float | None = None  # None: ``temperature``; 1.0: only the student's logits divided


def opd_weights(token_weights: Tensor, gate: Tensor, opd_norm: OPDNorm, loss_agg_mode: LossAggMode) -> Tensor:
    """Per-token weights [B, T] of L_OPD+ when the caller gives none: the gated tokens under L_out's
    aggregation weights (``all``) or aggregated over the gated tokens alone (``gated``)."""
    if opd_norm == "all":
        return token_weights * gate  # [B, T]
    return agg_weights(gate, loss_agg_mode)  # [B, T]


def opd_term(opd: Tensor | FusedKLInputs, opd_w: Tensor, opd_kl_clamp: float | None) -> tuple[Tensor, Tensor]:
    """L_OPD+ = sum_t w_t min(KL_t, clamp) [] and the (clamped) per-token KL [B, T], from a materialised KL
    [B, T] or from hidden states through the fused kernel (``FusedKLInputs``); ``opd_w`` [B, T] are the
    term's aggregation weights. A clamped token counts as the constant clamp and gets no gradient."""
    if isinstance(opd, FusedKLInputs) and opd.teacher_temperature not in (None, opd.temperature):
        # the fused kernel divides both sides by one temperature: materialise the logits instead
        head = (opd.lm_head_weight, opd.lm_head_bias)
        opd = full_vocab_kl(
            torch.nn.functional.linear(opd.student_hidden, *head),
            torch.nn.functional.linear(opd.teacher_hidden, *head),
            opd.temperature,
            opd.teacher_temperature,
        )  # [B, T]
    if isinstance(opd, FusedKLInputs):
        opd_loss, kl_tok = fused_weighted_full_vocab_kl(
            opd.student_hidden,
            opd.teacher_hidden,
            opd.lm_head_weight,
            opd_w,
            lm_head_bias=opd.lm_head_bias,
            temperature=opd.temperature,
            chunk_size=opd.chunk_size,
        )  # [], [B, T]
        over = (kl_tok > opd_kl_clamp) & (opd_w != 0) if opd_kl_clamp is not None else None  # [B, T]
        if opd_kl_clamp is not None and over is not None and bool(over.any()):
            # take the clamped tokens' terms (value and gradient) back out; they count as the constant clamp
            w_over = opd_w * over.float()  # [B, T]
            over_loss, _ = fused_weighted_full_vocab_kl(
                opd.student_hidden,
                opd.teacher_hidden,
                opd.lm_head_weight,
                w_over,
                lm_head_bias=opd.lm_head_bias,
                temperature=opd.temperature,
                chunk_size=opd.chunk_size,
            )  # []
            opd_loss = opd_loss - over_loss + (w_over * opd_kl_clamp).sum()  # []
            kl_tok = clamp_kl(kl_tok, opd_kl_clamp)  # [B, T]
    else:
        kl_tok = clamp_kl(opd, opd_kl_clamp)  # [B, T]
        opd_loss = (kl_tok * opd_w).sum()  # []
    return opd_loss, kl_tok


def sdpg_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    token_advantages: Tensor | None = None,
    opd: Tensor | FusedKLInputs | None = None,
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
    alpha: float = 0.0,
    kl_mode: RefKLMode = "urkl",
    gate: bool = True,
    opd_norm: OPDNorm = "all",
    pg_coef: float = 1.0,
    policy_mode: PolicyLossMode = "dapo",
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    clip_c: float | None = 10.0,
    loss_agg_mode: LossAggMode = "token-mean",
    token_weights: Tensor | None = None,
    opd_token_weights: Tensor | None = None,
    opd_kl_clamp: float | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    entropy_token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SDPG loss on one (micro-)batch and its statistics.

    Args:
        logp, old_logp: log pi_theta(y_t) and log pi_old(y_t) of the sampled tokens [B, T].
        advantages: sequence advantages [B]; also decide the A > 0 gate.
        mask: response mask [B, T].
        token_advantages: per-token advantages [B, T] for L_out (RLSD, OPSD); default ``advantages``.
        opd: the distillation term, either per-token KL(p || SG q) [B, T] (from ``full_vocab_kl`` or
            ``fused_full_vocab_kl``) or ``FusedKLInputs`` for the memory-efficient path. None: off.
        ref_logp: log pi_ref(y_t) [B, T] of the frozen reference; needed when alpha > 0.
        beta: the already scheduled beta(k) (see ``beta_at``).
        alpha, kl_mode: coefficient and surrogate of L_K (``ref_kl``).
        gate: restrict L_OPD to sequences with A > 0 (SDPG's "+"); False distils every sequence.
        opd_norm: "all" normalises L_OPD like L_out (gated tokens / all tokens under token-mean);
            "gated" normalises over the gated tokens only.
        pg_coef: weight of L_out (0 for OPCD).
        loss_agg_mode: token-mean (default), seq-mean-token-sum or seq-mean-token-mean.
        token_weights, opd_token_weights: aggregation weights [B, T] of this micro-batch computed over
            the whole (mini)batch it belongs to, so that micro-batching leaves the loss unchanged;
            default: computed from ``mask`` as if this were the whole batch.
        opd_kl_clamp: per-token KL of L_OPD clamped at this value (the authors: 20); clamped tokens
            add a constant and no gradient. None: no clamp.
        entropy, entropy_coef: per-token entropy of pi_theta [B, T] with gradient and the bonus'
            coefficient: ``- entropy_coef * sum_t entropy_t * entropy_token_weights_t`` joins the loss.
        entropy_token_weights: its aggregation weights [B, T]; default over all response tokens of ``mask``.

    Returns (loss [], stats) with pg_loss, pg_clipfrac, pg_clipfrac_lower, ppo_kl, opd_kl (mean
    over gated tokens) and opd_tokens (their number), opd_loss, gate_fraction (share of sequences with A > 0), beta, ref_kl
    (k3 estimate of KL(pi_theta || pi_ref), whatever kl_mode) and ref_kl_surrogate.
    """
    m = mask.float()  # [B, T]
    w = agg_weights(m, loss_agg_mode) if token_weights is None else token_weights  # [B, T]
    adv_t = advantages if token_advantages is None else token_advantages  # [B] or [B, T]
    zero = logp.new_zeros(())
    stats: dict[str, Tensor] = {}

    # L_out
    pg_tok, pg_stats = policy_loss(logp, old_logp, adv_t, m, clip_low, clip_high, clip_c, policy_mode)  # [B, T]
    pg = (pg_tok * w).sum()  # []
    loss = pg_coef * pg if pg_coef != 0.0 else zero
    stats.update(pg_loss=pg.detach(), **pg_stats)

    # L_OPD+
    g = gate_mask(advantages, m, gate)  # [B, T]
    stats["gate_fraction"] = (advantages > 0).float().mean() if gate else logp.new_ones(())
    stats["beta"] = torch.tensor(float(beta))
    if opd is not None:
        opd_w = opd_weights(w, g, opd_norm, loss_agg_mode) if opd_token_weights is None else opd_token_weights  # [B, T]
        opd_loss, kl_tok = opd_term(opd, opd_w, opd_kl_clamp)  # [], [B, T]
        loss = loss + beta * opd_loss
        distilled = g if opd_token_weights is None else (opd_w > 0).float()  # [B, T] positions in the term
        stats["opd_loss"] = opd_loss.detach()
        stats["opd_kl"] = masked_mean(kl_tok.detach(), distilled)
        stats["opd_tokens"] = distilled.sum().detach()
    else:
        stats["opd_loss"] = zero
        stats["opd_kl"] = zero
        stats["opd_tokens"] = zero

    # entropy bonus
    if entropy is not None:
        ew = agg_weights(m, loss_agg_mode) if entropy_token_weights is None else entropy_token_weights  # [B, T]
        ent = (entropy * ew).sum()  # []
        if entropy_coef != 0.0:
            loss = loss - entropy_coef * ent
        stats["entropy_bonus"] = ent.detach()
    elif entropy_coef != 0.0:
        raise ValueError("entropy_coef > 0 needs the per-token entropy (with gradient)")

    # L_K
    if ref_logp is not None:
        surrogate = ref_kl(logp, ref_logp, kl_mode)  # [B, T]
        if alpha != 0.0:
            loss = loss + alpha * (surrogate * w).sum()
        stats["ref_kl_surrogate"] = masked_mean(surrogate.detach(), m)
        stats["ref_kl"] = masked_mean(ref_kl(logp.detach(), ref_logp, "k3"), m)
    elif alpha != 0.0:
        raise ValueError("alpha > 0 needs ref_logp (the frozen reference's log-probabilities)")
    else:
        stats["ref_kl_surrogate"] = zero
        stats["ref_kl"] = zero
    return loss, stats
