"""The fused step loss equals the materialised one (values, statistics, gradients to h, W, b) for every
method preset and option, and never builds a [B, T, V] tensor."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sdpg.objective import (
    StepLossSettings,
    agg_weights,
    chunk_sizes,
    hidden_token_logprobs,
    opsd_token_weights,
    rlsd_advantages,
    step_loss,
    token_entropy,
    token_logprobs,
)
from sdpg.training.config import METHOD_PRESETS, AlgoConfig


def assert_rel_close(got, want, rel=1e-5, what="", scale=0.0):
    """|got - want| <= rel * max|want| everywhere (float32 sums over V in another order differ by
    round-off relative to the tensor's scale, not to each entry); ``scale`` raises the floor for values
    formed as differences of larger ones (ppo_kl, a mean of log-prob differences)."""
    err = (got.double() - want.double()).abs().max().item()
    scale = max(scale, want.double().abs().max().item())
    assert err <= rel * max(scale, 1e-30), f"{what}: max error {err:.3e} > {rel} x {scale:.3e}"


def settings_for(method: str, **over) -> StepLossSettings:
    """A preset's loss settings, read from the trainer's config (beta at its peak)."""
    a = AlgoConfig(method=method)
    base = {
        "beta": a.beta,
        "alpha": a.alpha,
        "kl_mode": a.kl_mode,
        "gate": a.gate,
        "opd_norm": a.opd_norm,
        "pg_coef": a.pg_coef,
        "policy_mode": a.policy_loss,
        "clip_low": a.clip_low,
        "clip_high": a.clip_high,
        "clip_c": a.clip_c,
        "loss_agg_mode": a.loss_agg_mode,
    }
    return StepLossSettings(**{**base, **over})


def make_batch(
    B=4, T=7, H=16, V=61, dtype=torch.float32, bias=True, seed=0, method="sdpg_urkl", on_policy=False, teacher=None, spread=3.0
):
    """Hidden states, head, sampled tokens, ragged mask (one sequence fully padded when B > 3), mixed-sign
    advantages (gated-off rows), old / reference / teacher / rollout log-probs near the current ones."""
    g = torch.Generator().manual_seed(seed)
    hs = (torch.randn(B, T, H, generator=g) * spread).to(dtype).requires_grad_(True)
    ht = (torch.randn(B, T, H, generator=g) * spread).to(dtype)
    W = (torch.randn(V, H, generator=g) / math.sqrt(H)).to(dtype).requires_grad_(True)
    b = (torch.randn(V, generator=g) * 0.5).to(dtype).requires_grad_(True) if bias else None
    tokens = torch.randint(0, V, (B, T), generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    if B > 3:
        lengths[3] = 0  # an empty response
    mask = (torch.arange(T)[None] < lengths[:, None]).float()  # [B, T] ragged
    adv = torch.randn(B, generator=g)
    adv[0], adv[1] = 1.3, -0.7  # one gated in, one gated out
    with torch.no_grad():
        cur = token_logprobs(torch.nn.functional.linear(hs, W, b), tokens)  # [B, T]

    def noise(s):
        return torch.randn(B, T, generator=g) * s

    old = None if on_policy else cur + noise(0.2)  # ratios both inside and outside the clip range
    ref = cur + noise(1.0)
    teacher_logp = cur + noise(1.0)
    rollout = cur + noise(0.2)
    a = AlgoConfig(method=method)
    tok_adv = None
    base = cur if old is None else old
    if a.advantage == "rlsd":
        tok_adv = rlsd_advantages(adv, teacher_logp, base, a.rlsd_eps_w, a.rlsd_lambda)
    elif a.advantage == "opsd":
        tok_adv = opsd_token_weights(teacher_logp, base, adv, a.opsd_max_weight)
    use_teacher = a.beta > 0 if teacher is None else teacher
    return {
        "hs": hs,
        "W": W,
        "b": b,
        "tokens": tokens,
        "adv": adv,
        "mask": mask,
        "ht": ht if use_teacher else None,
        "old": old,
        "ref": ref,
        "rollout": rollout,
        "tok_adv": tok_adv,
    }


def run(d, st, impl, chunk=None, tis=False, weights=None, opd_weights=None, ref=True, student_chunk=None):
    for t in (d["hs"], d["W"], d["b"]):
        if t is not None:
            t.grad = None
    loss, stats, out = step_loss(
        d["hs"],
        d["W"],
        d["b"],
        d["tokens"],
        d["adv"],
        d["mask"],
        st,
        teacher_hidden=d["ht"],
        old_logp=d["old"],
        ref_logp=d["ref"] if ref else None,
        rollout_logp=d["rollout"] if tis else None,
        token_advantages=d["tok_adv"],
        token_weights=weights,
        opd_token_weights=opd_weights,
        impl=impl,
        chunk_size=chunk,
        student_chunk_size=student_chunk,
    )
    (loss * 0.37).backward()  # an upstream scale, as gradient accumulation or FSDP's world size applies
    grads = [t.grad.clone() if t is not None and t.grad is not None else None for t in (d["hs"], d["W"], d["b"])]
    return loss.detach(), stats, out, grads


def compare(d, st, chunk, rel=1e-5, **kw):
    ref_loss, ref_stats, ref_out, ref_grads = run(d, st, "materialised", **kw)
    loss, stats, out, grads = run(d, st, "fused", chunk=chunk, **kw)
    # the loss sums signed per-token terms (|A| ratio each) and may cancel: its round-off is relative to them
    assert_rel_close(loss, ref_loss, rel, "loss", scale=d["adv"].abs().max().item())
    assert set(stats) == set(ref_stats)
    m = d["mask"] > 0
    logp_scale = ref_out.logp[m].abs().max().item()
    for k in ref_stats:
        floor = logp_scale if k in ("ppo_kl", "ref_kl") else d["adv"].abs().max().item() if k == "pg_loss" else 0.0
        assert_rel_close(stats[k], ref_stats[k], rel, k, scale=floor)
    assert_rel_close(out.logp[m], ref_out.logp[m], rel, "logp")
    assert_rel_close(out.entropy[m], ref_out.entropy[m], rel, "entropy")
    if d["ht"] is not None:
        distilled = out.opd_kl != 0
        assert_rel_close(out.opd_kl[distilled], ref_out.opd_kl[distilled], rel, "opd_kl")
    for name, got, want in zip(("h", "W", "b"), grads, ref_grads):
        if want is not None:
            assert got.dtype == want.dtype
            assert_rel_close(got, want, rel, f"grad {name}")
    if d["ht"] is not None:
        assert d["ht"].grad is None
    return loss, stats, grads


# ------------------------------------------------------------------ every preset, ragged, odd chunks, tau != 1


@pytest.mark.parametrize("method", sorted(METHOD_PRESETS))
@pytest.mark.parametrize("chunk,temperature,on_policy", [(3, 1.0, False), (5, 0.7, True), (64, 1.3, False)])
def test_every_preset_matches_materialised(method, chunk, temperature, on_policy):
    d = make_batch(method=method, on_policy=on_policy, seed=zlib.crc32(f"{method}{chunk}".encode()) % 1000)
    st = settings_for(method, temperature=temperature, kl_student_temperature=temperature, kl_teacher_temperature=temperature)
    _, stats, grads = compare(d, st, chunk)
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    if d["ht"] is not None and st.gate:
        assert stats["opd_tokens"] < d["mask"].sum()  # the gate left rows out


@pytest.mark.parametrize("method", ["sdpg_urkl", "opcd"])
def test_preset_with_peak_coefficients_each_term_visible(method):
    """With beta = alpha = 1 (and an entropy bonus) every term's gradient is of the same order: none hides below 1e-5."""
    d = make_batch(method=method, seed=11)
    compare(d, settings_for(method, beta=1.0, alpha=1.0 if method != "opcd" else 0.0, entropy_coef=0.5), chunk=4)


@pytest.mark.parametrize("term", ["pg", "opd", "ref", "entropy"])
def test_each_term_alone(term):
    """One term at a time, the others switched off: each gradient path checked on its own."""
    st = StepLossSettings(
        pg_coef=float(term == "pg"),
        beta=float(term == "opd"),
        alpha=float(term == "ref"),
        entropy_coef=float(term == "entropy"),
        kl_mode="ufkl",
        temperature=0.8,
        kl_student_temperature=0.8,
        kl_teacher_temperature=0.8,
    )
    d = make_batch(seed=21, teacher=term == "opd")
    _, _, grads = compare(d, st, chunk=3)
    assert grads[1].abs().sum() > 0


@pytest.mark.parametrize("kl_mode", ["urkl", "ufkl", "rkl", "fkl", "k1", "k2", "k3"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
def test_reference_surrogates_and_aggregations(kl_mode, agg):
    st = StepLossSettings(alpha=0.5, kl_mode=kl_mode, beta=0.3, loss_agg_mode=agg, opd_norm="gated")
    compare(make_batch(seed=31, teacher=True), st, chunk=2)


def test_reinforce_and_dual_clip_bind():
    d = make_batch(seed=41, teacher=True, spread=4.0)
    compare(d, StepLossSettings(policy_mode="reinforce", beta=0.5, alpha=0.1), chunk=4)
    d["old"] = d["old"] + torch.randn(d["old"].shape, generator=torch.Generator().manual_seed(42))  # ratios far from 1
    st = StepLossSettings(clip_low=0.05, clip_high=0.05, clip_c=1.5, beta=0.5)  # clips and the dual clip bind
    _, stats, _ = compare(d, st, chunk=4)
    assert stats["pg_clipfrac"] > 0 and stats["pg_clipfrac_lower"] > 0


# ------------------------------------------------------------------ student-only rows: larger head GEMMs


def test_chunk_sizes_per_path():
    """Auto: distilled chunks by the [c, V] float32 budget, student-only head GEMMs 4x that; an explicit chunk
    caps every head GEMM at 2 x chunk rows; never more rows than there are."""
    V = 151936
    assert (64 * V * 4 <= 48 * 2**20) and (128 * V * 4 > 48 * 2**20)  # the CPU budget's chunk at Qwen3's V
    assert chunk_sizes(V, 4096, "cpu") == (64, 256)
    assert chunk_sizes(V, 4096, "cuda") == (512, 2048)
    assert chunk_sizes(V, 100, "cpu") == (64, 100)
    assert chunk_sizes(V, 40, "cpu") == (40, 40)
    assert chunk_sizes(V, 4096, "cpu", chunk_size=8) == (8, 16)
    assert chunk_sizes(V, 4096, "cpu", chunk_size=8, student_chunk_size=30) == (8, 30)
    assert chunk_sizes(V, 4096, "cpu", chunk_size=8, student_chunk_size=3) == (8, 8)  # at least a softmax block
    assert chunk_sizes(V, 20, "cpu", chunk_size=8, student_chunk_size=30) == (8, 20)
    # compiled: no softmax temporaries, so the student-only GEMMs get 8 chunks' rows and a distilled chunk 2 chunks'
    # positions; an explicit chunk caps as before
    assert chunk_sizes(V, 4096, "cpu", compiled=True) == (128, 512)
    assert chunk_sizes(V, 4096, "cpu", chunk_size=8, compiled=True) == (8, 16)


@pytest.mark.parametrize("method", ["grpo", "grpo_k3", "sdpg_urkl"])
@pytest.mark.parametrize("chunk,student_chunk", [(3, 10), (4, 8), (2, 64)])
def test_student_rows_in_larger_head_gemms(method, chunk, student_chunk):
    """Student-only rows several softmax blocks per head GEMM (a group size that is not a multiple of the
    block, one larger than the batch): the same loss, statistics and gradients as the materialised path."""
    d = make_batch(method=method, seed=zlib.crc32(f"{method}{chunk}{student_chunk}".encode()) % 1000, B=5, T=9)
    st = settings_for(method, temperature=0.8, entropy_coef=0.01 if chunk == 4 else 0.0)
    _, _, grads = compare(d, st, chunk, student_chunk=student_chunk)
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0 and grads[2].abs().sum() > 0


def test_student_rows_in_larger_head_gemms_bf16():
    """bf16 logits of a student-only group: softmax blocks in float32 copies, dL/dz written back in bf16."""
    d = make_batch(seed=105, dtype=torch.bfloat16, method="grpo", B=3, T=9, H=32, V=257)
    st = settings_for("grpo", entropy_coef=0.01)
    loss, _, _, grads = run(d, st, "fused", chunk=2, student_chunk=7)
    loss2, _, _, grads2 = run(d, st, "fused", chunk=2)  # head GEMMs of 2 x chunk rows
    torch.testing.assert_close(loss, loss2, rtol=1e-3, atol=1e-4)
    d64 = {
        k: (v.detach().double().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
        for k, v in d.items()
    }
    _, _, _, ref_grads = run(d64, st, "materialised")
    for got, want in zip(grads, ref_grads):
        assert got.dtype == torch.bfloat16
        assert (got.double() - want).norm() / want.norm() < 2e-2


# ------------------------------------------------------------------ options


def test_kl_clamp_clamped_positions_get_no_gradient():
    d = make_batch(seed=51, teacher=True, spread=5.0)
    st = StepLossSettings(beta=1.0, pg_coef=0.0, gate=False)
    _, _, out = step_loss(d["hs"], d["W"], d["b"], d["tokens"], d["adv"], d["mask"], st, teacher_hidden=d["ht"], impl="fused")
    kl = out.opd_kl[d["mask"] > 0]
    srt = kl.sort().values
    clamp = float(srt[len(srt) // 2 - 1] + srt[len(srt) // 2]) / 2  # half of the positions clamped, no ties
    st = StepLossSettings(beta=1.0, pg_coef=0.0, gate=False, kl_clamp=clamp)
    _, _, grads = compare(d, st, chunk=3)
    clamped = (out.opd_kl > clamp) & (d["mask"] > 0)
    assert clamped.any() and (grads[0][clamped] == 0).all()  # those positions' h get nothing
    assert (grads[0][~clamped & (d["mask"] > 0)].abs().sum(-1) > 0).all()


def test_temperature_divides_only_the_student():
    """The authors' KL: p = softmax(z_s / tau), q = softmax(z_t) undivided; log pi(y_t) at tau."""
    d = make_batch(seed=61, method="sdpg_ufkl")
    st = settings_for(
        "sdpg_ufkl",
        beta=1.0,
        temperature=0.6,
        kl_student_temperature=0.6,
        kl_teacher_temperature=1.0,
        kl_clamp=20.0,
        entropy_coef=0.02,
    )
    compare(d, st, chunk=5)
    st = settings_for("sdpg_ufkl", beta=1.0, temperature=0.6, kl_student_temperature=1.4, kl_teacher_temperature=1.0)
    compare(d, st, chunk=5)  # the KL's temperature differs from the log-probs' one: two softmaxes per chunk


@pytest.mark.parametrize("on_policy", [False, True])
def test_truncated_importance_sampling(on_policy):
    d = make_batch(seed=71, method="rlsd", on_policy=on_policy)
    compare(d, settings_for("rlsd", tis_cap=1.1), chunk=3, tis=True)


def test_micro_batch_weights_given_by_the_caller():
    """The trainer passes weights normalised over the whole minibatch and its own OPD weights."""
    d = make_batch(seed=81, teacher=True)
    m = d["mask"]
    w = agg_weights(m, "token-mean", n_tokens=float(m.sum()) * 3)
    opd_w = w * (d["adv"] > 0).float()[:, None] * (d["tokens"] != 5).float()  # gate and a stop-token exclusion
    compare(d, settings_for("sdpg_urkl", beta=0.5), chunk=4, weights=w, opd_weights=opd_w)


def test_zero_weights_give_zero_gradients_and_every_gradient_buffer():
    """A zero-weight micro-batch (FSDP's padding forwards) still returns gradient tensors, all zero."""
    d = make_batch(seed=91, teacher=True)
    z = torch.zeros_like(d["mask"])
    loss, _, _, grads = run(d, settings_for("sdpg_urkl"), "fused", chunk=3, weights=z, opd_weights=z)
    assert float(loss) == 0.0 and all(g is not None and not g.any() for g in grads)


def test_no_head_gradient_when_the_head_is_frozen():
    d = make_batch(seed=95, teacher=True)
    d["W"].requires_grad_(False)
    d["b"].requires_grad_(False)
    _, _, _, grads = run(d, settings_for("sdpg_urkl"), "fused", chunk=3)
    assert grads[1] is None and grads[2] is None and grads[0].abs().sum() > 0


# ------------------------------------------------------------------ bf16


def test_bf16_within_bf16_tolerance():
    """bf16 hidden states and head: the fused loss against float64 arithmetic on the same bf16 values."""
    d = make_batch(seed=101, dtype=torch.bfloat16, teacher=True, B=3, T=9, H=32, V=257)
    st = settings_for("sdpg_urkl", beta=1.0, alpha=1.0, entropy_coef=0.01, kl_clamp=20.0)
    loss, _, out, grads = run(d, st, "fused", chunk=4)
    assert all(g.dtype == torch.bfloat16 for g in grads)
    d64 = {
        k: (v.detach().double().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
        for k, v in d.items()
    }
    ref_loss, _, ref_out, ref_grads = run(d64, st, "materialised")
    torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-2, atol=2e-3)
    m = d["mask"] > 0
    torch.testing.assert_close(out.logp[m].double(), ref_out.logp[m], rtol=2e-2, atol=2e-2)
    for got, want in zip(grads, ref_grads):
        rel = (got.double() - want).norm() / want.norm()
        assert rel < 2e-2, rel


# ------------------------------------------------------------------ no-grad passes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hidden_token_logprobs_match_materialised(dtype):
    d = make_batch(seed=111, dtype=dtype, B=3, T=10, V=97)
    with torch.no_grad():
        logits = torch.nn.functional.linear(d["hs"], d["W"], d["b"])
        want_lp, want_ent = token_logprobs(logits, d["tokens"], 0.7), token_entropy(logits, 0.7)
    lp, ent = hidden_token_logprobs(d["hs"], d["W"], d["b"], d["tokens"], 0.7, mask=d["mask"], chunk_size=4)
    m = d["mask"] > 0
    rel = 1e-5 if dtype == torch.float32 else 1e-2
    assert_rel_close(lp[m], want_lp[m], rel)
    assert_rel_close(ent[m], want_ent[m], rel)
    assert (lp[~m] == 0).all() and not lp.requires_grad
    lp2, none = hidden_token_logprobs(d["hs"], d["W"], d["b"], d["tokens"], 0.7, with_entropy=False, chunk_size=7)
    assert none is None
    assert_rel_close(lp2, want_lp, rel)
    lp3, ent3 = hidden_token_logprobs(
        d["hs"], d["W"], d["b"], d["tokens"], 0.7, mask=d["mask"], chunk_size=3, student_chunk_size=8
    )  # head GEMMs of 8 rows, softmax 3 at a time
    assert_rel_close(lp3[m], want_lp[m], rel)
    assert_rel_close(ent3[m], want_ent[m], rel)


# ------------------------------------------------------------------ no [B, T, V] tensor


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("impl", ["fused", "materialised"])
def test_no_batch_by_vocabulary_tensor(impl):
    B, T, V, H, chunk = 4, 32, 1000, 8, 8
    d = make_batch(B=B, T=T, V=V, H=H, seed=121, teacher=True)
    st = settings_for("sdpg_urkl", beta=1.0, entropy_coef=0.01)
    with _LargestTensor() as probe:
        loss, _, _ = step_loss(
            d["hs"],
            d["W"],
            d["b"],
            d["tokens"],
            d["adv"],
            d["mask"],
            st,
            teacher_hidden=d["ht"],
            old_logp=d["old"],
            ref_logp=d["ref"],
            impl=impl,
            chunk_size=chunk,
        )
        loss.backward()
        hidden_token_logprobs(d["hs"], d["W"], d["b"], d["tokens"], chunk_size=chunk)
    if impl == "fused":
        assert probe.largest <= 2 * chunk * V  # student and teacher rows of one chunk
    else:
        assert probe.largest >= B * T * V  # the probe sees the materialised logits


def test_student_groups_bound_the_largest_tensor():
    """GRPO (student rows only) with head GEMMs of 24 rows: no tensor above 24 x V, none [B, T, V]."""
    B, T, V, H = 4, 32, 1000, 8
    d = make_batch(B=B, T=T, V=V, H=H, seed=123, method="grpo")
    with _LargestTensor() as probe:
        loss, _, _ = step_loss(
            d["hs"], d["W"], d["b"], d["tokens"], d["adv"], d["mask"], settings_for("grpo"), chunk_size=8, student_chunk_size=24
        )
        loss.backward()
    assert 16 * V < probe.largest <= 24 * V


# ------------------------------------------------------------------ the compiled per-chunk arithmetic
# torch.compile builds its kernels once per process (tens of seconds on a loaded CPU): slow tests only.


@pytest.fixture(scope="module")
def inductor_cache_in_tmp(tmp_path_factory):
    """The build's on-disk cache in the test's tmp folder, not a /tmp directory shared with other processes
    (two processes building the same kernel there can read each other's half-written library)."""
    import os

    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("inductor"))
    yield
    if old is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


def compare_compiled(d, st, chunk, rel=1e-5, student_chunk=None, **kw):
    """fused_compiled against the eager fused path on the same inputs: loss, statistics, per-token outputs
    and gradients to float32 round-off (measured up to 2.2e-6 relative on dL/dh: another summation order)."""
    want = run(d, st, "fused", chunk=chunk, student_chunk=student_chunk, **kw)
    got = run(d, st, "fused_compiled", chunk=chunk, student_chunk=student_chunk, **kw)
    assert_rel_close(got[0], want[0], rel, "loss", scale=d["adv"].abs().max().item())
    assert set(got[1]) == set(want[1])
    m = d["mask"] > 0
    for k in want[1]:
        floor = want[2].logp[m].abs().max().item() if k in ("ppo_kl", "ref_kl") else d["adv"].abs().max().item()
        assert_rel_close(got[1][k], want[1][k], rel, k, scale=floor)
    assert_rel_close(got[2].logp, want[2].logp, rel, "logp")
    assert_rel_close(got[2].entropy, want[2].entropy, rel, "entropy")
    assert (got[2].opd_kl is None) == (want[2].opd_kl is None)
    if want[2].opd_kl is not None:
        assert_rel_close(got[2].opd_kl, want[2].opd_kl, rel, "opd_kl")
    for name, g, w in zip("hWb", got[3], want[3]):
        assert (g is None) == (w is None)
        if w is not None:
            assert g.dtype == w.dtype
            assert_rel_close(g, w, rel, f"grad {name}")
    return got


@pytest.mark.slow
@pytest.mark.usefixtures("inductor_cache_in_tmp")
@pytest.mark.parametrize(
    "method,over,chunk,student_chunk",
    [
        ("grpo", {}, None, None),  # auto chunks: every student-only group in one softmax block
        ("sdpg_urkl", {}, 3, 7),  # distilled and gated-off rows, groups not a multiple of the chunk
        ("sdpg_urkl", {"entropy_coef": 0.01, "kl_clamp": 0.3, "temperature": 0.7, "kl_student_temperature": 1.3}, 4, None),
        ("opcd", {"tis_cap": 2.0, "kl_teacher_temperature": 0.9}, 2, 5),
    ],
)
def test_compiled_equals_eager(method, over, chunk, student_chunk):
    d = make_batch(method=method, seed=zlib.crc32(f"compiled{method}{chunk}".encode()) % 1000, B=5, T=9)
    st = settings_for(method, **over)
    _, _, out, grads = compare_compiled(d, st, chunk, student_chunk=student_chunk, tis=st.tis_cap is not None)
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0  # the comparison saw real gradients
    if st.kl_clamp is not None:
        assert (out.opd_kl >= st.kl_clamp).any()  # the clamp binds: clamped rows' zero gradient is compared too


@pytest.mark.slow
@pytest.mark.usefixtures("inductor_cache_in_tmp")
def test_compiled_bf16_writes_bf16_gradients_within_tolerance():
    """bf16 logits read as float32 inside the kernels, dL/dz written back over them in bf16: against float64
    arithmetic on the same bf16 values, as the eager path is held to."""
    d = make_batch(seed=101, dtype=torch.bfloat16, teacher=True, B=3, T=9, H=32, V=257)
    st = settings_for("sdpg_urkl", beta=1.0, alpha=1.0, entropy_coef=0.01, kl_clamp=20.0)
    loss, _, out, grads = run(d, st, "fused_compiled", chunk=4)
    assert all(g.dtype == torch.bfloat16 for g in grads)
    d64 = {
        k: (v.detach().double().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
        for k, v in d.items()
    }
    ref_loss, _, ref_out, ref_grads = run(d64, st, "materialised")
    torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-2, atol=2e-3)
    m = d["mask"] > 0
    torch.testing.assert_close(out.logp[m].double(), ref_out.logp[m], rtol=2e-2, atol=2e-2)
    for got, want in zip(grads, ref_grads):
        assert (got.double() - want).norm() / want.norm() < 2e-2


@pytest.mark.slow
@pytest.mark.usefixtures("inductor_cache_in_tmp")
def test_compiled_kernels_are_built_once_for_any_group():
    """After first steps whose every block is its whole group (as a short warm-up's are; at a generic row
    count and at one row, which dynamo specialises once), other batch shapes, chunk offsets and group sizes reuse
    the built kernels. A chunk's rows handed to dynamo as a view of the group's buffer made it guard on the
    buffer's size: a rebuild at the first real-sized group, inside the step's time and memory."""
    st = settings_for("sdpg_urkl")
    for chunk, student_chunk in [(4, 4), (1, 1)]:
        run(make_batch(method="sdpg_urkl", seed=11, B=5, T=9), st, "fused_compiled", chunk=chunk, student_chunk=student_chunk)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed, T, chunk, student_chunk in [(12, 9, 4, 12), (13, 13, 5, 10), (14, 6, 2, 6)]:
            d = make_batch(method="sdpg_urkl", seed=seed, B=5, T=T)
            compare_compiled(d, st, chunk, student_chunk=student_chunk)


@pytest.mark.slow
@pytest.mark.usefixtures("inductor_cache_in_tmp")
@pytest.mark.parametrize("same_tau", [True, False])
def test_compiled_kernels_by_hand(same_tau):
    """The compiled statistics and dL/dz on a 3-token vocabulary: student logits 7 + log(1, 2, 1) (p = 1/4, 1/2,
    1/4), teacher logits all -3 (q = 1/3), y = 1. log p(y) = -log 2, H = 1.5 log 2, KL = 0.5 log(9/8); with
    g = 0.5, e = -0.1, k = 2: dL/dz_v = p_v (k (log p_v - log q_v - KL) - e (log p_v + H) - g), + g at y. The
    logits' offsets check the max shift; ``same_tau`` False takes the KL's own softmax branch (tau_s = tau = 1)."""
    from sdpg.objective.fused_step import _compiled, _dz_student_, _dz_teacher_, _stats_student, _stats_teacher

    ln2, ln3 = math.log(2.0), math.log(3.0)
    z = torch.tensor([[7.0, 7.0 + ln2, 7.0], [-3.0, -3.0, -3.0]])  # [2c, V], c = 1
    y = torch.tensor([1])
    logp, ent, lse, kl, lse_k, lse_q = _compiled(_stats_teacher)(z.clone(), y, 1.0, 1.0, 1.0, same_tau)
    H, KL = 1.5 * ln2, 0.5 * math.log(9 / 8)
    for got, want in [(logp, -ln2), (ent, H), (lse, 7 + 2 * ln2), (kl, KL), (lse_k, 7 + 2 * ln2), (lse_q, -3 + ln3)]:
        assert abs(got.item() - want) < 1e-6, (got, want)
    s_logp, s_ent, s_lse = _compiled(_stats_student)(z[:1].clone(), y, 1.0)
    assert abs(s_logp.item() + ln2) < 1e-6 and abs(s_ent.item() - H) < 1e-6 and abs(s_lse.item() - 7 - 2 * ln2) < 1e-6
    g, e, k = torch.tensor([0.5]), torch.tensor([-0.1]), torch.tensor([2.0])
    p = [0.25, 0.5, 0.25]
    student = [pv * (-e.item() * (math.log(pv) + H) - 0.5) for pv in p]
    with_kl = [sv + pv * 2.0 * (math.log(pv) + ln3 - KL) for sv, pv in zip(student, p)]
    out = torch.empty(1, 3)
    _compiled(_dz_teacher_)(out, z.clone(), lse, lse_k, lse_q, g, e, ent, k, kl, 1.0, 1.0, 1.0)
    torch.testing.assert_close(out[0], torch.tensor(with_kl), rtol=0, atol=1e-6)
    zs = z[:1].clone()
    _compiled(_dz_student_)(zs, lse, g, e, ent, 1.0)  # over the logits themselves
    torch.testing.assert_close(zs[0], torch.tensor(student), rtol=0, atol=1e-6)
