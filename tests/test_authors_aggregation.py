"""The authors' loss weighting and minibatch make-up (verl as their scripts run it), OPSD's entropy over all
response tokens, the distillation KL in bf16, and the epoch limit: hand-computed examples, verl's orders
worked out from its algorithm, both loss paths, two gloo ranks, and the built-in task."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sdpg.objective import StepLossSettings, beta_at, full_vocab_kl, step_loss
from sdpg.training import trainer as tr
from sdpg.training.balance import (
    balanced_rank_order,
    differencing_partition,
    micro_batch_count,
    micro_batch_weights,
    token_budget_micro_batches,
    workload,
)
from sdpg.training.config import AlgoConfig, ConfigError, load_config
from sdpg.training.data import PromptSampler

ROOT = Path(__file__).resolve().parents[1]


def _mask(lengths: list[int], T: int = 4) -> torch.Tensor:
    return (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).float()  # [B, T]


# ------------------------------------------------------------------ the authors' aggregation, by hand

# Two ranks, a minibatch of 4 sequences on each, three micro-batches:
#   rank 0: A = rows 0, 1 (2 + 1 tokens), B = rows 2, 3 (4 + 2 tokens); rank 1: C = rows 0..3 (3 + 1 + 2 + 2 tokens).
# Each sequence's tokens carry one value x.
RANK0 = {"lengths": [2, 1, 4, 2], "x": [1.0, 4.0, 0.5, 2.0], "micro": [[0, 1], [2, 3]]}
RANK1 = {"lengths": [3, 1, 2, 2], "x": [1.0, 3.0, 0.0, -1.0], "micro": [[0, 1, 2, 3]]}
# By hand, the authors: each micro-batch's token-mean x its share of the rank's 4 sequences, ranks averaged:
#   A: (2*1 + 4) / 3 = 2, share 2/4 -> 1     B: (4*0.5 + 2*2) / 6 = 1, share 2/4 -> 0.5
#   C: (3*1 + 3 + 0 - 2) / 8 = 0.5, share 4/4 -> 0.5          loss = ((1 + 0.5) + 0.5) / 2 = 1
# so a token weighs 1/3 * 2/4 / 2 = 1/12 in A, 1/6 * 2/4 / 2 = 1/24 in B, 1/8 * 4/4 / 2 = 1/16 in C.
# The exact token-mean over the minibatch: (2 + 4 + 2 + 4 + 3 + 3 + 0 - 2) / 17 = 16/17.
AUTHORS_LOSS, EXACT_LOSS = 1.0, 16 / 17
HAND_WEIGHTS = {0: [1 / 12, 1 / 12, 1 / 24, 1 / 24], 1: [1 / 16] * 4}


def test_authors_aggregation_hand_example_three_micro_batches_two_ranks():
    total, exact_sum, exact_tokens = 0.0, 0.0, 0.0
    for rank, r in enumerate((RANK0, RANK1)):
        mask = _mask(r["lengths"])  # [4, 4]
        x = torch.tensor(r["x"])[:, None] * mask  # [4, 4]
        w = micro_batch_weights(mask, [torch.tensor(g) for g in r["micro"]], "token-mean", world=2)  # [4, 4]
        for i, want in enumerate(HAND_WEIGHTS[rank]):
            assert w[i][mask[i] > 0].tolist() == pytest.approx([want] * r["lengths"][i], rel=1e-6)
        assert float(w[mask == 0].abs().sum()) == 0.0
        total += float((w * x).sum())
        exact_sum, exact_tokens = exact_sum + float(x.sum()), exact_tokens + float(mask.sum())
    assert total == pytest.approx(AUTHORS_LOSS, rel=1e-6)
    assert exact_sum / exact_tokens == pytest.approx(EXACT_LOSS, abs=1e-12)
    assert abs(AUTHORS_LOSS - EXACT_LOSS) > 0.05  # the two aggregations differ on this example


@pytest.mark.parametrize("impl", ["materialised", "fused"])
def test_authors_aggregation_through_the_step_loss(impl):
    """The trainer's weights (``token_weights`` with micro-batches) through ``step_loss`` per micro-batch, on each
    rank: on-policy with A = -x the per-token loss is x (ratio 1), so the summed losses are the hand value."""
    g = torch.Generator().manual_seed(0)
    H, V = 8, 23
    W = torch.randn(V, H, generator=g)
    total = 0.0
    for r in (RANK0, RANK1):
        mask = _mask(r["lengths"])  # [4, 4]
        adv = -torch.tensor(r["x"])  # [4]
        tokens = torch.randint(0, V, (4, 4), generator=g)
        micro = [torch.tensor(m) for m in r["micro"]]
        pg_w, _, _ = tr.token_weights(mask, adv, tokens, None, AlgoConfig(method="grpo"), micro=micro, world=2)
        for pos in micro:
            hs = torch.randn(len(pos), 4, H, generator=g, requires_grad=True)
            st = StepLossSettings(beta=0.0, alpha=0.0, clip_c=10.0)
            loss, _, _ = step_loss(hs, W, None, tokens[pos], adv[pos], mask[pos], st, token_weights=pg_w[pos], impl=impl)
            total += float(loss.detach())
    assert total == pytest.approx(AUTHORS_LOSS, abs=1e-6)


def test_default_aggregation_is_exact_over_the_minibatch():
    """Without micro-batches the weights are 1 / 17 on both simulated ranks (the counts summed over them):
    the same example's exact token-mean, 16/17."""
    zeros = torch.zeros(4, 4, dtype=torch.long)
    sides = [(_mask(r["lengths"]), -torch.tensor(r["x"])) for r in (RANK0, RANK1)]
    counts = []
    for m, adv in sides:  # each rank's own counts, as all_sum receives them
        tr.token_weights(m, adv, zeros, None, AlgoConfig(method="grpo"), lambda t: counts.append(t) or t)
    total = 0.0
    for rank, (m, adv) in enumerate(sides):
        other = counts[1 - rank]
        pg, _, _ = tr.token_weights(m, adv, zeros, None, AlgoConfig(method="grpo"), lambda t, o=other: t + o)
        assert pg[m > 0].tolist() == pytest.approx([1 / 17] * int(m.sum()), rel=1e-6)
        total += float((pg * -adv[:, None]).sum())
    assert total == pytest.approx(EXACT_LOSS, rel=1e-6)


