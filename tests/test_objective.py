"""Hand-derived values and exact identities for every loss term."""

from __future__ import annotations

import math

import pytest
import torch

from sdpg.objective import (
    FusedKLInputs,
    agg_weights,
    beta_at,
    full_vocab_kl,
    fused_full_vocab_kl,
    fused_weighted_full_vocab_kl,
    group_advantages,
    opsd_token_weights,
    policy_loss,
    ref_kl,
    rlsd_advantages,
    sdpg_loss,
)

# ------------------------------------------------------------------ advantages and schedule


def test_group_advantages_one_correct_of_four():
    # mean 0.25; unbiased std = sqrt((0.75^2 + 3 * 0.25^2) / 3) = sqrt(0.25) = 0.5
    a = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=4)
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6)
    torch.testing.assert_close(a, expected)


def test_group_advantages_without_std_and_equal_groups():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    torch.testing.assert_close(group_advantages(r, 4, std_norm=False), torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]))
    assert torch.equal(group_advantages(r, 4)[4:], torch.zeros(4))


def test_group_advantages_rejects_ragged_groups():
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(5), 4)


@pytest.mark.parametrize(
    "step,expected",
    # T = 400, T_warm = 50, T_decay = 350: the ramp reaches 1 at k = 50, the decay starts after k = 50
    [(0, 0.0), (25, 0.5), (50, 1.0), (51, 349 / 350), (100, 300 / 350), (225, 0.5), (399, 1 / 350), (400, 0.0), (410, 0.0)],
)
def test_beta_schedule_paper_windows(step, expected):
    assert beta_at(step, 400, 1.0, 50, 350) == pytest.approx(expected)
    assert beta_at(step, 400, 1e-3, 50, 350) == pytest.approx(1e-3 * expected)


def test_beta_schedule_windows_off():
    assert beta_at(0, 400, 1e-3) == 1e-3
    assert beta_at(399, 400, 2.0, 0, 0) == 2.0
    assert beta_at(10, 400, 2.0, 20, 0) == 1.0


# ------------------------------------------------------------------ aggregation


def test_agg_weights_modes():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert (x * agg_weights(mask, "token-mean")).sum().item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert (x * agg_weights(mask, "seq-mean-token-sum")).sum().item() == pytest.approx((6 + 4) / 2)
    assert (x * agg_weights(mask, "seq-mean-token-mean")).sum().item() == pytest.approx((2 + 4) / 2)
    with pytest.raises(ValueError, match="loss_agg_mode"):
        agg_weights(mask, "token-sum")


# ------------------------------------------------------------------ L_out


def test_policy_loss_dapo_hand_values():
    # token 0: r = 1.5, A = +1 -> clipped at 1.28 -> -1.28 (clipped)
    # token 1: r = 1.1, A = +1 -> inside range -> -1.1
    # token 2: r = 0.5, A = -1 -> max(0.5, 0.8) = 0.8 (clipped), below c = 10 -> 0.8
    # token 3: r = 20,  A = -1 -> max(20, 1.28) = 20 > c * 1 = 10 -> dual clip 10
    ratios = torch.tensor([[1.5, 1.1], [0.5, 20.0]], dtype=torch.float64)
    logp = torch.log(ratios).requires_grad_(True)
    old = torch.zeros_like(logp)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.ones_like(logp)
    loss, stats = policy_loss(logp, old, adv, mask)
    torch.testing.assert_close(loss, torch.tensor([[-1.28, -1.1], [0.8, 10.0]], dtype=torch.float64))
    assert stats["pg_clipfrac"].item() == pytest.approx(2 / 4)
    assert stats["pg_clipfrac_lower"].item() == pytest.approx(1 / 4)
    loss.sum().backward()
    # only the unclipped token carries gradient: d(-A r)/dlogp = -A r = -1.1
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -1.1], [0.0, 0.0]], dtype=torch.float64))


def test_policy_loss_reinforce_and_mask():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, stats = policy_loss(logp, logp.detach(), torch.tensor([0.5]), torch.tensor([[1.0, 0.0]]), mode="reinforce")
    torch.testing.assert_close(loss, torch.tensor([[0.5, 0.0]]))
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.5, 0.0]]))
    assert stats["pg_clipfrac"].item() == 0.0


def test_policy_loss_per_token_advantages():
    logp = torch.zeros(1, 2)
    loss, _ = policy_loss(logp, logp, torch.tensor([[2.0, -3.0]]), torch.ones(1, 2))
    torch.testing.assert_close(loss, torch.tensor([[-2.0, 3.0]]))


# ------------------------------------------------------------------ L_K


