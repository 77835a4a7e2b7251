"""The authors' minibatch make-up and loss weighting (verl, as their scripts run it), as pure functions.

Three pieces, each a setting of the trainer (``optim.minibatch_order``, ``optim.micro_batch_packing``,
``optim.loss_aggregation``; docs/fidelity.md):

* ``balanced_rank_order``: verl's ``_balance_batch``. The step's sequences (all ranks, in sampling order) are
  split into one equal-sized share per rank by the largest differencing method (Karmarkar-Karp) on verl's
  workload estimate 24576 L + L^2 (L = prompt + response tokens), so a prompt's group is spread over ranks;
  each share is then ordered short -> long -> short (sorted by workload; every other item forward, the rest
  backward). Minibatches are consecutive slices of each rank's share, so the first and last minibatches of a
  step hold the short sequences and the middle ones the long.
* ``token_budget_micro_batches``: verl's ``rearrange_micro_batches`` (``use_dynamic_bsz``): ceil(tokens /
  budget) micro-batches (at most one per sequence; the largest count over ranks on every rank), sequences
  spread over them by the same differencing method (without equal sizes), the lightest micro-batches at
  both ends. A micro-batch may exceed the budget, as in verl.
* ``micro_batch_weights``: each micro-batch's loss is its own aggregate (token-mean over its tokens) times its
  share of the rank's minibatch sequences, divided by the number of ranks (FSDP averages gradients). verl
  passes no global token count on this path, so a long sequence weighs less than under a token-mean over
  the whole minibatch.

The partition reproduces verl's tie-breaking (written from the algorithm, not copied), so that a given
list of lengths gives verl's order; tests/test_balance.py holds orders worked out by hand.
"""

from __future__ import annotations

import heapq
import math

import torch
from torch import Tensor

from sdpg.objective.terms import LossAggMode, agg_weights

# verl's FLOP proxy for a sequence of L tokens (a 7B model's 12 h^2 L + 2 h L^2 with h = 4096, over 2h)
WORKLOAD_LINEAR = 24576


def workload(n_tokens: int) -> int:
    """verl's ``calculate_workload``: 24576 L + L^2 for a sequence of L tokens."""
    return WORKLOAD_LINEAR * n_tokens + n_tokens * n_tokens


def _part_key(part: tuple[int, list[tuple[int, int]]]) -> tuple:
    """Order of two parts under differencing: by sum, then item count, then the (index, value) items."""
    total, items = part
    return (total, len(items), items)


class _State:
    """k parts (sum, [(index, value)]) kept in decreasing order; the heap pops the widest spread first."""

    def __init__(self, parts: list[tuple[int, list[tuple[int, int]]]]):
        self.parts = sorted(parts, key=_part_key, reverse=True)

    @property
    def spread(self) -> int:
        return self.parts[0][0] - self.parts[-1][0]

    def __lt__(self, other: _State) -> bool:
        if self.spread != other.spread:
            return self.spread > other.spread
        return _part_key(other.parts[0]) < _part_key(self.parts[0])

    def absorb(self, other: _State) -> None:
        """Largest part with the other's smallest, and so on; then re-sort."""
        k = len(self.parts)
        merged = []
        for i in range(k):
            (s_a, a), (s_b, b) = self.parts[i], other.parts[k - 1 - i]
            merged.append((s_a + s_b, a + b))
        self.parts = sorted(merged, key=_part_key, reverse=True)


def differencing_partition(values: list[int], k: int, equal_size: bool) -> list[list[int]]:
    """Indices of ``values`` in ``k`` parts with near-equal sums by the largest differencing method
    (Karmarkar-Karp), as verl's ``get_seqlen_balanced_partitions``: parts in decreasing order of their sum,
    indices ascending within a part. ``equal_size``: every part gets len(values) / k items (the values are
    seeded k at a time, smallest first)."""
    if len(values) < k:
        raise ValueError(f"{len(values)} items cannot fill {k} parts")
    ranked = sorted((v, i) for i, v in enumerate(values))
    heap: list[_State] = []
    if equal_size:
        if len(values) % k:
            raise ValueError(f"{len(values)} items do not split into {k} equal parts")
        for first in range(0, len(ranked), k):
            heapq.heappush(heap, _State([(v, [(i, v)]) for v, i in ranked[first : first + k]]))
    else:
        for v, i in ranked:
            heapq.heappush(heap, _State([(v, [(i, v)])] + [(0, []) for _ in range(k - 1)]))
    while len(heap) > 1:
        widest = heapq.heappop(heap)
        widest.absorb(heapq.heappop(heap))
        heapq.heappush(heap, widest)
    return [sorted(i for i, _ in items) for _, items in heap[0].parts]


def balanced_rank_order(n_tokens: list[int], world: int) -> list[list[int]]:
    """verl's ``_balance_batch``: for each rank, the indices (into ``n_tokens``, the step's sequences in
    sampling order, prompt + response tokens each) of its share, in the order its minibatches take them:
    short -> long -> short."""
    loads = [workload(n) for n in n_tokens]
    shares = differencing_partition(loads, world, equal_size=True)
    ordered = []
    for share in shares:
        share = sorted(share, key=lambda i: (loads[i], i))
        ordered.append(share[::2] + share[1::2][::-1])
    return ordered


def micro_batch_count(n_tokens: list[int], budget: int) -> int:
    """verl's dynamic micro-batch count on one rank: ceil(tokens / budget), at most one per sequence."""
    return min(len(n_tokens), math.ceil(sum(n_tokens) / budget)) if n_tokens else 0


def token_budget_micro_batches(n_tokens: list[int], count: int) -> list[list[int]]:
    """verl's ``rearrange_micro_batches``: positions (into ``n_tokens``) of ``count`` micro-batches
    (``micro_batch_count``, maximised over ranks), spread by differencing on the workload and ordered
    with the lightest at both ends."""
    if not n_tokens:
        return []
    loads = [workload(n) for n in n_tokens]
    parts = [p for p in differencing_partition(loads, min(count, len(n_tokens)), equal_size=False) if p]
    parts.sort(key=lambda p: (sum(loads[i] for i in p), p[0]), reverse=True)
    return parts[::2][::-1] + parts[1::2]


def micro_batch_weights(
    token_mask: Tensor, groups: list[Tensor], mode: LossAggMode, world: int, n_rows: int | None = None
) -> Tensor:
    """Per-token weights [M, T] of a rank's minibatch under the authors' aggregation: micro-batch g gets its
    own aggregate of ``token_mask`` [M, T] (the tokens the term covers: all response tokens, or the gated
    ones) times |g| / ``n_rows`` (the rank's minibatch sequences; default M), divided by ``world``.
    A micro-batch with no covered token contributes nothing (verl would divide by zero)."""
    M = token_mask.shape[0]
    share_of = float(n_rows if n_rows is not None else M)
    weights = torch.zeros_like(token_mask, dtype=torch.float32)  # [M, T]
    for g in groups:
        m = token_mask[g].float()  # [b, T]
        w = agg_weights(m, mode, n_tokens=float(m.sum()), n_seqs=float((m.sum(-1) > 0).sum()))  # [b, T]
        weights[g] = w * (len(g) / max(1.0, share_of) / world)
    return weights
