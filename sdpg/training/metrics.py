"""Every metric name the trainer logs, declared once, in the paper's vocabulary.

``train/*`` and ``timing/*`` names are listed here with what they mean; the trainer logs no other.
Evaluation names are built and parsed only here:

    eval/<bench>/mean@<k>             pass@1 averaged over k samples per problem (the paper's mean@32)
    eval/<bench>/<scorer>/mean@<k>    the same samples under another scorer (``eval.extra_scorers``)
    eval/<bench>/pass@<k>             unbiased pass@k (``eval.pass_k``)
    eval/<bench>/greedy               greedy accuracy (``eval.greedy``)
    eval/<bench>/response_length      mean sampled response length

The trainer, the evaluator, the sinks, the sweep's objective check and the reports read this module;
a piece that logs a new name declares it with ``declare``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, cast

# The statistics of ``sdpg.objective.sdpg_loss`` the trainer logs as ``train/<stat>`` (first epoch, exact
# whatever the micro-batching); ADDITIVE ones are loss terms summed over micro-batches.
LOSS_STATS: tuple[str, ...] = (
    "pg_loss",
    "pg_clipfrac",
    "pg_clipfrac_lower",
    "ppo_kl",
    "opd_loss",
    "opd_kl",
    "ref_kl",
    "ref_kl_surrogate",
)
ADDITIVE_STATS: tuple[str, ...] = ("pg_loss", "opd_loss")

TRAIN: dict[str, str] = {
    "train/reward": "mean sequence reward (with the KL in the reward: score - coef * sum_t k_t)",
    "train/score": "mean verifier score before the reward's KL penalty (only with algo.reward_kl_coef)",
    "train/reward_kl": "mean per-sequence KL penalty sum_t k_t in the reward (only with algo.reward_kl_coef)",
    "train/accuracy": "share of sampled responses judged correct",
    "train/response_length": "mean sampled response length in tokens",
    "train/truncated": "share of responses cut at rollout.max_new_tokens",
    "train/solve_all": "share of groups whose G responses are all correct",
    "train/solve_none": "share of groups with no correct response",
    "train/kept_fraction": "share of sequences in informative groups (DAPO's dynamic sampling)",
    "train/skipped_update": "1 when every group was uninformative and no update ran",
    "train/lr": "learning rate of the step's first update",
    "train/nonfinite_skipped": "optimizer steps of this RL step skipped for a non-finite loss or gradient",
    "train/grad_norm": "global gradient norm before clipping",
    "train/entropy": "mean token entropy of pi_theta on the sampled responses",
    "train/beta": "scheduled distillation coefficient beta(k) (eq. 3.4)",
    "train/gate_fraction": "share of sequences with A > 0, the OPD+ gate (1 without the gate)",
    "train/rlsd_lambda": "RLSD's mixing weight lambda(k)",
    "train/rollout_logprob_diff": "mean |log pi_old - log pi_engine| on response tokens (vLLM)",
    "train/rollout_is_ratio": "mean pi_old / pi_engine on response tokens (vLLM)",
    "train/pg_loss": "L_out",
    "train/pg_clipfrac": "share of tokens whose PPO ratio is clipped",
    "train/pg_clipfrac_lower": "share of tokens under the dual clip (A < 0)",
    "train/ppo_kl": "mean log pi_old - log pi_theta",
    "train/opd_loss": "L_OPD+",
    "train/opd_kl": "mean (clamped) KL(p || q) over the distilled tokens",
    "train/ref_kl": "k3 estimate of KL(pi_theta || pi_ref), whatever algo.kl_mode",
    "train/ref_kl_surrogate": "mean L_K surrogate of algo.kl_mode",
}

TIMING: dict[str, str] = {
    "timing/step": "seconds of the whole RL step",
    "timing/rollout": "seconds generating",
    "timing/reward": "seconds scoring",
    "timing/logprobs": "seconds of the no-gradient log-prob passes",
    "timing/update": "seconds of the update",
    "timing/weight_sync": "seconds copying the weights into the rollout engine (vLLM)",
    "timing/eval": "seconds evaluating",
}

EvalKind = Literal["mean", "pass", "greedy", "response_length"]


@dataclass(frozen=True)
class EvalMetric:
    """One parsed evaluation metric name."""

    bench: str
    kind: EvalKind
    k: int | None = None  # samples (mean) or k (pass); None for greedy and response_length
    scorer: str | None = None  # another scorer's mean@k; None: ``reward.verifier``'s

    @property
    def name(self) -> str:
        if self.kind == "mean":
            assert self.k is not None
            return mean_at(self.bench, self.k, self.scorer)
        if self.kind == "pass":
            return f"eval/{self.bench}/pass@{self.k}"
        return f"eval/{self.bench}/{self.kind}"


def mean_at(bench: str, k: int, scorer: str | None = None) -> str:
    """``eval/<bench>/mean@<k>``, or ``eval/<bench>/<scorer>/mean@<k>`` for another scorer."""
    return f"eval/{bench}/{scorer}/mean@{k}" if scorer else f"eval/{bench}/mean@{k}"


def pass_at(bench: str, k: int) -> str:
    return f"eval/{bench}/pass@{k}"


def greedy(bench: str) -> str:
    return f"eval/{bench}/greedy"


def response_length(bench: str) -> str:
    return f"eval/{bench}/response_length"


_EVAL = re.compile(r"^eval/([^/@]+)/(?:([^/@]+)/)?(?:(mean|pass)@([1-9][0-9]*)|(greedy|response_length))$")


def parse_eval(name: str) -> EvalMetric | None:
    """The parts of an evaluation metric name; None when ``name`` is not one."""
    m = _EVAL.match(name)
    if m is None:
        return None
    bench, scorer, at_kind, k, plain = m.groups()
    if plain is not None:
        return None if scorer else EvalMetric(bench, cast(EvalKind, plain))
    if at_kind == "pass" and scorer:
        return None
    return EvalMetric(bench, cast(EvalKind, at_kind), int(k), scorer)


def is_mean_at(name: str) -> bool:
    """Whether ``name`` is a mean@k (of any scorer)."""
    parsed = parse_eval(name)
    return parsed is not None and parsed.kind == "mean"


def with_samples(name: str, k: int) -> str:
    """A mean@k name with another k (``mean@32`` logged as ``mean@2`` by a small rehearsal); others unchanged."""
    parsed = parse_eval(name)
    if parsed is None or parsed.kind != "mean":
        return name
    return mean_at(parsed.bench, k, parsed.scorer)


def eval_names(
    benches: Iterable[str], n_samples: int, pass_k: Iterable[int] = (), greedy_on: bool = False, scorers: Iterable[str] = ()
) -> list[str]:
    """Every evaluation name a config logs: per benchmark its mean@k first, then the other scorers' mean@k,
    response length, pass@k and greedy."""
    out: list[str] = []
    for b in benches:
        out.append(mean_at(b, n_samples))
        out += [mean_at(b, n_samples, s) for s in scorers]
        out.append(response_length(b))
        out += [pass_at(b, k) for k in pass_k]
        if greedy_on:
            out.append(greedy(b))
    return out


def declared() -> set[str]:
    """Every declared ``train/*`` and ``timing/*`` name."""
    return set(TRAIN) | set(TIMING)


def is_declared(name: str) -> bool:
    """A declared train/timing name or a well-formed evaluation name."""
    return name in TRAIN or name in TIMING or parse_eval(name) is not None


def declare(name: str, meaning: str) -> None:
    """Declare a ``train/*`` or ``timing/*`` name that a new piece logs (e.g. an advantage estimator's metric)."""
    table = TRAIN if name.startswith("train/") else TIMING if name.startswith("timing/") else None
    if table is None or not re.fullmatch(r"(train|timing)/[A-Za-z0-9_]+", name):
        raise ValueError(f"metric name {name!r}: expected train/<name> or timing/<name>")
    table[name] = meaning
