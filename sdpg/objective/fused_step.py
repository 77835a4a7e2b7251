"""The whole loss of a micro-batch from last hidden states, without a [B, T, V] tensor.

``step_loss`` takes the student's last hidden states h [B, T, H] (and the teacher's, when distilling),
the output head W [V, H] (+ b [V]) and the sampled tokens, and returns the full objective

    L = pg_coef * L_out + beta * L_OPD+ + alpha * L_K - entropy_coef * H

with its statistics and the per-token log pi(y_t), entropy and KL. ``impl="materialised"`` is the
reference: logits [B, T, V], ``token_logprobs``, ``full_vocab_kl`` and ``sdpg_loss`` under autograd.
``impl="fused"`` computes the same values and gradients ``chunk_size`` positions at a time.

Design (docs/objective.md, "The fused step loss"): per position t the loss depends on the logits z_t
only through three scalars, log p_t(y_t), the entropy H_t and KL_t, so

    dL/dz_t = g_t (onehot(y_t) - p_t)/tau - e_t p_t (log p_t + H_t)/tau + k_t p_t (log p_t - log q_t - KL_t)/tau_s

with g_t = dL/dlog p_t(y_t), e_t = dL/dH_t = -entropy_coef w_t, k_t = beta w^OPD_t [KL_t <= clamp].
e_t and k_t are known before the forward. g_t depends on the ratio, i.e. on log p_t(y_t) itself, but
only on that one position's value and on per-token inputs (old and reference log-probs, advantage,
importance weight, aggregation weight): it is known as soon as the chunk holding t has its
log-softmax. So each chunk computes its logits once, evaluates g_t by autograd through the same
``policy_loss`` / ``ref_kl`` used by the materialised loss (on [chunk] scalars), forms dL/dz for the
chunk and multiplies it into dL/dh and dL/dW right away. One pass, no recomputation: the same four
head GEMMs as the materialised path (student and teacher logits, dL/dh, dL/dW), no second pass over
the chunks. The backward only scales the stored gradients by the incoming scalar.

Positions are split into distilled ones (w^OPD != 0: student and teacher rows share one GEMM) and
the rest (student rows only); padding is never computed, and reads 0 in the per-token outputs.
Student-only rows go through the head ``student_chunk_size`` at a time (``chunk_sizes``: by default 4x a
distilled chunk's positions): a head GEMM of only c rows streams the [V, H] head three times per c rows
(logits, dL/dh, read-modify-write of dL/dW) and on CPU made GRPO's fused step 1.37x the materialised time;
their softmax arithmetic still runs ``chunk_size`` rows at a time inside the group's logits buffer, which
then receives dL/dz in place. Distilled chunks' dL/dz is gathered the same way, so that every dL/dh and dL/dW GEMM
has ``student_chunk_size`` rows. Softmax arithmetic is float32; GEMMs run in the input dtype (bf16 on GPUs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sdpg.objective.fused import _accumulate_grads, auto_chunk_size
from sdpg.objective.loss import OPDNorm, opd_weights, sdpg_loss
from sdpg.objective.terms import (
    DistillDtype,
    LossAggMode,
    PolicyLossMode,
    RefKLMode,
    agg_weights,
    full_vocab_kl,
    gate_mask,
    policy_loss,
    ref_kl,
    tis_weights,
    token_entropy,
    token_logprobs,
)

StepLossImpl = Literal["fused", "fused_compiled", "materialised"]
STEP_LOSS_IMPLS: tuple[str, ...] = ("fused", "fused_compiled", "materialised")

# Student-only positions per head GEMM, as a multiple of the auto chunk: their logits [4c, V] plus one [c, V]
# softmax temporary are about what a distilled chunk holds (student and teacher logits [2c, V], p and
# logsumexp's temporary [c, V] each), since they need no teacher logits.
_AUTO_STUDENT_CHUNKS = 4
# The compiled softmax arithmetic holds no [c, V] temporary (statistics and dL/dz are fused kernels over the
# logits), so about the same budget holds 8 chunks' rows: half the passes of the [V, H] head and of its gradient;
# and a distilled chunk of 2 chunks' positions (c student + c teacher rows per logits GEMM: 256 at V = 151,936 on
# CPU, where 128-row GEMMs ran about 12 % slower).
_AUTO_STUDENT_CHUNKS_COMPILED = 8
_AUTO_DISTILLED_CHUNKS_COMPILED = 2


def chunk_sizes(
    vocab_size: int,
    n_rows: int,
    device: str | torch.device = "cpu",
    chunk_size: int | None = None,
    student_chunk_size: int | None = None,
    compiled: bool = False,
) -> tuple[int, int]:
    """(c, G): positions per distilled chunk and per softmax block, and student-only positions per head GEMM.

    ``chunk_size`` None: c = ``auto_chunk_size`` (64 on CPU, 512 on CUDA at V = 151,936) and G = 4c; when
    ``compiled`` (no softmax temporaries) 2c and 8c of that c, the rows a memory budget allows each path. ``chunk_size`` given: it
    caps every [., V] tensor at 2c rows, so G = 2c (the head-GEMM rows of a distilled chunk: c student + c
    teacher). ``student_chunk_size`` sets G explicitly (at least c)."""
    if chunk_size is None:
        c_full = auto_chunk_size(vocab_size, 1 << 30, device)
        c = min((_AUTO_DISTILLED_CHUNKS_COMPILED if compiled else 1) * c_full, n_rows)
        G = (_AUTO_STUDENT_CHUNKS_COMPILED if compiled else _AUTO_STUDENT_CHUNKS) * c_full
    else:
        c, G = int(chunk_size), 2 * int(chunk_size)
    if student_chunk_size is not None:
        G = int(student_chunk_size)
    return max(1, c), max(1, c, min(G, n_rows))


@dataclass(frozen=True)
class StepLossSettings:
    """The scalar settings of one micro-batch's loss: ``sdpg_loss``'s keywords plus the options that
    need the logits (entropy bonus, temperatures, KL clamp) or the rollout engine (TIS)."""

    beta: float = 0.0  # the already scheduled beta(k)
    alpha: float = 0.0
    kl_mode: RefKLMode = "urkl"
    gate: bool = True
    opd_norm: OPDNorm = "all"
    pg_coef: float = 1.0
    policy_mode: PolicyLossMode = "dapo"
    clip_low: float = 0.2
    clip_high: float = 0.28
    clip_c: float | None = 10.0
    loss_agg_mode: LossAggMode = "token-mean"
    entropy_coef: float = 0.0  # entropy bonus: -entropy_coef * sum_t w_t H_t
    temperature: float = 1.0  # divides the student's logits for log pi(y_t) and H_t
    kl_student_temperature: float = 1.0  # p = softmax(z_s / this) inside KL(p || q)
    kl_teacher_temperature: float = 1.0  # q = softmax(z_t / this); the authors: 1 (teacher undivided)
    kl_clamp: float | None = None  # per-token min(KL_t, clamp): clamped positions get no gradient
    tis_cap: float | None = None  # truncated importance sampling against rollout_logp; None: off
    distill_dtype: DistillDtype = "float32"  # the KL's two log-softmaxes; bfloat16 as the authors

    def sdpg_kwargs(self) -> dict:
        d = asdict(self)
        for k in (
            "entropy_coef",
            "temperature",
            "kl_student_temperature",
            "kl_teacher_temperature",
            "kl_clamp",
            "tis_cap",
            "distill_dtype",
        ):
            d.pop(k)
        return d


class TokenOutputs(NamedTuple):
    """Per-token values of the step, detached. ``opd_kl`` is the (clamped) KL on the distilled
    positions; the fused path leaves it 0 elsewhere, the materialised one fills every position."""

    logp: Tensor  # [B, T] log pi_theta(y_t)
    entropy: Tensor  # [B, T]
    opd_kl: Tensor | None  # [B, T]


def effective_advantages(
    advantages: Tensor,
    token_advantages: Tensor | None,
    old_logp: Tensor,
    rollout_logp: Tensor | None,
    mask: Tensor,
    tis_cap: float | None,
) -> Tensor | None:
    """The advantages L_out sees [B, T] (or None: the sequence advantages as they are): per-token
    advantages when given, times the truncated importance weights when TIS is on."""
    if rollout_logp is None or tis_cap is None:
        return token_advantages
    adv = token_advantages if token_advantages is not None else advantages[:, None]  # [B, T] or [B, 1]
    return adv * tis_weights(old_logp, rollout_logp, mask, tis_cap)  # [B, T]


def step_loss(
    student_hidden: Tensor,
    lm_head_weight: Tensor,
    lm_head_bias: Tensor | None,
    tokens: Tensor,
    advantages: Tensor,
    mask: Tensor,
    settings: StepLossSettings,
    *,
    teacher_hidden: Tensor | None = None,
    old_logp: Tensor | None = None,
    ref_logp: Tensor | None = None,
    rollout_logp: Tensor | None = None,
    token_advantages: Tensor | None = None,
    token_weights: Tensor | None = None,
    opd_token_weights: Tensor | None = None,
    entropy_token_weights: Tensor | None = None,
    impl: StepLossImpl = "fused",
    chunk_size: int | None = None,
    student_chunk_size: int | None = None,
) -> tuple[Tensor, dict[str, Tensor], TokenOutputs]:
    """One micro-batch's loss, its statistics (``sdpg_loss``'s) and per-token outputs.

    Args:
        student_hidden: last hidden states predicting the response tokens [B, T, H], with gradient.
        lm_head_weight, lm_head_bias: the output head [V, H], [V] (or None).
        tokens: sampled response tokens [B, T]; advantages: sequence advantages [B]; mask [B, T].
        teacher_hidden: the teacher's hidden states on (c, x, y) at the same positions [B, T, H]
            (no gradient); None switches L_OPD off.
        old_logp: log pi_old(y_t) [B, T]; None means on-policy: pi_old = SG[pi_theta], computed here.
        ref_logp: frozen reference's log-probs [B, T] (needed when alpha > 0).
        rollout_logp: the rollout engine's log-probs [B, T], for TIS (``settings.tis_cap``).
        token_advantages, token_weights, opd_token_weights: as in ``sdpg_loss``.
        entropy_token_weights: aggregation weights of the entropy bonus [B, T]; None: ``token_weights``.
        impl: "fused" (chunked, the default), "fused_compiled" (the same with its per-chunk softmax arithmetic
            through ``torch.compile``: a one-time build per process, then fewer passes over each chunk's logits)
            or "materialised" (the reference).
        chunk_size: positions per chunk (fused); None: by a memory budget (``chunk_sizes``).
        student_chunk_size: positions per dL/dh and dL/dW GEMM, and student-only positions per logits GEMM
            (fused); None: ``chunk_sizes``.
    """
    if impl not in STEP_LOSS_IMPLS:
        raise ValueError(f"unknown step loss impl {impl!r}; expected one of {', '.join(STEP_LOSS_IMPLS)}")
    if settings.alpha != 0.0 and ref_logp is None:
        raise ValueError("alpha > 0 needs ref_logp (the frozen reference's log-probabilities)")
    if teacher_hidden is not None and teacher_hidden.shape != student_hidden.shape:
        raise ValueError(
            f"student and teacher hidden states must have one shape, got {tuple(student_hidden.shape)} "
            f"and {tuple(teacher_hidden.shape)}"
        )
    run = _materialised_step if impl == "materialised" else _fused_step
    return run(
        student_hidden,
        lm_head_weight,
        lm_head_bias,
        tokens,
        advantages,
        mask,
        settings,
        teacher_hidden,
        old_logp,
        ref_logp,
        rollout_logp,
        token_advantages,
        token_weights,
        opd_token_weights,
        entropy_token_weights,
        (chunk_size, student_chunk_size),
        impl == "fused_compiled",
    )


# --------------------------------------------------------------------------------------------
# The reference: materialised logits under autograd
# --------------------------------------------------------------------------------------------


def _materialised_step(
    hs,
    W,
    b,
    tokens,
    advantages,
    mask,
    st: StepLossSettings,
    ht,
    old_logp,
    ref_logp,
    rollout_logp,
    token_advantages,
    token_weights,
    opd_token_weights,
    entropy_token_weights,
    chunks,
    compiled=False,
):
    logits = F.linear(hs, W, b)  # [B, T, V]
    logp = token_logprobs(logits, tokens, st.temperature)  # [B, T]
    with torch.set_grad_enabled(st.entropy_coef != 0.0 and torch.is_grad_enabled()):  # a metric unless a bonus
        ent = token_entropy(logits, st.temperature)  # [B, T]
    old = logp.detach() if old_logp is None else old_logp  # [B, T]
    adv_t = effective_advantages(advantages, token_advantages, old, rollout_logp, mask, st.tis_cap)  # [B, T] | None
    kl = None
    if ht is not None:
        with torch.no_grad():
            zt = F.linear(ht.detach(), W, b)  # [B, T, V]
        if st.distill_dtype != "float32":  # the authors': both log-softmaxes and the KL in bf16
            kl = full_vocab_kl(logits, zt, st.kl_student_temperature, st.kl_teacher_temperature, dtype=st.distill_dtype)
        elif st.kl_student_temperature == st.kl_teacher_temperature:
            kl = full_vocab_kl(logits, zt, st.kl_student_temperature)  # [B, T]
        else:
            kl = full_vocab_kl(logits.float() / st.kl_student_temperature, zt.float() / st.kl_teacher_temperature)  # [B, T]
        if st.kl_clamp is not None:
            kl = kl.clamp(max=st.kl_clamp)  # [B, T]
    loss, stats = sdpg_loss(
        logp,
        old,
        advantages,
        mask,
        token_advantages=adv_t,
        opd=kl,
        ref_logp=ref_logp,
        token_weights=token_weights,
        opd_token_weights=opd_token_weights,
        **st.sdpg_kwargs(),
    )
    if st.entropy_coef != 0.0:
        w = agg_weights(mask, st.loss_agg_mode) if token_weights is None else token_weights  # [B, T]
        w = w if entropy_token_weights is None else entropy_token_weights  # [B, T]
        loss = loss - st.entropy_coef * (ent * w).sum()
    return loss, stats, TokenOutputs(logp.detach(), ent.detach(), kl.detach() if kl is not None else None)


# --------------------------------------------------------------------------------------------
# The fused path
# --------------------------------------------------------------------------------------------


class _Plan:
    """Everything per token, flattened to [N], that the chunks read; and the per-chunk dL/dlog p."""

    def __init__(
        self,
        st,
        tokens,
        advantages,
        mask,
        old_logp,
        ref_logp,
        rollout_logp,
        token_advantages,
        w,
        opd_w,
        ent_w,
        chunks,
        compiled=False,
    ):
        N = tokens.numel()
        self.st = st
        self.compiled = compiled  # the softmax arithmetic through torch.compile (``_chunk_terms_compiled``)
        self.chunk_size, self.student_chunk_size = chunks  # positions per distilled chunk / student-only GEMM
        self.y = tokens.reshape(N).long()  # [N]
        self.m = mask.reshape(N).float()  # [N]
        adv = token_advantages if token_advantages is not None else advantages[:, None].expand_as(tokens)  # [B, T]
        self.adv = adv.reshape(N).float()  # [N]
        self.old = old_logp.reshape(N).float() if old_logp is not None else None  # [N] | None
        self.ref = ref_logp.reshape(N).float() if ref_logp is not None else None  # [N] | None
        self.ro = rollout_logp.reshape(N).float() if rollout_logp is not None and st.tis_cap is not None else None
        self.w = w.reshape(N).float()  # [N]
        self.k = st.beta * opd_w.reshape(N).float() if opd_w is not None else None  # [N] dL/dKL before the clamp
        self.e = -st.entropy_coef * ent_w.reshape(N).float()  # [N] dL/dH
        distilled = opd_w.reshape(N) != 0 if opd_w is not None else torch.zeros(N, dtype=torch.bool, device=tokens.device)
        self.rows_d = distilled.nonzero().view(-1)  # [n_d] student + teacher rows
        self.rows_s = (((self.m != 0) | (self.w != 0) | (self.e != 0)) & ~distilled).nonzero().view(-1)  # [n_s] student rows

    def token_terms(self, r: Tensor, logp: Tensor) -> tuple[Tensor, Tensor]:
        """L_out and L_K of rows ``r`` at log p = ``logp`` [c]: values [c] and dL/dlog p [c], by autograd
        through the same ``policy_loss`` and ``ref_kl`` as ``sdpg_loss``."""
        st = self.st
        x = logp.detach().requires_grad_(True)  # [c]
        with torch.enable_grad():
            old = x.detach() if self.old is None else self.old[r]  # [c]
            adv = self.adv[r]  # [c]
            if self.ro is not None:
                adv = adv * tis_weights(old, self.ro[r], self.m[r], st.tis_cap)  # [c]
            val = torch.zeros_like(x)  # [c]
            if st.pg_coef != 0.0:
                pg, _ = policy_loss(
                    x[None], old[None], adv[None], self.m[r][None], st.clip_low, st.clip_high, st.clip_c, st.policy_mode
                )  # [1, c]
                val = val + st.pg_coef * (pg[0] * self.w[r])  # [c]
            if st.alpha != 0.0:
                assert self.ref is not None  # alpha > 0 needs the reference's log-probs
                val = val + st.alpha * (ref_kl(x, self.ref[r], st.kl_mode) * self.w[r])  # [c]
            if not val.requires_grad:
                return val.detach(), torch.zeros_like(x)
            (g,) = torch.autograd.grad(val.sum(), x)  # [c]
        return val.detach(), g


def _log_softmax_(z: Tensor, temperature: float) -> Tensor:
    """In place: z <- log softmax(z / temperature) over the last dim, float32."""
    if temperature != 1.0:
        z /= temperature  # [c, V]
    z -= torch.logsumexp(z, dim=-1, keepdim=True)  # [c, V]
    return z


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """sum_v a[i, v] b[i, v] [c] without a [c, V] temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)  # [c]


