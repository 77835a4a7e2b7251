"""What the privileged teacher adds before any RL: a task's "information" figure (issue 15).

On the student's own *correct* samples, compare, position by position, the student's next-token
distribution p (student prompt) with the teacher's q (the same weights, the teacher prompt with the
configured privileged context):

* ``KL(p || q)`` over the vocabulary at every response position (the distillation term's own
  divergence, :func:`sdpg.objective.terms.full_vocab_kl`);
* at the positions where the student is *uncertain* (entropy of p above a threshold, in nats),
  whether the teacher puts more mass on the sampled token than the student (``q(y_t) > p(y_t)``) and
  by how much (``q(y_t) - p(y_t)`` in probability, ``log q(y_t) - log p(y_t)`` in nats).

On correct samples the sampled tokens are the ones that worked. A teacher that carries information
about correctness raises them where the student hesitates; a teacher that only prefers another valid
path (style) lowers them as often as it raises them; a teacher that only echoes the student adds no
KL at all. :func:`token_information` is the pure computation (hand-checked in tests/test_information.py);
:func:`measure_information` samples the student and runs both forwards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from sdpg.objective.terms import full_vocab_kl, token_entropy, token_logprobs

DEFAULT_ENTROPY_THRESHOLD = 0.5
"""Nats: a student position counts as uncertain above this entropy (a uniform choice between two
tokens has 0.69; a position whose top token has 0.9 of the mass has about 0.4 or less)."""


@dataclass
class InformationStats:
    """The information figure's numbers for one task (means over response tokens of correct samples)."""

    samples: int  # sampled responses
    correct: int  # of them verified correct: the ones measured
    tokens: int  # response tokens of the correct samples (stop token included)
    kl_mean: float  # mean KL(p || q) per token, nats
    kl_sum_per_sample: float  # mean over correct samples of the summed KL, nats
    threshold: float  # entropy threshold of "uncertain", nats
    uncertain: int  # uncertain tokens (H(p) > threshold)
    uncertain_fraction: float  # uncertain / tokens
    kl_share_uncertain: float  # share of the total KL at the uncertain tokens
    teacher_higher_fraction: float  # at uncertain tokens: share with q(y_t) > p(y_t)
    prob_gain_mean: float  # at uncertain tokens: mean q(y_t) - p(y_t)
    logratio_mean: float  # at uncertain tokens: mean log q(y_t) - log p(y_t), nats
    student_p_mean: float  # at uncertain tokens: mean p(y_t)
    teacher_q_mean: float  # at uncertain tokens: mean q(y_t)
    kl_by_position: list[float]  # mean KL at response position t over the correct samples that reach t
    tokens_by_position: list[int]  # correct samples that reach position t
    reference_fraction: float = float("nan")  # correct samples whose response is the reference solution itself
    teacher_higher_fraction_reference: float = float("nan")  # q(y)>p(y) at uncertain tokens of those samples
    teacher_higher_fraction_other: float = float("nan")  # ... and of the other correct samples
    uncertain_other_fraction: float = float("nan")  # share of the uncertain tokens that lie in the other samples

    def to_dict(self) -> dict:
        return asdict(self)


def token_information(
    student_logits: Tensor, teacher_logits: Tensor, tokens: Tensor, mask: Tensor, threshold: float = DEFAULT_ENTROPY_THRESHOLD
) -> dict[str, Tensor]:
    """Per-token quantities of the figure for a batch of (correct) samples, all [B, T] and zero off ``mask``.

    ``student_logits`` / ``teacher_logits`` [B, T, V]: next-token logits at the response positions under
    the student and the teacher prompt; ``tokens`` [B, T] the sampled tokens; ``mask`` [B, T] 1.0 on
    response tokens. Temperature 1 (the distributions the samples came from)."""
    m = mask.float()  # [B, T]
    kl = full_vocab_kl(student_logits, teacher_logits) * m  # [B, T] KL(p || q)
    entropy = token_entropy(student_logits) * m  # [B, T] H(p)
    logp = token_logprobs(student_logits, tokens) * m  # [B, T] log p(y_t)
    logq = token_logprobs(teacher_logits, tokens) * m  # [B, T] log q(y_t)
    uncertain = (entropy > threshold).float() * m  # [B, T]
    return {"kl": kl, "entropy": entropy, "logp": logp, "logq": logq, "uncertain": uncertain, "mask": m}


def summarise(per_token: dict[str, Tensor], samples: int, threshold: float, reference: Tensor | None = None) -> InformationStats:
    """The figure's numbers from :func:`token_information`'s tensors (concatenated over batches).
    ``reference`` [B] bool: which samples wrote the reference solution itself (their working, not only
    their answer, is the one the teacher was shown); splits the q > p share by it."""
    m, u = per_token["mask"], per_token["uncertain"].bool()  # [B, T], [B, T]
    kl, logp, logq = per_token["kl"], per_token["logp"], per_token["logq"]  # [B, T] each
    n_tok, n_unc = int(m.sum()), int(u.sum())
    p_u, q_u = logp[u].exp(), logq[u].exp()  # [n_unc] each
    per_pos = m.sum(0)  # [T]
    kl_pos = kl.sum(0) / per_pos.clamp(min=1)  # [T]
    last = int((per_pos > 0).nonzero().max()) + 1 if n_tok else 0

    def mean(x: Tensor) -> float:
        return float(x.float().mean()) if x.numel() else float("nan")

    split = {}
    if reference is not None:
        ref = reference.bool()[:, None].expand_as(u)  # [B, T]
        higher = logq > logp  # [B, T]
        split = {
            "reference_fraction": mean(reference.bool()),
            "teacher_higher_fraction_reference": mean(higher[u & ref]),
            "teacher_higher_fraction_other": mean(higher[u & ~ref]),
            "uncertain_other_fraction": int((u & ~ref).sum()) / max(n_unc, 1),
        }
    return InformationStats(
        samples=samples,
        correct=int(m.shape[0]),
        tokens=n_tok,
        kl_mean=float(kl.sum() / max(n_tok, 1)),
        kl_sum_per_sample=float(kl.sum() / max(m.shape[0], 1)),
        threshold=threshold,
        uncertain=n_unc,
        uncertain_fraction=n_unc / max(n_tok, 1),
        kl_share_uncertain=float(kl[u].sum() / kl.sum().clamp(min=1e-12)),
        teacher_higher_fraction=mean(q_u > p_u),
        prob_gain_mean=mean(q_u - p_u),
        logratio_mean=mean(logq[u] - logp[u]),
        student_p_mean=mean(p_u),
        teacher_q_mean=mean(q_u),
        kl_by_position=[float(x) for x in kl_pos[:last]],
        tokens_by_position=[int(x) for x in per_pos[:last]],
        **split,
    )


