"""The SDPG objective as pure tensor functions; see docs/objective.md for the equation map."""

from sdpg.objective.fused import auto_chunk_size, fused_full_vocab_kl, fused_weighted_full_vocab_kl
from sdpg.objective.loss import FusedKLInputs, sdpg_loss
from sdpg.objective.terms import (
    REF_KL_MODES,
    agg_weights,
    aggregate,
    beta_at,
    clamp_kl,
    full_vocab_kl,
    gate_mask,
    group_advantages,
    kl_penalised_rewards,
    masked_mean,
    opsd_token_weights,
    policy_loss,
    ref_kl,
    reward_kl_penalty,
    rlsd_advantages,
    token_entropy,
    token_logprobs,
)

__all__ = [
    "REF_KL_MODES", "FusedKLInputs", "agg_weights", "aggregate", "auto_chunk_size", "beta_at", "clamp_kl",
    "full_vocab_kl", "fused_full_vocab_kl", "fused_weighted_full_vocab_kl", "gate_mask",
    "group_advantages", "kl_penalised_rewards", "masked_mean", "opsd_token_weights", "policy_loss", "ref_kl",
    "reward_kl_penalty", "rlsd_advantages", "sdpg_loss", "token_entropy", "token_logprobs",
]