def _chunk_value(plan: _Plan, r: Tensor, logp: Tensor, ent: Tensor, kl: Tensor | None):
    """One chunk's loss value [] and the per-row factors of its dL/dz, shared by the eager and compiled paths:
    g = dL/dlog p(y) [c], e = dL/dH [c], k = dL/dKL [c] (0 where the clamp binds; None without a teacher)."""
    st = plan.st
    val, g = plan.token_terms(r, logp)  # [c], [c]
    e = plan.e[r]  # [c]
    value = val.sum(dtype=torch.float64) + (e * ent).sum(dtype=torch.float64)  # []
    k = None
    if kl is not None:
        assert plan.k is not None  # a teacher chunk comes with its KL weights
        k = plan.k[r]  # [c]
        kl_used = kl if st.kl_clamp is None else kl.clamp(max=st.kl_clamp)  # [c]
        value = value + (k * kl_used).sum(dtype=torch.float64)
        if st.kl_clamp is not None:
            k = k * (kl <= st.kl_clamp).float()  # [c] clamped positions: no gradient
    return value, g, e, k


def _chunk_terms(z: Tensor, r: Tensor, plan: _Plan, need_grad: bool, teacher: bool):
    """One chunk's softmax arithmetic on its float32 logits ``z`` [c, V] (student rows ``r`` only) or
    [2c, V] (student rows, then their teacher rows), overwritten: log p(y) [c], H [c], KL [c] | None,
    loss value [], dL/dz [c, V] | None. On student rows only, dL/dz is written over ``z`` itself.

    Temporaries: p [c, V] and logsumexp's [c, V] (never both), plus, with a teacher, the KL's own.
    """
    st = plan.st
    c, tau, tau_s = r.shape[0], st.temperature, st.kl_student_temperature
    y = plan.y[r]  # [c]
    half = teacher and st.distill_dtype != "float32"  # the KL's log-softmaxes in bf16 (the authors')
    same_tau = not teacher or (tau_s == tau and not half)
    ls_kl: Tensor | None = None  # [c, V] the student's log-probs inside the KL, when not ``ls``
    if half:
        ls_kl = F.log_softmax(z[:c].to(torch.bfloat16) / tau_s, dim=-1)  # [c, V] bf16
    elif not same_tau:
        ls_kl = _log_softmax_(z[:c] / tau_s, 1.0)  # [c, V]
    ls = _log_softmax_(z[:c], tau)  # [c, V] log p
    logp = ls.gather(1, y[:, None]).squeeze(1)  # [c]
    p = ls.exp()  # [c, V]
    ent = -_rowdot(p, ls)  # [c]
    kl = diff = p_kl = None
    if half:
        lq = F.log_softmax(z[c:].to(torch.bfloat16) / st.kl_teacher_temperature, dim=-1)  # [c, V] bf16 log q
        assert ls_kl is not None
        p_kl = ls_kl.exp()  # [c, V] bf16
        diff = ls_kl - lq  # [c, V] bf16
        kl = (p_kl * diff).sum(-1).float()  # [c] as the authors: products and sum in bf16
        diff, p_kl = diff.float(), p_kl.float()  # [c, V] each: the gradient's arithmetic in float32
    elif teacher:
        lq = _log_softmax_(z[c:], st.kl_teacher_temperature)  # [c, V] log q
        if same_tau:
            ls_for_kl, p_kl = ls, p  # [c, V] each
        else:
            assert ls_kl is not None
            ls_for_kl, p_kl = ls_kl, ls_kl.exp()  # [c, V] each
        diff = torch.sub(ls_for_kl, lq, out=lq)  # [c, V] log p - log q
        kl = _rowdot(p_kl, diff)  # [c]
    value, g, e, k = _chunk_value(plan, r, logp, ent, kl)
    if not need_grad:
        return logp, ent, kl, value, None
    has_e = st.entropy_coef != 0.0
    row_shift = (-g - e * ent)[:, None]  # [c, 1]
    if kl is not None and same_tau:  # dz = p (k (log p - log q - KL) - e (log p + H) - g) / tau + g onehot / tau
        assert diff is not None and k is not None
        dz = diff  # [c, V]
        dz -= kl[:, None]
        dz *= k[:, None]
        if has_e:
            dz.addcmul_(ls, -e[:, None])
        dz += row_shift
        dz *= p
    elif has_e:  # dz = p (-e (log p + H) - g) / tau + g onehot / tau
        dz = ls  # [c, V]
        dz *= -e[:, None]
        dz += row_shift
        dz *= p
    else:  # dz = -g p / tau + g onehot / tau, over log p's buffer (p is freed)
        dz = torch.mul(p, -g[:, None], out=ls)  # [c, V]
    del p
    if tau != 1.0:
        dz /= tau
    if kl is not None and not same_tau:  # the KL's own softmax at tau_s
        assert diff is not None and p_kl is not None and k is not None
        diff -= kl[:, None]
        diff *= p_kl
        diff *= (k / tau_s)[:, None]
        dz += diff
    dz.scatter_add_(1, y[:, None], (g / tau)[:, None])
    return logp, ent, kl, value, dz


