"""The SDPG objective as pure tensor functions; see docs/objective.md for the equation map.

Its names are read from their modules on first use (the registries and the config's choice lists need no torch);
a type checker sees them imported here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdpg.objective.fused import (
        auto_chunk_size,
        fused_full_vocab_kl,
        fused_weighted_full_vocab_kl,
    )
    from sdpg.objective.fused_step import (
        STEP_LOSS_IMPLS,
        StepLossSettings,
        TokenOutputs,
        chunk_sizes,
        effective_advantages,
        hidden_token_logprobs,
        step_loss,
    )
    from sdpg.objective.loss import FusedKLInputs, opd_weights, sdpg_loss
    from sdpg.objective.registry import (
        ADVANTAGE_ESTIMATORS,
        POLICY_LOSSES,
        REF_KL_MODES,
        AdvantageEstimator,
        AdvantageInputs,
        register_advantage,
        register_policy_loss,
        register_ref_kl,
    )
    from sdpg.objective.terms import (
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
        rlsd_lambda_at,
        tis_weights,
        token_entropy,
        token_logprobs,
    )

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AdvantageEstimator",
    "AdvantageInputs",
    "FusedKLInputs",
    "POLICY_LOSSES",
    "REF_KL_MODES",
    "STEP_LOSS_IMPLS",
    "StepLossSettings",
    "TokenOutputs",
    "agg_weights",
    "aggregate",
    "auto_chunk_size",
    "beta_at",
    "clamp_kl",
    "effective_advantages",
    "full_vocab_kl",
    "fused_full_vocab_kl",
    "fused_weighted_full_vocab_kl",
    "gate_mask",
    "group_advantages",
    "chunk_sizes",
    "hidden_token_logprobs",
    "kl_penalised_rewards",
    "masked_mean",
    "opd_weights",
    "opsd_token_weights",
    "policy_loss",
    "register_advantage",
    "register_policy_loss",
    "register_ref_kl",
    "ref_kl",
    "reward_kl_penalty",
    "rlsd_advantages",
    "rlsd_lambda_at",
    "sdpg_loss",
    "step_loss",
    "tis_weights",
    "token_entropy",
    "token_logprobs",
]

_MODULES = ("terms", "loss", "fused", "fused_step", "registry")


def __getattr__(name: str) -> Any:
    if name in __all__:
        for module in _MODULES:
            found = getattr(importlib.import_module(f"sdpg.objective.{module}"), name, None)
            if found is not None:
                globals()[name] = found
                return found
    raise AttributeError(f"module 'sdpg.objective' has no attribute {name!r}")
