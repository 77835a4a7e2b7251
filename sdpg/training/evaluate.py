"""Evaluation on the held-out benchmarks: mean@k, unbiased pass@k, greedy accuracy."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from sdpg.training import distributed as dist
from sdpg.training import metrics as names
from sdpg.training.config import TrainConfig
from sdpg.training.randomness import derived_seed
from sdpg.training.rewards import Verifier
from sdpg.training.rollout import RolloutEngine


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


@torch.no_grad()
def evaluate(
    rollout: RolloutEngine,
    tokenizer,
    verifier: Verifier,
    eval_sets: dict,
    cfg: TrainConfig,
    step: int = 0,
    rank: int = 0,
    world: int = 1,
    device: torch.device | str = "cpu",
    extra_scorers: dict[str, Verifier] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    chunk: int = 16,
) -> dict[str, float]:
    """mean@k, unbiased pass@k and greedy accuracy per benchmark. Problems are split across ranks and
    the per-problem results gathered; with ``rollout.seed_per_prompt`` each problem's samples are
    seeded, so the numbers do not depend on the number of ranks. ``extra_scorers`` (metric name ->
    scorer) score the same samples: ``eval/<bench>/<name>/mean@k`` beside the main scorer's.

    ``progress(benchmark, problems done, problems)``: called after every ``chunk`` problems, which are then
    sampled chunk by chunk; with ``rollout.seed_per_prompt`` that changes no number."""
    settings = cfg.eval
    max_new = settings.max_new_tokens or cfg.rollout.max_new_tokens
    metrics: dict[str, float] = {}
    for name, (rows, prompt_ids) in eval_sets.items():
        k = settings.n_samples
        mine = list(range(rank, len(rows), world))
        seeds = [derived_seed(cfg.run.seed, step, "eval", name, i) for i in mine] if cfg.rollout.seed_per_prompt else None
        parts = [mine] if progress is None else [mine[s : s + chunk] for s in range(0, len(mine), chunk)] or [[]]
        texts, length_parts, done = [], [], 0
        for part in parts:
            samples = rollout.generate(
                [prompt_ids[i] for i in part],
                k,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_new_tokens=max_new,
                seeds=seeds[done : done + len(part)] if seeds is not None else None,
            )
            texts += tokenizer.batch_decode(samples.responses, skip_special_tokens=True)
            length_parts.append(samples.mask.sum(-1))  # [n_part * k]
            done += len(part)
            if progress is not None:
                progress(name, done, len(mine))
        answers = [rows[i]["answer"] for i in mine for _ in range(k)]
        correct = torch.tensor(verifier.correctness(texts, answers), device=device).view(len(mine), k)  # [n_local, k]
        lengths = torch.cat(length_parts).to(device).view(len(mine), k)  # [n_local, k]
        correct, lengths = dist.all_gather_cat(correct), dist.all_gather_cat(lengths)  # [n, k]
        metrics[names.mean_at(name, k)] = float(correct.mean())
        for scorer_name, scorer in (extra_scorers or {}).items():
            other = torch.tensor(scorer.correctness(texts, answers), device=device).view(len(mine), k)  # [n_local, k]
            metrics[names.mean_at(name, k, scorer_name)] = float(dist.all_gather_cat(other).mean())
        metrics[names.response_length(name)] = float(lengths.float().mean())
        for kk in settings.pass_k:
            metrics[names.pass_at(name, kk)] = float(np.mean([pass_at_k(k, int(c), kk) for c in correct.sum(-1)]))
        if settings.greedy:
            greedy = rollout.generate([prompt_ids[i] for i in mine], 1, greedy=True, max_new_tokens=max_new)
            greedy_texts = tokenizer.batch_decode(greedy.responses, skip_special_tokens=True)
            ok = torch.tensor(verifier.correctness(greedy_texts, [rows[i]["answer"] for i in mine]), device=device)  # [n_local]
            metrics[names.greedy(name)] = float(dist.all_gather_cat(ok).mean())
    return metrics