# --------------------------------------------------------------------------------------------
# The same per-chunk arithmetic through torch.compile (impl="fused_compiled")
# --------------------------------------------------------------------------------------------
# Eager, each step above is one pass over [c, V] (logsumexp alone is several) with its own temporary. Compiled,
# the statistics take two passes over the logits (the row maxima, then every sum at once: exp(z - max) is
# computed once and serves the softmax's normaliser, the entropy and the KL) and dL/dz one elementwise pass,
# written over the logits (student rows) or into the group's dL/dz buffer (distilled rows); no [c, V]
# temporary, in any input dtype (upcast to float32 inside the kernels). With z~ = z/tau - max:
#
#     log Z = log sum exp(z~),   log p(y) = z~_y - log Z,   H = log Z - sum exp(z~) z~ / Z,
#     KL(p || q) = sum exp(z~_p) (z~_p - z~_q) / Z_p - log Z_p + log Z_q.
#
# Same values, another summation order: equal to the eager path to float32 round-off (tests/test_fused_step.py).
# g_t = dL/dlog p_t(y_t) stays eager (autograd through ``policy_loss`` on [c] scalars) between the kernels.
# The kernels take ``detach()``-ed aliases of the chunk's rows: a slice passed as a view makes dynamo guard on
# its base's size, i.e. recompile for every group size.


