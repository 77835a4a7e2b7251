"""The SDPG objective as pure tensor functions; see docs/objective.md for the equation map."""

from sdpg.objective.fused import (
    auto_chunk_size,
    fused_full_vocab_kl,
    fused_weighted_full_vocab_kl,
)
from sdpg.objective.fused_step import (
    STEP_LOSS_IMPLS,
    StepLossSettings,
    TokenOutputs,
    effective_advantages,
    hidden_token_logprobs,
    step_loss,
)
from sdpg.objective.loss import FusedKLInputs, opd_weights, sdpg_loss
from sdpg.objective.terms import (
    REF_KL_MODES,
    agg_weights,
    aggregate,
    beta_at,
    full_vocab_kl,
    gate_mask,
    group_advantages,
    masked_mean,
    opsd_token_weights,
    policy_loss,
    ref_kl,
    rlsd_advantages,
    tis_weights,
    token_entropy,
    token_logprobs,
)

__all__ = [
    "REF_KL_MODES",
    "STEP_LOSS_IMPLS",
    "FusedKLInputs",
    "StepLossSettings",
    "TokenOutputs",
    "agg_weights",
    "aggregate",
    "auto_chunk_size",
    "beta_at",
    "effective_advantages",
    "full_vocab_kl",
    "fused_full_vocab_kl",
    "fused_weighted_full_vocab_kl",
    "gate_mask",
    "group_advantages",
    "hidden_token_logprobs",
    "masked_mean",
    "opd_weights",
    "opsd_token_weights",
    "policy_loss",
    "ref_kl",
    "rlsd_advantages",
    "sdpg_loss",
    "step_loss",
    "tis_weights",
    "token_entropy",
    "token_logprobs",
]