def test_ref_kl_modes_at_w_equal_2():
    logp = torch.tensor([[math.log(0.5)]], dtype=torch.float64)
    ref = torch.tensor([[math.log(0.25)]], dtype=torch.float64)  # w = 2
    L = math.log(2.0)
    want = {
        "urkl": 0.5 * L * L,
        "ufkl": 0.5 + L,
        "rkl": 0.5 * (L + 1) ** 2,
        "fkl": 0.5,
        "k1": L,
        "k2": 0.5 * L * L,
        "k3": 0.5 - 1 + L,
    }
    for mode, v in want.items():
        assert ref_kl(logp, ref, mode).item() == pytest.approx(v, rel=1e-12), mode
    with pytest.raises(ValueError, match="unknown ref_kl mode"):
        ref_kl(logp, ref, "kl")


def _expected_surrogate_grad(theta, ref_logp, mode):
    """E_{y ~ pi_theta}[grad f(log w(y))], enumerated exactly over the vocabulary."""
    V = theta.numel()
    total = torch.zeros_like(theta)
    probs = torch.softmax(theta, 0).detach()
    for y in range(V):
        th = theta.detach().clone().requires_grad_(True)
        logp = torch.log_softmax(th, 0)[y].view(1, 1)
        ref_kl(logp, ref_logp[y].view(1, 1), mode).sum().backward()
        total += probs[y] * th.grad
    return total


def _ukl(P, Q):
    return (P * (P / Q).log() - P + Q).sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surrogate_identities_exact(seed):
    g = torch.Generator().manual_seed(seed)
    V = 7
    theta0 = torch.randn(V, generator=g, dtype=torch.float64)
    ref_logp = torch.log_softmax(torch.randn(V, generator=g, dtype=torch.float64), 0)
    pref = ref_logp.exp()
    divergences = {
        "urkl": lambda p: _ukl(p, pref),  # UKL(pi_theta || pi_ref)
        "ufkl": lambda p: _ukl(pref, p),  # UKL(pi_ref || pi_theta)
        "rkl": lambda p: (p * (p / pref).log()).sum(),  # KL(pi_theta || pi_ref)
        "fkl": lambda p: (pref * (pref / p).log()).sum(),  # KL(pi_ref || pi_theta)
    }
    for mode, div in divergences.items():
        theta = theta0.clone().requires_grad_(True)
        div(torch.softmax(theta, 0)).backward()
        got = _expected_surrogate_grad(theta0, ref_logp, mode)
        torch.testing.assert_close(got, theta.grad, rtol=1e-10, atol=1e-12, msg=mode)


# ------------------------------------------------------------------ L_OPD: materialised


def test_full_vocab_kl_hand_value_and_teacher_detached():
    s = torch.log(torch.tensor([[[0.5, 0.5]]], dtype=torch.float64)).requires_grad_(True)
    t = torch.log(torch.tensor([[[0.25, 0.75]]], dtype=torch.float64)).requires_grad_(True)
    kl = full_vocab_kl(s, t)
    want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl.item() == pytest.approx(want, rel=1e-12)
    kl.sum().backward()
    assert t.grad is None
    assert s.grad is not None