def _shifted(z: Tensor, tau: Tensor | float) -> tuple[Tensor, Tensor]:
    """z / tau - rowmax [c, V] (float32) and the row maxima [c]."""
    zs = z.float() / tau  # [c, V]
    m = zs.amax(dim=-1)  # [c]
    return zs - m[:, None], m


def _stats_student(z: Tensor, y: Tensor, tau: float) -> tuple[Tensor, Tensor, Tensor]:
    """log p(y) [c], H [c], log Z [c] (the logsumexp of z / tau) of softmax(z / tau), z [c, V] in any dtype."""
    d, m = _shifted(z, tau)  # [c, V], [c]
    ex = d.exp()  # [c, V]
    s = ex.sum(dim=-1)  # [c]
    log_s = s.log()  # [c]
    ent = log_s - (ex * d).sum(dim=-1) / s  # [c]
    logp = d.gather(1, y[:, None]).squeeze(1) - log_s  # [c]
    return logp, ent, m + log_s


def _stats_teacher(
    z: Tensor, y: Tensor, tau: float, tau_s: float, tau_t: float, same_tau: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """As ``_stats_student`` on the student's logits z[:c] (z [2c, V]: student rows, then their teacher rows),
    plus KL(p_tau_s || q_tau_t) [c] and the logsumexps [c] of the KL's student and teacher softmax.
    ``same_tau`` (tau_s == tau): the KL reuses the student's exp."""
    c = z.shape[0] // 2
    d, m = _shifted(z[:c], tau)  # [c, V], [c]
    ex = d.exp()  # [c, V]
    s = ex.sum(dim=-1)  # [c]
    log_s = s.log()  # [c]
    ent = log_s - (ex * d).sum(dim=-1) / s  # [c]
    logp = d.gather(1, y[:, None]).squeeze(1) - log_s  # [c]
    dq, mq = _shifted(z[c:], tau_t)  # [c, V], [c]
    log_sq = dq.exp().sum(dim=-1).log()  # [c]
    if same_tau:
        dk, mk, exk, sk = d, m, ex, s  # [c, V], [c], [c, V], [c]
    else:
        dk, mk = _shifted(z[:c], tau_s)  # [c, V], [c]
        exk = dk.exp()  # [c, V]
        sk = exk.sum(dim=-1)  # [c]
    log_sk = sk.log()  # [c]
    kl = (exk * (dk - dq)).sum(dim=-1) / sk - log_sk + log_sq  # [c]
    return logp, ent, m + log_s, kl, mk + log_sk, mq + log_sq


def _dz_student_(z: Tensor, lse: Tensor, g: Tensor, e: Tensor, ent: Tensor, tau: float) -> None:
    """z [c, V] <- p (-e (log p + H) - g) / tau, in place, without the onehot term."""
    ls = z.float() / tau - lse[:, None]  # [c, V]
    z.copy_(ls.exp() * (-e[:, None] * (ls + ent[:, None]) - g[:, None]) / tau)


def _dz_teacher_(
    out: Tensor,
    z: Tensor,
    lse: Tensor,
    lse_k: Tensor,
    lse_q: Tensor,
    g: Tensor,
    e: Tensor,
    ent: Tensor,
    k: Tensor,
    kl: Tensor,
    tau: float,
    tau_s: float,
    tau_t: float,
) -> None:
    """out [c, V] <- the student terms of ``_dz_student_`` + k p_tau_s (log p_tau_s - log q - KL) / tau_s, from
    z [2c, V] (student rows, then teacher rows)."""
    c = z.shape[0] // 2
    ls = z[:c].float() / tau - lse[:, None]  # [c, V]
    lk = z[:c].float() / tau_s - lse_k[:, None]  # [c, V]
    lq = z[c:].float() / tau_t - lse_q[:, None]  # [c, V]
    student = ls.exp() * (-e[:, None] * (ls + ent[:, None]) - g[:, None]) / tau  # [c, V]
    out.copy_(student + lk.exp() * (k[:, None] * (lk - lq - kl[:, None])) / tau_s)


_COMPILED: dict[str, object] = {}


def _compiled(fn):
    """``fn`` through torch.compile, built once per process with dynamic shapes (any chunk's rows, any V)."""
    if fn.__name__ not in _COMPILED:
        _COMPILED[fn.__name__] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn.__name__]