# ------------------------------------------------------------------ verl's balanced minibatch order

# By hand, verl's _balance_batch on 8 sequences (prompt + response tokens, sampling order) and 2 GPUs, with the
# workload w(L) = 24576 L + L^2:
#   sorted ascending, seeded 2 at a time: {200(4) | 100(0)}, {400(6) | 300(2)}, {600(5) | 500(7)}, {800(3) | 700(1)};
#   spreads w(200)-w(100) = 2,487,600 < w(400)-w(300) = 2,527,600 < 2,567,600 < 2,607,600.
#   Widest two: {3}{1} absorbs {5}{7} crosswise -> {3,7} (24576*1300 + 890,000) and {1,5} (24576*1300 + 850,000):
#   spread 40,000. Next widest: {6}{2} absorbs {4}{0} -> {6,0} (24576*500 + 170,000), {2,4} (+130,000): 40,000.
#   Equal spreads: the state with the larger largest part, {3,7}, goes first: {3,7} + {2,4} and {1,5} + {6,0},
#   both 24576*1800 + 1,020,000: a tie, broken by the items, (3, .) > (1, .): GPU 0 gets {2,3,4,7}, GPU 1 {0,1,5,6}.
#   Within a share sorted by workload, every other one forward, the rest backward: GPU 0 200 300 500 800 ->
#   [4, 7, 3, 2] (200, 500, 800, 300); GPU 1 100 400 600 700 -> [0, 5, 1, 6] (100, 600, 700, 400).
HAND_TOKENS = [100, 700, 300, 800, 200, 600, 400, 500]
HAND_ORDER = [[4, 7, 3, 2], [0, 5, 1, 6]]

# 16 sequences over 4 GPUs, realistic lengths (several at the 4,096-token cap: ties); the order verl's
# get_seqlen_balanced_partitions and _balance_batch give for this list.
VERL_TOKENS_16 = [1523, 4296, 2210, 4296, 871, 3307, 1954, 4296, 612, 2875, 4296, 1391, 3980, 2533, 740, 4296]
VERL_ORDER_16 = [[11, 9, 3, 13], [14, 1, 7, 0], [8, 12, 10, 6], [4, 5, 15, 2]]


