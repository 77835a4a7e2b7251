"""Methods: named presets of the algorithm's settings (GRPO, DAPO, Dr.GRPO, SDPG, RLSD, OPSD, OPCD).

``algo.method`` picks one; its settings fill ``AlgoConfig`` first and any toggle written next to it wins.
A baseline that combines existing pieces (advantage estimator, policy loss, reference-KL mode from
``sdpg.objective.registry``) is one ``register_method`` call. The config's list of methods is this table.
"""

from __future__ import annotations

from typing import Any

DEFAULT_METHOD = "sdpg_urkl"
"""The method of a config that names none."""

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
        entropy_tokens="all",
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

RLVR_BASELINES: set[str] = {"grpo", "grpo_k3", "dapo", "dr_grpo"}
"""Methods that are RLVR baselines: a verifier reward only, no teacher and no distillation term (beta 0, an
advantage that needs no teacher). A report compares its variants against the first one named after one of
these (``sdpg-report --baseline`` overrides)."""

# Optimizer settings a method brings along, applied unless the config writes the key itself
# (OPSD's script trains at lr 5e-7, half the others' 1e-6).
OPTIM_PRESETS: dict[str, dict[str, Any]] = {"opsd": {"lr": 5e-7}}


def register_method(
    name: str,
    settings: dict[str, Any],
    optim: dict[str, Any] | None = None,
    *,
    replace: bool = False,
    rlvr_baseline: bool = False,
) -> None:
    """Add method ``name``: ``settings`` are AlgoConfig fields (unnamed ones keep their defaults), ``optim``
    optimizer settings it brings along (applied unless the config writes them); ``rlvr_baseline``: it is one of
    ``RLVR_BASELINES``."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a method needs a non-empty name, got {name!r}")
    if name in METHOD_PRESETS and not replace:
        raise ValueError(f"method {name!r} is already registered")
    METHOD_PRESETS[name] = dict(settings)
    if optim:
        OPTIM_PRESETS[name] = dict(optim)
    else:
        OPTIM_PRESETS.pop(name, None)
    if rlvr_baseline:
        RLVR_BASELINES.add(name)
    else:
        RLVR_BASELINES.discard(name)


def unregister_method(name: str) -> None:
    """Remove method ``name`` (tests that registered their own clean up with this)."""
    METHOD_PRESETS.pop(name, None)
    OPTIM_PRESETS.pop(name, None)
    RLVR_BASELINES.discard(name)