def _chunk_terms_compiled(z: Tensor, r: Tensor, plan: _Plan, need_grad: bool, teacher: bool, out: Tensor | None):
    """``_chunk_terms`` through compiled kernels: z [c, V] (student rows ``r``) or [2c, V] (then their teacher
    rows) in the head's dtype, read as float32 inside the kernels. dL/dz (onehot term included) is written over
    ``z`` (student rows only) or into ``out`` [c, V] (with a teacher) and returned; None without ``need_grad``."""
    st = plan.st
    tau, tau_s, tau_t = st.temperature, st.kl_student_temperature, st.kl_teacher_temperature
    y = plan.y[r]  # [c]
    z = z.detach()  # [c, V] or [2c, V]: not a view to dynamo (see above)
    kl = lse_k = lse_q = None
    if teacher:
        logp, ent, lse, kl, lse_k, lse_q = _compiled(_stats_teacher)(z, y, tau, tau_s, tau_t, tau_s == tau)  # [c] each
    else:
        logp, ent, lse = _compiled(_stats_student)(z, y, tau)  # [c] each
    value, g, e, k = _chunk_value(plan, r, logp, ent, kl)
    if not need_grad:
        return logp, ent, kl, value, None
    if teacher:
        assert out is not None and k is not None and kl is not None and lse_k is not None and lse_q is not None
        dz = out.detach()  # [c, V]
        _compiled(_dz_teacher_)(dz, z, lse, lse_k, lse_q, g, e, ent, k, kl, tau, tau_s, tau_t)
    else:
        dz = z  # [c, V]
        _compiled(_dz_student_)(dz, lse, g, e, ent, tau)
    dz.scatter_add_(1, y[:, None], (g / tau).to(dz.dtype)[:, None])
    return logp, ent, kl, value, dz