@torch.no_grad()
def measure_information(
    cfg,
    n_problems: int = 128,
    n_samples: int = 8,
    threshold: float = DEFAULT_ENTROPY_THRESHOLD,
    source: str | None = None,
    seed: int = 0,
    batch_size: int = 256,
    log=print,
) -> tuple[InformationStats, dict[str, float], dict[str, Tensor]]:
    """Sample ``n_samples`` responses per problem (temperature ``rollout.temperature``) from the base model
    of ``cfg`` on the first ``n_problems`` rows of ``source`` (default: the first ``data.eval`` set), keep
    the correct ones (``reward.verifier``), and measure them under the student and the teacher prompt
    (``data.context``). Returns the stats and the sampled pass@1 of the student and of the teacher prompt
    on the same problems (``{"student": ..., "teacher": ...}``), and the per-token tensors of
    :func:`token_information` [correct samples, T] (for histograms) with ``reference`` [correct samples]."""
    from sdpg.training.data import read_source, tokenize_prompts
    from sdpg.training.embedded import task_of_source
    from sdpg.training.model import load_policy, resolve_device, sampled_token_stats
    from sdpg.training.rewards import Verifier
    from sdpg.training.rollout import HFRollout, left_pad

    device = resolve_device(cfg.model.device)
    tokenizer, model = load_policy(cfg, device, log=log)
    model.eval()
    source = source or next(iter(cfg.data.eval.values()))
    rows = read_source(source, cfg.data, "test")[:n_problems]
    ids = tokenize_prompts(rows, cfg.data, tokenizer, f"source={source}")
    rows, student, teacher = ids.rows, ids.student, ids.teacher
    kind = cfg.reward.verifier if cfg.reward.verifier != "auto" else ("exact" if task_of_source(cfg.data.train) else "math")
    verifier = Verifier(kind)
    engine = HFRollout(model, tokenizer, batch_size=batch_size)
    seeds = [seed * 1_000_003 + i for i in range(len(rows))]
    answers = [r["answer"] for r in rows for _ in range(n_samples)]
    T = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens
    accuracy = {}
    for view, prompts in (("teacher", teacher), ("student", student)):
        ro = engine.generate(prompts, n_samples, temperature=cfg.rollout.temperature, max_new_tokens=T, seeds=seeds)
        ok = torch.tensor(verifier.correctness(tokenizer.batch_decode(ro.responses, skip_special_tokens=True), answers))  # [N]
        accuracy[view] = float(ok.mean())
    verifier.close()
    keep = ok.bool()  # the student's correct samples (the last view sampled)
    texts = tokenizer.batch_decode(ro.responses, skip_special_tokens=True)
    idx = [i for i in range(len(rows)) for _ in range(n_samples)]
    kept = [j for j in range(len(idx)) if keep[j]]
    reference = torch.tensor([texts[j].strip() == (rows[idx[j]].get("solution") or "").strip() for j in kept], dtype=torch.bool)
    parts: dict[str, list[Tensor]] = {}
    pad = tokenizer.pad_token_id
    for first in range(0, len(kept), batch_size):
        rows_b = kept[first : first + batch_size]
        tokens, mask = ro.responses[rows_b], ro.mask[rows_b]  # [b, T], [b, T]
        logits = {}
        for view, prompts in (("student", student), ("teacher", teacher)):
            ids, attn = left_pad([prompts[idx[j]] for j in rows_b], pad)  # [b, P]
            seq, seq_attn = torch.cat([ids, tokens], 1).to(device), torch.cat([attn, mask.long()], 1).to(device)  # [b, P+T]
            logits[view] = sampled_token_stats(
                model, seq, seq_attn, ids.shape[1], tokens.to(device), logprobs=False, keep_logits=True
            ).logits  # [b, T, V]
        per = token_information(logits["student"], logits["teacher"], tokens.to(device), mask.to(device), threshold)
        for k, v in per.items():
            parts.setdefault(k, []).append(v.cpu())
    T_all = max((x.shape[1] for x in parts.get("mask", [])), default=0)
    cat = {k: torch.cat([torch.nn.functional.pad(x, (0, T_all - x.shape[1])) for x in v]) for k, v in parts.items()}
    if not cat:
        z = torch.zeros(0, 0)
        cat = {k: z for k in ("kl", "entropy", "logp", "logq", "uncertain", "mask")}
    cat["reference"] = reference
    return summarise(cat, len(idx), threshold, reference), accuracy, cat