def test_balanced_order_equals_verl_by_hand():
    assert workload(200) - workload(100) == 2_487_600
    assert balanced_rank_order(HAND_TOKENS, 2) == HAND_ORDER
    for share in HAND_ORDER:  # short -> long -> short
        lengths = [HAND_TOKENS[i] for i in share]
        peak = lengths.index(max(lengths))
        assert lengths[: peak + 1] == sorted(lengths[: peak + 1]) and lengths[peak:] == sorted(lengths[peak:], reverse=True)


def test_balanced_order_equals_verl_on_realistic_lengths():
    assert balanced_rank_order(VERL_TOKENS_16, 4) == VERL_ORDER_16
    sums = [sum(VERL_TOKENS_16[i] for i in share) for share in VERL_ORDER_16]
    assert max(sums) - min(sums) < 1000  # balanced: 10,526 .. 11,034 tokens per GPU
    assert balanced_rank_order([5, 1, 4, 2, 3], 1) == [[1, 4, 0, 2, 3]]  # one GPU: 1 3 5 4 2


def test_differencing_needs_enough_items():
    with pytest.raises(ValueError, match="do not split into 2 equal parts"):
        differencing_partition([1, 2, 3], 2, equal_size=True)
    with pytest.raises(ValueError, match="cannot fill"):
        differencing_partition([1], 2, equal_size=False)


# By hand, verl's rearrange_micro_batches on [100, 400, 300, 200] tokens with a 500-token budget: ceil(1000 / 500) = 2
# micro-batches; differencing on single items: {1} absorbs {2} -> {1}{2} (spread w400 - w300 = 2,527,600); the
# widest, {3} (spread w200 = 4,955,200), absorbs it -> {3,2} (12,418,000) {1} (9,990,400); {0} (2,467,600) is then
# wider than 2,427,600 and absorbs -> {0,1} (12,458,000), {2,3} (12,418,000); heaviest first, then the lightest at
# both ends: [[0, 1], [2, 3]].
# 8 sequences at 6,144 tokens: 4 micro-batches; the partition verl's algorithm gives (one over 5,000 tokens alone).
VERL_MICRO = ([1200, 5000, 800, 3100, 2600, 640, 4296, 2048], [[0, 2, 3], [1], [5, 6], [4, 7]])


def test_token_budget_micro_batches_equal_verl():
    assert micro_batch_count([100, 400, 300, 200], 500) == 2
    assert token_budget_micro_batches([100, 400, 300, 200], 2) == [[0, 1], [2, 3]]
    tokens, want = VERL_MICRO
    assert micro_batch_count(tokens, 6144) == 4
    assert token_budget_micro_batches(tokens, 4) == want
    assert micro_batch_count([10, 10], 6144) == 1 and micro_batch_count([6000] * 3, 100) == 3  # at most one per row
    assert token_budget_micro_batches([10, 20], 5) == [[1], [0]]  # a larger count than rows: one row each