class _Acc(NamedTuple):
    """The forward's outputs, filled group by group: per-token values [N] and the gradients (None: not needed)."""

    logp: Tensor  # [N]
    ent: Tensor  # [N]
    kl: Tensor  # [N]
    grad_hs: Tensor | None  # [N, H]
    grad_w: Tensor | None  # [V, H]
    grad_b: Tensor | None  # [V] float32


def _backprop_group(dz: Tensor, rows: Tensor, h: Tensor, W: Tensor, acc: _Acc) -> None:
    """One group's dL/dz [G, V] (head dtype) into dL/dh (rows ``rows``) and the dL/dW accumulator."""
    gh = _accumulate_grads(dz, h, W, acc.grad_w, None)  # [G, H]
    if acc.grad_hs is not None:
        acc.grad_hs[rows] = gh.to(acc.grad_hs.dtype)


def _distilled_group(rg: Tensor, hs: Tensor, ht: Tensor, W: Tensor, b: Tensor | None, plan: _Plan, acc: _Acc) -> Tensor:
    """Distilled rows ``rg`` [G]: c student + c teacher rows per logits GEMM, dL/dz of all G rows gathered into one
    [G, V] buffer for one dL/dh and one dL/dW GEMM. Returns the rows' loss value []. Every view of a [., V] buffer
    is local, so each is freed on return, before the next group's exists."""
    c, st = plan.chunk_size, plan.st
    need_grad = acc.grad_hs is not None or acc.grad_w is not None or acc.grad_b is not None
    compiled = plan.compiled and st.distill_dtype == "float32"  # the bf16 KL (authors') stays eager
    hg = hs[rg]  # [G, H]
    dzg = torch.empty(rg.numel(), W.shape[0], dtype=W.dtype, device=W.device) if need_grad else None  # [G, V]
    total = torch.zeros((), dtype=torch.float64, device=hs.device)
    for j in range(0, rg.numel(), c):
        r = rg[j : j + c]  # [c]
        z = F.linear(torch.cat([hg[j : j + c], ht[r]]), W, b)  # [2c, V] input dtype
        if compiled:
            out = dzg[j : j + c] if dzg is not None else None  # [c, V]
            lp, en, kl_c, value, dz = _chunk_terms_compiled(z, r, plan, need_grad, True, out)
        else:
            lp, en, kl_c, value, dz = _chunk_terms(z.float(), r, plan, need_grad, teacher=True)
        acc.logp[r], acc.ent[r] = lp, en
        assert kl_c is not None  # a teacher chunk has its KL
        acc.kl[r] = kl_c if st.kl_clamp is None else kl_c.clamp(max=st.kl_clamp)
        total += value
        if dz is not None:
            assert dzg is not None
            if acc.grad_b is not None:
                acc.grad_b.add_(dz.sum(dim=0, dtype=torch.float32))  # [V]
            if dz.data_ptr() != dzg[j : j + c].data_ptr():  # eager: a float32 buffer of its own
                dzg[j : j + c] = dz
        del z, dz  # the chunk's logits before the next chunk's
    if dzg is not None:
        _backprop_group(dzg, rg, hg, W, acc)
    return total


