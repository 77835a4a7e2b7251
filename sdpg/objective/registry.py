"""Named pieces of the objective, registered where they are defined (as verl's ``core_algos`` does).

Three registries, each a name -> implementation table that the config's choice lists are built from:

* ``REF_KL_MODES``: per-token reference-KL surrogates of L_K, ``fn(log_w) -> [B, T]`` with
  log_w = log pi_theta(y_t) - log pi_ref(y_t) already clamped (``algo.kl_mode``).
* ``POLICY_LOSSES``: per-token L_out, ``fn(logp, old_logp, adv, mask, clip_low, clip_high, clip_c) ->
  (loss [B, T], stats)`` with the stats ``pg_clipfrac``, ``pg_clipfrac_lower``, ``ppo_kl`` (``algo.policy_loss``).
* ``ADVANTAGE_ESTIMATORS``: what L_out uses as the advantage (``algo.advantage``): the group advantages
  alone, or per-token advantages computed from them and the privileged teacher's log-probs.

A new piece is a function and its registration; tests may register their own (the config accepts any
registered name at validation time). The built-in pieces are listed here, each by the function in
``sdpg.objective.terms`` that implements it, imported on first use (``Deferred``): a config is validated, and a
console script answers bad input, without importing torch (about 1.5 s of every command). This module imports
nothing else of the package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast

if TYPE_CHECKING:
    from torch import Tensor

    RefKLFn = Callable[[Tensor], Tensor]
    TokenAdvantageFn = Callable[["AdvantageInputs"], tuple[Tensor, dict[str, float]]]

DistillDtype = Literal["float32", "bfloat16"]
"""The dtype of the full-vocabulary KL's two log-softmaxes (``algo.distill_dtype``)."""


class PolicyLossFn(Protocol):
    def __call__(
        self,
        logp: Tensor,
        old_logp: Tensor,
        advantages: Tensor,
        mask: Tensor,
        clip_low: float,
        clip_high: float,
        clip_c: float | None,
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


@dataclass(frozen=True)
class AdvantageInputs:
    """What a per-token advantage estimator may read; no config, only tensors and numbers."""

    advantages: Tensor  # [N] group advantages
    teacher_logp: Tensor | None  # [N, T] log q(y_t | c, x), when the estimator needs the teacher
    behaviour_logp: Tensor  # [N, T] log pi_old(y_t)
    step: int  # RL step, counted from 1
    settings: Mapping[str, Any] = field(default_factory=dict)  # the algorithm's scalar settings by name


@dataclass(frozen=True)
class AdvantageEstimator:
    """An advantage for L_out. ``token_advantages`` None: the group advantages [N] themselves;
    otherwise a function returning per-token advantages [N, T] and scalar metrics (logged as ``train/<name>``,
    names declared in ``sdpg.training.metrics``)."""

    name: str
    needs_teacher: bool = False
    token_advantages: TokenAdvantageFn | None = None


class Deferred:
    """A built-in piece named by where it lives (``"module:function"``), imported on its first use."""

    def __init__(self, target: str):
        self.target = target
        self._fn: Callable[..., Any] | None = None

    def resolve(self) -> Callable[..., Any]:
        if self._fn is None:
            module, _, name = self.target.partition(":")
            self._fn = getattr(importlib.import_module(module), name)
        return self._fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Deferred({self.target!r})"


def _terms(name: str) -> Any:
    return Deferred(f"sdpg.objective.terms:{name}")


REF_KL_MODES: dict[str, RefKLFn] = {
    "urkl": _terms("_urkl"),  # 1/2 log^2 w
    "ufkl": _terms("_ufkl"),  # 1/w + log w
    "rkl": _terms("_rkl"),  # 1/2 (log w + 1)^2
    "fkl": _terms("_fkl"),  # 1/w
    "k1": _terms("_k1"),
    "k2": _terms("_k2"),
    "k3": _terms("_k3"),
}
POLICY_LOSSES: dict[str, PolicyLossFn] = {"dapo": _terms("dapo_loss"), "reinforce": _terms("reinforce_loss")}
ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "group": AdvantageEstimator("group"),
    "rlsd": AdvantageEstimator("rlsd", needs_teacher=True, token_advantages=_terms("_rlsd_estimator")),
    "opsd": AdvantageEstimator("opsd", needs_teacher=True, token_advantages=_terms("_opsd_estimator")),
}

F = TypeVar("F")


def _add(table: dict[str, Any], kind: str, name: str, value: Any, replace: bool) -> None:
    if not name or not isinstance(name, str):
        raise ValueError(f"a {kind} needs a non-empty name, got {name!r}")
    if name in table and not replace:
        raise ValueError(f"{kind} {name!r} is already registered")
    table[name] = value


def register_ref_kl(name: str, *, replace: bool = False) -> Callable[[F], F]:
    """Decorator: register ``fn(log_w [B, T]) -> [B, T]`` as reference-KL mode ``name``."""

    def deco(fn: F) -> F:
        _add(REF_KL_MODES, "reference-KL mode", name, fn, replace)
        return fn

    return deco


def register_policy_loss(name: str, *, replace: bool = False) -> Callable[[F], F]:
    """Decorator: register a per-token policy loss (see ``PolicyLossFn``) as ``name``."""

    def deco(fn: F) -> F:
        _add(POLICY_LOSSES, "policy loss", name, fn, replace)
        return fn

    return deco


def register_advantage(estimator: AdvantageEstimator, *, replace: bool = False) -> AdvantageEstimator:
    """Register an advantage estimator under its name."""
    _add(ADVANTAGE_ESTIMATORS, "advantage estimator", estimator.name, estimator, replace)
    return estimator


def unregister(table: dict[str, Any], name: str) -> None:
    """Take ``name`` out of a registry (tests that registered their own pieces clean up with this)."""
    table.pop(name, None)


def lookup(table: Mapping[str, F], kind: str, name: str) -> F:
    """``table[name]``, or a ValueError naming the registered choices."""
    try:
        value = table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {', '.join(table)}") from None
    return cast(F, value.resolve()) if isinstance(value, Deferred) else value