def _balance_worker(rank: int, init: str, out: str) -> None:
    """One of two gloo ranks: its rows of a step of 4 prompts x 2 (prompt p on rank p % 2), each row's
    sampling index s written into every per-row tensor, then ``balance``."""
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        G, world = 2, 2
        prompt_tokens = {0: 10, 1: 30, 2: 20, 3: 40}  # ranks hold prompts of different lengths: Ps 20 and 40
        rows = [p * G + g for p in range(rank, 4, world) for g in range(G)]  # sampling indices of this rank's rows
        P = max(prompt_tokens[s // G] for s in rows)
        resp = [HAND_TOKENS[s] - prompt_tokens[s // G] for s in rows]
        T = max(resp)
        mask = _mask(resp, T)  # [4, T]
        p_attn = torch.stack([(torch.arange(P) >= P - prompt_tokens[s // G]).long() for s in rows])  # [4, P] left-padded
        ids = torch.tensor(rows)[:, None]
        seq = torch.cat([(ids + 1) * p_attn, (ids + 1000) * mask.long()], 1)
        attn = torch.cat([p_attn, mask.long()], 1)
        per_token = ids.float() * mask
        sampled = tr.Sampled(
            prompt_ids=[], texts=[], responses=(ids + 1000) * mask.long(), mask=mask, engine_logp=None,
            truncated=torch.tensor(rows) % 3 == 0, student_seq=seq, student_attn=attn, student_prompt_len=P,
            teacher_seq=seq.clone(), teacher_attn=attn.clone(), teacher_prompt_len=P,
        )  # fmt: skip
        scored = tr.Scored(
            scores=ids.float().view(-1), advantages=ids.float().view(-1), all_advantages=ids.float().view(-1),
            keep=torch.arange(len(rows)),
        )  # fmt: skip
        logp = tr.LogProbs(old_logp=per_token.clone(), ref_logp=None, teacher_logp=per_token.clone(), entropy=per_token.clone())
        adv = tr.Advantages(sequence=ids.float().view(-1), all=ids.float().view(-1), token=per_token.clone())
        run = SimpleNamespace(
            cfg=SimpleNamespace(rollout=SimpleNamespace(group_size=G)),
            world=world,
            rank=rank,
            device=torch.device("cpu"),
            tokenizer=SimpleNamespace(pad_token_id=0),
        )
        batch, scored, logp, adv = tr.balance(run, sampled, scored, logp, adv)
        assert logp.old_logp is not None and adv.token is not None
        got = []
        for i in range(len(adv.sequence)):
            s = int(adv.sequence[i])
            Ps = batch.student_prompt_len
            n_prompt, n_resp = int(batch.student_attn[i, :Ps].sum()), int(batch.mask[i].sum())
            ok = (
                n_prompt == prompt_tokens[s // G]
                and n_prompt + n_resp == HAND_TOKENS[s]
                and bool((batch.student_seq[i, :Ps][batch.student_attn[i, :Ps] > 0] == s + 1).all())
                and bool((batch.student_attn[i, Ps - n_prompt : Ps] == 1).all())  # still left-padded
                and bool((batch.student_seq[i, Ps : Ps + n_resp] == s + 1000).all())
                and bool((batch.responses[i, :n_resp] == s + 1000).all())
                and bool((batch.teacher_seq[i] == batch.student_seq[i]).all())
                and bool(batch.truncated[i]) == (s % 3 == 0)
                and float(scored.scores[i]) == s
                and float(scored.advantages[i]) == s
                and all(bool((t[i, :n_resp] == s).all()) for t in (logp.old_logp, logp.entropy, adv.token))
            )
            got.append((s, ok))
        Path(f"{out}{rank}.json").write_text(
            json.dumps({"rows": got, "keep": scored.keep.tolist(), "ref": logp.ref_logp is None})
        )
    finally:
        torch.distributed.destroy_process_group()


def test_balance_moves_every_row_to_its_verl_rank_two_gloo_ranks(tmp_path):
    """Two real gloo ranks: after ``balance`` each holds verl's share in verl's order, every per-row tensor
    carried with its row (prompts re-padded on the left, responses on the right)."""
    init = f"file://{tmp_path / 'rendezvous'}"
    torch.multiprocessing.spawn(_balance_worker, args=(init, str(tmp_path / "rank")), nprocs=2, join=True)
    for rank, want in enumerate(HAND_ORDER):
        res = json.loads(Path(f"{tmp_path / 'rank'}{rank}.json").read_text())
        assert [s for s, _ in res["rows"]] == want
        assert all(ok for _, ok in res["rows"]), res
        assert res["keep"] == [0, 1, 2, 3] and res["ref"]


# ------------------------------------------------------------------ OPSD's entropy over every response token


def test_opsd_entropy_weights_cover_every_response_token():
    mask = _mask([3, 2, 4, 1])  # [4, 4], 10 tokens
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])  # rows 0 and 2 gated in: 7 tokens
    tokens = torch.zeros(4, 4, dtype=torch.long)
    opsd = AlgoConfig(method="opsd")
    assert opsd.entropy_tokens == "all" and opsd.pg_norm == "gated"
    pg, _, ent = tr.token_weights(mask, adv, tokens, None, opsd)
    assert pg[[0, 2]][mask[[0, 2]] > 0].tolist() == pytest.approx([1 / 7] * 7) and float(pg[[1, 3]].abs().sum()) == 0
    assert ent[mask > 0].tolist() == pytest.approx([1 / 10] * 10)
    _, _, old = tr.token_weights(mask, adv, tokens, None, AlgoConfig(method="opsd", entropy_tokens="pg"))
    assert torch.equal(old, pg)  # the former behaviour, on request
    # the authors' per-micro-batch form: each micro-batch's own token-mean of the entropy over all its tokens
    micro = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    pg_m, _, ent_m = tr.token_weights(mask, adv, tokens, None, opsd, micro=micro)
    assert ent_m[0, 0].item() == pytest.approx(1 / 5 * 2 / 4) and ent_m[2, 0].item() == pytest.approx(1 / 5 * 2 / 4)
    assert pg_m[0, 0].item() == pytest.approx(1 / 3 * 2 / 4) and pg_m[2, 0].item() == pytest.approx(1 / 4 * 2 / 4)


@pytest.mark.parametrize("impl", ["materialised", "fused"])
def test_entropy_bonus_uses_its_own_weights_in_both_loss_paths(impl):
    """No sequence gated in (L_out 0): the loss is -0.02 x the mean entropy over every response token, and the
    gradient is that of the entropy term alone (fused equal to materialised)."""
    g = torch.Generator().manual_seed(1)
    B, T, H, V = 3, 5, 8, 29
    hs = torch.randn(B, T, H, generator=g, requires_grad=True)
    W = torch.randn(V, H, generator=g, requires_grad=True)
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = _mask([5, 2, 4], T)
    adv = torch.tensor([-1.0, -0.5, -0.2])
    pg, _, ent_w = tr.token_weights(mask, adv, tokens, None, AlgoConfig(method="opsd"))
    st = StepLossSettings(beta=0.0, alpha=0.0, clip_low=0.2, clip_high=0.2, clip_c=3.0, entropy_coef=0.02)
    grads = {}
    for path in ("materialised", impl):
        hs.grad = W.grad = None
        loss, _, out = step_loss(
            hs, W, None, tokens, adv, mask, st, token_advantages=torch.zeros(B, T), token_weights=pg,
            entropy_token_weights=ent_w, impl=path,
        )  # fmt: skip
        loss.backward()
        grads[path] = (hs.grad.clone(), W.grad.clone())
        mean_entropy = float((out.entropy * mask).sum() / mask.sum())
        assert float(loss.detach()) == pytest.approx(-0.02 * mean_entropy, rel=1e-5)
    for a, b in zip(grads["materialised"], grads[impl]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert float(grads[impl][0].abs().sum()) > 0


# ------------------------------------------------------------------ the distillation KL in bf16


def _logits(V: int = 4096, B: int = 2, T: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    zs = (torch.randn(B, T, V, generator=g) * 3).to(torch.bfloat16).float()  # bf16 logits, as the model gives
    zt = (zs + torch.randn(B, T, V, generator=g) * 0.5).to(torch.bfloat16).float()
    return zs, zt


def test_bf16_kl_is_the_authors_computation_and_differs_from_float32():
    zs, zt = _logits()
    got = full_vocab_kl(zs, zt, dtype="bfloat16")  # [B, T]
    ls = F.log_softmax(zs.to(torch.bfloat16), dim=-1)  # what the authors' code does, op for op
    lq = F.log_softmax(zt.to(torch.bfloat16), dim=-1)
    want = (ls.exp() * (ls - lq)).sum(-1).float()
    assert torch.equal(got, want)
    exact = full_vocab_kl(zs, zt)
    assert (got - exact).abs().max().item() > 1e-3 * exact.abs().max().item()  # bf16 is visibly not float32
    assert abs(got.mean().item() - exact.mean().item()) < 0.1 * exact.mean().item()  # per token up to ~10%


@pytest.mark.parametrize("chunk", [None, 4])
def test_bf16_distillation_fused_matches_materialised(chunk):
    g = torch.Generator().manual_seed(3)
    B, T, H, V = 2, 6, 16, 512
    hs = (torch.randn(B, T, H, generator=g) * 2).requires_grad_(True)
    ht = torch.randn(B, T, H, generator=g) * 2
    W = torch.randn(V, H, generator=g).requires_grad_(True)
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = _mask([6, 4], T)
    adv = torch.tensor([1.0, 0.4])
    results = {}
    for dtype in ("float32", "bfloat16"):
        st = StepLossSettings(beta=1.0, alpha=0.0, pg_coef=0.0, kl_clamp=20.0, distill_dtype=dtype)  # type: ignore[arg-type]
        for impl in ("materialised", "fused"):
            hs.grad = W.grad = None
            loss, stats, out = step_loss(
                hs, W, None, tokens, adv, mask, st, teacher_hidden=ht, impl=impl, chunk_size=chunk
            )  # fmt: skip
            loss.backward()
            results[dtype, impl] = (float(loss), out.opd_kl.clone(), hs.grad.clone(), W.grad.clone())
    lb, klb, hb, wb = results["bfloat16", "materialised"]
    lf, klf, hf, wf = results["bfloat16", "fused"]
    m = mask > 0
    torch.testing.assert_close(klf[m], klb[m], rtol=1e-2, atol=1e-3)  # the same bf16 ops, chunk by chunk
    assert lf == pytest.approx(lb, rel=1e-2)
    for a, b in ((hf, hb), (wf, wb)):  # fused: float32 arithmetic on the bf16 log-probabilities; autograd: all bf16
        assert (a - b).abs().max().item() <= 5e-2 * b.abs().max().item()
    l32 = results["float32", "materialised"][0]
    assert abs(lb - l32) > 1e-4 * abs(l32)  # the setting reaches both paths
    assert abs(lf - results["float32", "fused"][0]) > 1e-4 * abs(l32)


def test_distill_dtype_is_a_setting_float32_by_default():
    assert AlgoConfig().distill_dtype == "float32"
    paper = load_config(ROOT / "ablations" / "base" / "paper_qwen3_4b.yaml")
    assert paper.algo.distill_dtype == "bfloat16"
    with pytest.raises(ConfigError, match="algo.distill_dtype"):
        load_config(None, ["algo.distill_dtype=float16"])


# ------------------------------------------------------------------ the paper config, the epoch limit


def test_paper_config_uses_the_authors_aggregation_and_order_elsewhere_the_exact_one():
    paper = load_config(ROOT / "ablations" / "base" / "paper_qwen3_4b.yaml").optim
    assert (paper.loss_aggregation, paper.minibatch_order, paper.micro_batch_packing) == ("micro_batch", "balanced", "balanced")
    assert paper.micro_batch_tokens == 6144
    default = load_config(None).optim
    assert (default.loss_aggregation, default.minibatch_order, default.micro_batch_packing) == ("minibatch", "groups", "padded")
    with pytest.raises(ConfigError, match="cannot follow algo.filter_groups"):
        load_config(None, ["optim.minibatch_order=balanced", "algo.method=dapo"])
    with pytest.raises(ConfigError, match="needs optim.micro_batch_tokens"):
        load_config(None, ["optim.micro_batch_packing=balanced"])


def test_sampler_drops_the_incomplete_last_step_of_each_epoch():
    endless = PromptSampler(10, seed=0)
    epoch0 = list(endless._order)
    endless.next(4), endless.next(4)
    assert endless.next(4)[:2] == epoch0[8:] and endless.epoch == 1  # without: a step mixes two epochs
    s = PromptSampler(10, seed=0, drop_last=4)
    first, second, third = s.next(4), s.next(4), s.next(4)
    assert first + second == epoch0[:8] and s.epoch == 1  # the last 2 rows of epoch 0 skipped
    assert third == s._order[:4] and s.pos == 4
    authors = ["run.max_epochs=2", "rollout.prompts_per_step=128", "run.total_steps=400"]
    assert tr.last_step(load_config(None, authors), 13_900) == 216  # 2 x floor(13,900 / 128), before step 400
    assert tr.last_step(load_config(None, [*authors, "run.total_steps=100"]), 13_900) == 100
    assert tr.last_step(load_config(None, ["run.total_steps=400"]), 13_900) == 400  # no epoch limit by default


def test_max_epochs_with_too_few_rows_is_refused_before_anything_exists(tmp_path):
    from sdpg.training.preflight import check_world

    data = tmp_path / "three.jsonl"
    data.write_text("".join(json.dumps({"problem": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(3)))
    out = tmp_path / "run"
    over = [f"data.train={data}", "data.eval={}", f"run.output_dir={out}", "rollout.prompts_per_step=4"]
    check_world(load_config(None, over), "cfg")  # without an epoch limit the 3 rows are drawn again and again
    with pytest.raises(ConfigError, match="3 training rows make no complete step of rollout.prompts_per_step=4"):
        check_world(load_config(None, [*over, "run.max_epochs=1"]), "cfg")
    with pytest.raises(ConfigError, match="run.max_epochs"):
        load_config(None, ["run.max_epochs=0"])
    assert not out.exists()


def test_max_epochs_stops_the_builtin_task_after_two_passes(tiny_config):
    """10 training rows, 4 prompts a step: 2 whole steps an epoch, so run.max_epochs=2 stops at step 4 of 50, and
    beta(k) keeps the schedule of 50 steps."""
    cfg = tiny_config("data.train_limit=10", "run.max_epochs=2", "run.total_steps=50", "eval.every=0", "algo.beta=0.1")
    result = tr.train(cfg)
    assert result["status"] == "finished" and result["step"] == 4
    rows = [json.loads(x) for x in open(Path(cfg.run.output_dir) / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    a = cfg.algo
    assert rows[-1]["train/beta"] == pytest.approx(beta_at(4, 50, a.beta, a.beta_warmup_steps, a.beta_decay_steps))
    ckpt = torch.load(sorted((Path(cfg.run.output_dir) / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    assert ckpt["step"] == 4 and ckpt["sampler"]["epoch"] == 1 and ckpt["sampler"]["pos"] == 8


def test_authors_aggregation_in_the_trainer_equals_exact_with_one_micro_batch(tiny_config):
    """Same rollouts, one update (the gradient read from Adam's first moment): with one micro-batch holding the
    whole minibatch (a huge budget) the authors' aggregation is the exact token-mean; with a small budget
    (several micro-batches of responses of different lengths: 48 tokens let most samples end) it is not. Every
    sample is distilled (no A > 0 gate), so that the gradient does not depend on which groups the draw leaves with
    a learning signal."""
    moments = []
    for name, over in (
        ("exact", []),
        ("one", ["optim.micro_batch_tokens=100000"]),
        ("several", ["optim.micro_batch_tokens=60"]),
    ):
        authors = ["optim.micro_batch_packing=balanced", "optim.loss_aggregation=micro_batch"] if over else []
        cfg = tiny_config(
            "run.total_steps=1", "eval.every=0", "algo.beta=1.0", "algo.gate=false", "run.checkpoint_every=1",
            "rollout.max_new_tokens=48", *over, *authors, out=name,
        )  # fmt: skip
        tr.train(cfg)
        ck = torch.load(sorted((Path(cfg.run.output_dir) / "checkpoints").glob("*.pt"))[-1], weights_only=False)
        moments.append(torch.cat([st["exp_avg"].flatten() for st in ck["optimizer"]["state"].values()]))
    exact, one, several = moments
    scale = exact.abs().max().item()
    assert (one - exact).abs().max().item() <= 1e-4 * scale
    assert (several - exact).abs().max().item() > 1e-3 * scale  # ten times the bound that "one" meets


def test_the_authors_settings_train_on_the_builtin_task(tiny_config):
    """One RL step of the paper's make-up at tiny size: 2 minibatches of 2 prompts, balanced order, verl's token-budget
    micro-batches and per-micro-batch aggregation, bf16 distillation; the update is applied and finite. The A > 0
    gate is off so that the gradient cannot be zero by the draw (a step whose groups all score alike has no policy
    signal and, gated, nothing to distill)."""
    cfg = tiny_config(
        "run.total_steps=1",
        "eval.every=0",
        "algo.beta=1.0",
        "algo.gate=false",
        "algo.distill_dtype=bfloat16",
        "optim.minibatch_prompts=2",
        "optim.minibatch_order=balanced",
        "optim.micro_batch_tokens=120",
        "optim.micro_batch_packing=balanced",
        "optim.loss_aggregation=micro_batch",
    )
    result = tr.train(cfg)
    m = result["metrics"]
    assert result["status"] == "finished" and m["train/nonfinite_skipped"] == 0
    assert math.isfinite(m["train/pg_loss"]) and math.isfinite(m["train/opd_kl"]) and m["train/grad_norm"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", ["false", "true"], ids=["replicated", "fsdp2"])
def test_the_authors_settings_on_two_torchrun_ranks(tmp_path, fsdp):
    """Two gloo ranks, replicated or sharded: rows re-dealt across ranks, verl's micro-batch count the same on
    both (FSDP pads none), the per-micro-batch weights over 2 ranks; two steps finish with finite updates."""
    import os
    import subprocess
    import sys

    from conftest import TINY

    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "sdpg", "train"]
    cmd += [*TINY, "run.total_steps=2", "eval.every=0", "algo.beta=1.0", "algo.distill_dtype=bfloat16"]
    cmd += ["optim.minibatch_prompts=2", "optim.minibatch_order=balanced", "optim.micro_batch_tokens=120"]
    cmd += ["optim.micro_batch_packing=balanced", "optim.loss_aggregation=micro_batch", f"model.fsdp={fsdp}"]
    cmd += [f"run.output_dir={out}"]
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["step"] == 2
    rows = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert all(row["train/nonfinite_skipped"] == 0 and math.isfinite(row["train/pg_loss"]) for row in rows)