def _student_group(r: Tensor, hs: Tensor, W: Tensor, b: Tensor | None, plan: _Plan, acc: _Acc) -> Tensor:
    """Student-only rows ``r`` [G]: one logits GEMM [G, V] whose buffer receives dL/dz in place, softmax
    arithmetic ``chunk_size`` rows at a time (the compiled kernels' one temporary is that size too), one dL/dh
    and one dL/dW GEMM. Returns the rows' loss value []; the [G, V] buffer is freed on return."""
    c = plan.chunk_size
    need_grad = acc.grad_hs is not None or acc.grad_w is not None or acc.grad_b is not None
    h = hs[r]  # [G, H]
    z = F.linear(h, W, b)  # [G, V] input dtype: the logits, then dL/dz
    total = torch.zeros((), dtype=torch.float64, device=hs.device)
    for j in range(0, r.numel(), c):
        zj, rj = z[j : j + c], r[j : j + c]  # [c, V], [c]
        if plan.compiled:
            lp, en, _, value, dz = _chunk_terms_compiled(zj, rj, plan, need_grad, False, None)
        else:
            lp, en, _, value, dz = _chunk_terms(zj.float(), rj, plan, need_grad, teacher=False)
        acc.logp[rj], acc.ent[rj] = lp, en
        total += value
        if dz is not None:
            if acc.grad_b is not None:
                acc.grad_b.add_(dz.sum(dim=0, dtype=torch.float32))  # [V]
            if dz.data_ptr() != zj.data_ptr():  # a float32 copy (bf16 logits): back in the GEMM's dtype
                zj.copy_(dz)
        del zj, dz  # the float32 copy of a bf16 block before the next block's
    if need_grad:
        _backprop_group(z, r, h, W, acc)
    return total


class _FusedStep(torch.autograd.Function):
    """Loss [] with dL/dh, dL/dW, dL/db formed in the forward, group by group; per-token outputs."""

    @staticmethod
    def forward(ctx, hs, W, b, ht, plan: _Plan):  # hs, ht [N, H]; W [V, H]; b [V]
        N = hs.shape[0]
        acc = _Acc(
            logp=hs.new_zeros(N, dtype=torch.float32),
            ent=hs.new_zeros(N, dtype=torch.float32),
            kl=hs.new_zeros(N, dtype=torch.float32),
            grad_hs=torch.zeros_like(hs) if hs.requires_grad else None,
            grad_w=torch.zeros_like(W) if W.requires_grad else None,
            grad_b=torch.zeros(W.shape[0], dtype=torch.float32, device=W.device) if b is not None and b.requires_grad else None,
        )
        total = torch.zeros((), dtype=torch.float64, device=hs.device)
        G = plan.student_chunk_size
        for s in range(0, plan.rows_d.numel(), G):
            total += _distilled_group(plan.rows_d[s : s + G], hs, ht, W, b, plan, acc)
        for s in range(0, plan.rows_s.numel(), G):
            total += _student_group(plan.rows_s[s : s + G], hs, W, b, plan, acc)
        grad_b = acc.grad_b.to(b.dtype) if acc.grad_b is not None else None
        ctx.grads = (acc.grad_hs, acc.grad_w, grad_b)
        ctx.mark_non_differentiable(acc.logp, acc.ent, acc.kl)
        return total.float(), acc.logp, acc.ent, acc.kl

    @staticmethod
    def backward(ctx, grad_loss, _g_logp, _g_ent, _g_kl):
        grads = ctx.grads
        del ctx.grads
        scale = grad_loss.item() if grad_loss.numel() == 1 else grad_loss
        out = [g.mul_(scale) if g is not None and scale != 1.0 else g for g in grads]
        return out[0], out[1], out[2], None, None