def test_proposition_3_1_gradient_is_policy_gradient():
    """grad KL(p || SG q) = grad of -E_{a ~ p_bar}[A(a) log p(a)], A(a) = D_bar - log(p_bar/q_bar)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 11, generator=g, dtype=torch.float64)
    t = torch.randn(3, 4, 11, generator=g, dtype=torch.float64)
    za = z.clone().requires_grad_(True)
    full_vocab_kl(za, t).sum().backward()

    zb = z.clone().requires_grad_(True)
    logp = torch.log_softmax(zb, -1)
    with torch.no_grad():
        p_bar, logq = logp.exp(), torch.log_softmax(t, -1)
        D_bar = (p_bar * (logp - logq)).sum(-1, keepdim=True)
        A = D_bar - (logp - logq)
    (-(p_bar * A * logp).sum()).backward()
    torch.testing.assert_close(za.grad, zb.grad, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ L_OPD: fused == materialised


def _materialised(hs, ht, W, b, temperature):
    zs = hs @ W.T + (b if b is not None else 0)
    zt = ht @ W.T + (b if b is not None else 0)
    return full_vocab_kl(zs, zt, temperature)


def _inputs(B, T, H, V, dtype, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = (torch.randn(B, T, H, generator=g) * 2).to(dtype).requires_grad_(True)
    ht = (torch.randn(B, T, H, generator=g) * 2).to(dtype).requires_grad_(True)
    W = (torch.randn(V, H, generator=g) / math.sqrt(H)).to(dtype).requires_grad_(True)
    b = (torch.randn(V, generator=g) * 0.5).to(dtype).requires_grad_(True) if bias else None
    return hs, ht, W, b


def assert_rel_close(got, want, rel=1e-5):
    """|got - want| <= rel * max|want| everywhere: relative to the tensor's scale, since float32
    sums over V in another order differ by ~1e-7 absolute on entries near zero."""
    err = (got.double() - want.double()).abs().max().item()
    scale = want.double().abs().max().item()
    assert err <= rel * scale, f"max error {err:.3e} > {rel} x {scale:.3e}"


def _grads(out, upstream, *tensors):
    (out * upstream).sum().backward()
    gs = [t.grad.clone() if t is not None else None for t in tensors]
    for t in tensors:
        if t is not None:
            t.grad = None
    return gs


CASES = [
    # B, T, H, V, chunk, temperature, bias
    (2, 7, 16, 50, 3, 1.0, False),
    (3, 5, 8, 97, 4, 0.7, True),
    (1, 13, 32, 200, 64, 1.3, True),
    (4, 9, 12, 31, 1, 1.0, True),
]


@pytest.mark.parametrize("B,T,H,V,chunk,temperature,bias", CASES)
def test_fused_recompute_matches_materialised(B, T, H, V, chunk, temperature, bias):
    hs, ht, W, b = _inputs(B, T, H, V, torch.float32, bias)
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(T)[None] < lengths[:, None]).float()  # ragged
    upstream = mask * torch.rand(B, T, generator=torch.Generator().manual_seed(2))
    ref = _materialised(hs, ht, W, b, temperature)
    g_ref = _grads(ref, upstream, hs, W, b)
    assert ht.grad is None
    out = fused_full_vocab_kl(hs, ht, W, b, temperature=temperature, chunk_size=chunk)
    assert_rel_close(out, ref.detach())
    g_out = _grads(out, upstream, hs, W, b)
    assert ht.grad is None
    for got, want in zip(g_out, g_ref):
        if want is not None:
            assert_rel_close(got, want)


@pytest.mark.parametrize("B,T,H,V,chunk,temperature,bias", CASES)
def test_fused_weighted_matches_materialised(B, T, H, V, chunk, temperature, bias):
    hs, ht, W, b = _inputs(B, T, H, V, torch.float32, bias, seed=3)
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(4))
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    weights = mask * torch.rand(B, T, generator=torch.Generator().manual_seed(5))
    if B > 1:
        weights[0] = 0.0  # a gated-off sequence
    ref = _materialised(hs, ht, W, b, temperature)
    g_ref = _grads(ref, weights * 0.37, hs, W, b)
    loss, kl = fused_weighted_full_vocab_kl(hs, ht, W, weights, lm_head_bias=b, temperature=temperature, chunk_size=chunk)
    assert_rel_close(loss, (ref.detach() * weights).sum())
    assert_rel_close(kl[weights > 0], ref.detach()[weights > 0])
    assert torch.all(kl[weights == 0] == 0)
    g_out = _grads(loss, 0.37, hs, W, b)  # upstream scale, as beta(k) applies it
    assert ht.grad is None
    for got, want in zip(g_out, g_ref):
        if want is not None:
            assert_rel_close(got, want)


def test_fused_bf16_within_bf16_tolerance():
    hs, ht, W, b = _inputs(2, 11, 32, 300, torch.bfloat16, True, seed=7)
    up = torch.rand(2, 11, generator=torch.Generator().manual_seed(8))
    # reference: the same bf16 inputs, arithmetic in float64
    hs64, ht64, W64, b64 = (x.detach().double().requires_grad_(True) for x in (hs, ht, W, b))
    ref = _materialised(hs64, ht64, W64, b64, 1.0)
    g_ref = _grads(ref, up.double(), hs64, W64, b64)
    for fn in ("recompute", "weighted"):
        if fn == "recompute":
            out = fused_full_vocab_kl(hs, ht, W, b, chunk_size=4)
            torch.testing.assert_close(out.double(), ref.detach(), rtol=3e-2, atol=3e-2)
            g_out = _grads(out, up, hs, W, b)
        else:
            loss, _ = fused_weighted_full_vocab_kl(hs, ht, W, up, lm_head_bias=b, chunk_size=4)
            torch.testing.assert_close(loss.double(), (ref.detach() * up.double()).sum(), rtol=3e-2, atol=3e-2)
            g_out = _grads(loss, 1.0, hs, W, b)
        for got, want in zip(g_out, g_ref):
            assert got.dtype == torch.bfloat16
            rel = (got.double() - want).norm() / want.norm()
            assert rel < 2e-2, (fn, rel)
    assert ht.grad is None


def test_fused_teacher_with_requires_grad_gets_none():
    hs, ht, W, _ = _inputs(1, 4, 8, 20, torch.float32, False)
    fused_full_vocab_kl(hs, ht, W, chunk_size=3).sum().backward()
    assert ht.grad is None and hs.grad is not None and W.grad is not None


# ------------------------------------------------------------------ baselines' terms


def test_rlsd_advantages_hand_values():
    adv = torch.tensor([1.0, -2.0])
    # delta = log q - log p_old: row 0 [+0.1, -1.0], row 1 [+0.1, 0.0]
    tq = torch.tensor([[-1.0, -2.0], [-1.0, -0.5]])
    po = torch.tensor([[-1.1, -1.0], [-1.1, -0.5]])
    out = rlsd_advantages(adv, tq, po, eps_w=0.2, lam=0.5)
    u = torch.tensor([[math.exp(0.1), 0.8], [0.8, 1.0]])  # row 1: exp(-0.1) = 0.905 -> kept? no:
    u[1, 0] = math.exp(-0.1)  # 0.905 in [0.8, 1.2]
    want = adv[:, None] * (0.5 + 0.5 * u)
    torch.testing.assert_close(out, want)


def test_opsd_token_weights_hand_values():
    tq = torch.tensor([[-0.5, -3.0], [-0.5, -0.5]])
    po = torch.tensor([[-1.0, -1.0], [-40.0, -1.0]])
    w = opsd_token_weights(tq, po, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.0], [20.0, 0.5]]))
    w = opsd_token_weights(tq, po, torch.tensor([-1.0, 0.0]))
    assert torch.equal(w, torch.zeros(2, 2))


# ------------------------------------------------------------------ the full objective


def _batch(seed=0, B=4, T=6, V=23, H=10):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, T, H, generator=g, requires_grad=True)
    ht = torch.randn(B, T, H, generator=g)
    W = (torch.randn(V, H, generator=g) / 3).requires_grad_(True)
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    adv = torch.tensor([1.0, -0.5, 0.7, -1.2])
    return hs, ht, W, tokens, mask, adv


def test_sdpg_loss_composes_terms_and_fused_equals_materialised():
    hs, ht, W, tokens, mask, adv = _batch()
    logits = hs @ W.T
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    old = logp.detach() + 0.05
    ref = logp.detach() - 0.1
    kwargs = dict(ref_logp=ref, beta=0.3, alpha=0.2, kl_mode="urkl")
    kl = full_vocab_kl(logits, ht @ W.T)
    loss_m, st_m = sdpg_loss(logp, old, adv, mask, opd=kl, **kwargs)
    # by hand from the terms
    w = mask / mask.sum()
    gate = mask * (adv > 0).float()[:, None]
    pg, _ = policy_loss(logp, old, adv, mask)
    by_hand = (pg * w).sum() + 0.3 * (kl * w * gate).sum() + 0.2 * (ref_kl(logp, ref, "urkl") * w).sum()
    torch.testing.assert_close(loss_m, by_hand)
    assert st_m["gate_fraction"].item() == 0.5
    torch.testing.assert_close(st_m["opd_kl"], (kl * gate).sum() / gate.sum())
    gm = torch.autograd.grad(loss_m, (hs, W))

    logits2 = hs @ W.T
    logp2 = torch.log_softmax(logits2, -1).gather(-1, tokens[..., None]).squeeze(-1)
    loss_f, st_f = sdpg_loss(logp2, old, adv, mask, opd=FusedKLInputs(hs, ht, W, chunk_size=5), **kwargs)
    torch.testing.assert_close(loss_f, loss_m)
    gf = torch.autograd.grad(loss_f, (hs, W))
    for a, b in zip(gf, gm):
        assert_rel_close(a, b)
    torch.testing.assert_close(st_f["opd_kl"], st_m["opd_kl"])


def test_sdpg_loss_gate_off_and_gated_norm_and_opcd():
    hs, ht, W, tokens, mask, adv = _batch(1)
    logits = hs @ W.T
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    kl = full_vocab_kl(logits, ht @ W.T).detach()
    # gate off, pg off: OPCD = token-mean of KL over every response token
    loss, st = sdpg_loss(logp, logp.detach(), adv, mask, opd=kl, beta=1.0, gate=False, pg_coef=0.0)
    torch.testing.assert_close(loss, (kl * mask).sum() / mask.sum())
    assert st["gate_fraction"].item() == 1.0
    # gated normalisation: mean over the gated tokens only
    loss, _ = sdpg_loss(logp, logp.detach(), adv, mask, opd=kl, beta=1.0, pg_coef=0.0, opd_norm="gated")
    gate = mask * (adv > 0).float()[:, None]
    torch.testing.assert_close(loss, (kl * gate).sum() / gate.sum())


def test_sdpg_loss_alpha_without_reference_is_an_error():
    logp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="ref_logp"):
        sdpg_loss(logp, logp, torch.ones(1), torch.ones(1, 2), alpha=0.1)