def _fused_step(
    hs,
    W,
    b,
    tokens,
    advantages,
    mask,
    st: StepLossSettings,
    ht,
    old_logp,
    ref_logp,
    rollout_logp,
    token_advantages,
    token_weights,
    opd_token_weights,
    entropy_token_weights,
    chunks,
    compiled=False,
):
    B, T, H = hs.shape
    m = mask.float()  # [B, T]
    w = agg_weights(m, st.loss_agg_mode) if token_weights is None else token_weights  # [B, T]
    opd_w = None
    if ht is not None:
        g = gate_mask(advantages, m, st.gate)  # [B, T]
        opd_w = opd_weights(w, g, st.opd_norm, st.loss_agg_mode) if opd_token_weights is None else opd_token_weights
    ent_w = w if entropy_token_weights is None else entropy_token_weights  # [B, T]
    chunks = chunk_sizes(W.shape[0], B * T, hs.device, chunks[0], chunks[1], compiled=compiled)
    plan = _Plan(
        st,
        tokens,
        advantages,
        mask,
        old_logp,
        ref_logp,
        rollout_logp,
        token_advantages,
        w.detach(),
        opd_w.detach() if opd_w is not None else None,
        ent_w.detach(),
        chunks,
        compiled,
    )
    ht_flat = ht.detach().reshape(B * T, H) if ht is not None else None  # [N, H]
    loss, logp, ent, kl = _FusedStep.apply(hs.reshape(B * T, H), W, b, ht_flat, plan)
    logp, ent = logp.view(B, T), ent.view(B, T)  # [B, T] each
    kl = kl.view(B, T) if ht is not None else None  # [B, T]
    # statistics exactly as the materialised path reports them, from the same per-token values
    old = logp if old_logp is None else old_logp  # [B, T]
    adv_t = effective_advantages(advantages, token_advantages, old, rollout_logp, mask, st.tis_cap)  # [B, T] | None
    _, stats = sdpg_loss(
        logp,
        old,
        advantages,
        mask,
        token_advantages=adv_t,
        opd=kl,
        ref_logp=ref_logp,
        token_weights=token_weights,
        opd_token_weights=opd_token_weights,
        **st.sdpg_kwargs(),
    )
    return loss, stats, TokenOutputs(logp, ent, kl)


# --------------------------------------------------------------------------------------------
# No-grad passes: old, reference and teacher log-probs, entropy
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def hidden_token_logprobs(
    hidden: Tensor,
    lm_head_weight: Tensor,
    lm_head_bias: Tensor | None,
    tokens: Tensor,
    temperature: float = 1.0,
    *,
    mask: Tensor | None = None,
    with_entropy: bool = True,
    chunk_size: int | None = None,
    student_chunk_size: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """log pi(y_t) [B, T] and the entropy [B, T] (None without ``with_entropy``) from hidden states
    [B, T, H], chunk by chunk, no gradient. Equal to ``token_logprobs`` / ``token_entropy`` of
    ``linear(hidden, W, b)``. Positions where ``mask`` is 0 are skipped and read 0. Rows go through the
    head ``student_chunk_size`` at a time and through the softmax ``chunk_size`` at a time (``chunk_sizes``)."""
    B, T, H = hidden.shape
    N = B * T
    hs = hidden.reshape(N, H)  # [N, H]
    y = tokens.reshape(N).long()  # [N]
    rows = (mask.reshape(N) != 0).nonzero().view(-1) if mask is not None else torch.arange(N, device=hidden.device)  # [n]
    logp = hidden.new_zeros(N, dtype=torch.float32)  # [N]
    ent = hidden.new_zeros(N, dtype=torch.float32) if with_entropy else None  # [N]
    c, G = chunk_sizes(lm_head_weight.shape[0], N, hidden.device, chunk_size, student_chunk_size)
    for s in range(0, rows.numel(), G):
        rg = rows[s : s + G]  # [G]
        z = F.linear(hs[rg], lm_head_weight, lm_head_bias)  # [G, V] input dtype
        for j in range(0, rg.numel(), c):
            r = rg[j : j + c]  # [c]
            ls = _log_softmax_(z[j : j + c].float(), temperature)  # [c, V], over z's rows in float32
            logp[r] = ls.gather(1, y[r][:, None]).squeeze(1)
            if ent is not None:
                ent[r] = -_rowdot(ls.exp(), ls)
        del z, ls  # both hold the group's [G, V] buffer (ls is a view): freed before the next group's exists
    return logp.view(B, T), (ent.view(B, T) if ent is not None else None)
