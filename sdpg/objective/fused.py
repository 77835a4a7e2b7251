"""Exact full-vocabulary KL(p || SG[q]) from last hidden states, chunk by chunk.

The materialised form (``full_vocab_kl``) holds student and teacher logits, their log-softmax and
their gradients: several [B, T, V] float32 tensors (18.5 GiB each at B=16, T=2048, V=151,936).
Here positions are processed in chunks of ``chunk_size`` rows; no [B, T, V] tensor ever exists.

Two autograd paths, both exact:

* ``fused_full_vocab_kl`` returns per-token KL [B, T] and accepts any upstream gradient. Its backward
  recomputes each chunk's logits (three matmuls more than the forward, one more than materialised).
* ``fused_weighted_full_vocab_kl`` takes the per-token weights up front (loss = sum_t w_t KL_t, e.g.
  the gate times the aggregation weights) and forms the gradients during the forward pass, so no
  logits are recomputed: the same four matmuls as the materialised version. Rows whose weight is 0
  (gated-off sequences, padding) are skipped entirely, teacher included. The trainer's path until the
  whole loss was fused (``fused_step.step_loss``, which follows the same design).

The teacher is the same network run on the privileged prompt; it never receives a gradient.
Gradients flow to the student hidden states and to the output head (weight and bias). Softmax
arithmetic is float32 whatever the input dtype; matmuls run in the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Bytes one [chunk, V] float32 buffer may take when chunk_size is left to auto: small on CPU,
# where matmuls are already efficient at 32 rows; larger on GPUs, which need rows to fill the chip.
_AUTO_CHUNK_BYTES = {"cpu": 48 * 2**20, "cuda": 320 * 2**20}


def auto_chunk_size(vocab_size: int, n_rows: int, device: str | torch.device = "cpu") -> int:
    """The largest power-of-two chunk whose [chunk, V] float32 buffer fits the device's budget
    (CPU 48 MiB: 64 rows at V=151,936; CUDA 320 MiB: 512 rows)."""
    budget = _AUTO_CHUNK_BYTES.get(torch.device(device).type, _AUTO_CHUNK_BYTES["cuda"])
    chunk = 8
    while (chunk * 2) * vocab_size * 4 <= budget and chunk < 8192:
        chunk *= 2
    return max(1, min(chunk, n_rows))


def _chunk_logprobs(h: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    """log softmax((h W^T + b) / temperature) for a chunk of rows, float32, built in place."""
    z = h @ weight.T  # [c, V] input dtype
    if bias is not None:
        z += bias  # [c, V]
    z = z.float()  # [c, V]
    if temperature != 1.0:
        z /= temperature  # [c, V]
    z -= torch.logsumexp(z, dim=-1, keepdim=True)  # [c, V] log p
    return z


def _chunk_kl(
    hs: Tensor,
    ht: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    temperature: float,
    row_grad: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """KL(p || q) per row [c] and, if ``row_grad`` [c] is given, row_grad * dKL/dlogits [c, V].

    dKL_t/dz_t = p_t * (log p_t - log q_t - KL_t) / temperature, z being the raw logits.
    Student and teacher rows share one matmul, so the head [V, H] is read once per chunk.
    One [2c, V] float32 buffer (plus logsumexp's temporary) is live at the peak.
    """
    c = hs.shape[0]
    both = _chunk_logprobs(torch.cat([hs, ht]), weight, bias, temperature)  # [2c, V]
    logp, diff = both[:c], both[c:]  # [c, V] log p, [c, V] log q
    torch.sub(logp, diff, out=diff)  # [c, V] log p - log q
    p = logp.exp_()  # [c, V]
    kl = torch.bmm(p.unsqueeze(1), diff.unsqueeze(2)).view(-1)  # [c]
    if row_grad is None:
        return kl, None
    diff -= kl.unsqueeze(1)  # [c, V]
    diff *= p  # [c, V]
    diff *= (row_grad.float() / temperature).unsqueeze(1)  # [c, V] dLoss/dz
    return kl, diff


def _accumulate_grads(
    dz: Tensor,
    hs: Tensor,
    weight: Tensor,
    grad_weight: Tensor | None,
    grad_bias: Tensor | None,
) -> Tensor:
    """Backpropagate a chunk's logit gradient dz [c, V]: returns dL/dh [c, H]; adds into the
    accumulators of the head's weight [V, H] (in the weight's dtype, in place: no [V, H] temporary;
    in bf16 the GEMM sums in float32 and rounds once per chunk) and bias [V] (float32)."""
    dz_in = dz.to(weight.dtype)  # [c, V]
    grad_h = dz_in @ weight  # [c, H]
    if grad_weight is not None:
        grad_weight.addmm_(dz_in.T, hs)  # [V, H]
    if grad_bias is not None:
        grad_bias += dz.sum(dim=0)  # [V]
    return grad_h


def _flatten(student_hidden: Tensor, teacher_hidden: Tensor) -> tuple[Tensor, Tensor]:
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"student and teacher hidden states must have one shape, got {tuple(student_hidden.shape)} "
            f"and {tuple(teacher_hidden.shape)}"
        )
    H = student_hidden.shape[-1]
    return student_hidden.reshape(-1, H), teacher_hidden.detach().reshape(-1, H)  # [N, H] each


class _RecomputeKL(torch.autograd.Function):
    """Per-token KL with a backward that recomputes each chunk's logits."""

    @staticmethod
    def forward(ctx, hs, ht, weight, bias, temperature, chunk_size):  # hs, ht [N, H]
        N = hs.shape[0]
        kl = hs.new_empty(N, dtype=torch.float32)  # [N]
        for s in range(0, N, chunk_size):
            kl[s : s + chunk_size], _ = _chunk_kl(hs[s : s + chunk_size], ht[s : s + chunk_size], weight, bias, temperature, None)
        ctx.save_for_backward(hs, ht, weight, bias)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return kl

    @staticmethod
    def backward(ctx, grad_kl):  # grad_kl [N]
        hs, ht, weight, bias = ctx.saved_tensors
        T, c = ctx.temperature, ctx.chunk_size
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[2], bias is not None and ctx.needs_input_grad[3]
        grad_hs = torch.zeros_like(hs) if need_h else None  # [N, H]
        grad_w = torch.zeros_like(weight) if need_w else None  # [V, H]
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None  # [V]
        rows = grad_kl.nonzero().view(-1)  # [n] rows whose gradient is not 0
        with torch.no_grad():
            for s in range(0, rows.numel(), c):
                r = rows[s : s + c]  # [c]
                h = hs[r]  # [c, H]
                _, dz = _chunk_kl(h, ht[r], weight, bias, T, grad_kl[r])  # [c, V]
                assert dz is not None  # a row gradient was given
                g = _accumulate_grads(dz, h, weight, grad_w, grad_b)  # [c, H]
                if grad_hs is not None:
                    grad_hs[r] = g.to(hs.dtype)
        return (
            grad_hs,
            None,
            grad_w,
            grad_b.to(bias.dtype) if grad_b is not None else None,
            None,
            None,
        )


class _WeightedKL(torch.autograd.Function):
    """sum_t w_t KL_t with gradients formed in the forward pass; per-token KL as a second output."""

    @staticmethod
    def forward(ctx, hs, ht, weight, bias, row_weights, temperature, chunk_size):  # hs, ht [N, H]; row_weights [N]
        N = hs.shape[0]
        need_h, need_w = hs.requires_grad, weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        kl = hs.new_zeros(N, dtype=torch.float32)  # [N]
        grad_hs = torch.zeros_like(hs) if need_h else None  # [N, H]
        grad_w = torch.zeros_like(weight) if need_w else None  # [V, H]
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None  # [V]
        rows = row_weights.nonzero().view(-1)  # [n] rows that enter the loss
        with torch.no_grad():
            for s in range(0, rows.numel(), chunk_size):
                r = rows[s : s + chunk_size]  # [c]
                h = hs[r]  # [c, H]
                kl_c, dz = _chunk_kl(h, ht[r], weight, bias, temperature, row_weights[r])  # [c], [c, V]
                kl[r] = kl_c
                assert dz is not None  # a row gradient was given
                g = _accumulate_grads(dz, h, weight, grad_w, grad_b)  # [c, H]
                if grad_hs is not None:
                    grad_hs[r] = g.to(hs.dtype)
        loss = (kl * row_weights.float()).sum()  # []
        ctx.grads = (
            grad_hs,
            grad_w,
            grad_b.to(bias.dtype) if grad_b is not None else None,
        )
        ctx.mark_non_differentiable(kl)
        return loss, kl

    @staticmethod
    def backward(ctx, grad_loss, _grad_kl):
        grad_hs, grad_w, grad_b = ctx.grads
        del ctx.grads
        scale = grad_loss.item() if grad_loss.numel() == 1 else grad_loss
        out = []
        for g in (grad_hs, grad_w, grad_b):
            if g is not None and not (isinstance(scale, float) and scale == 1.0):
                g = g.mul_(scale)
            out.append(g)
        return out[0], None, out[1], out[2], None, None, None


def fused_full_vocab_kl(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    lm_head_weight: Tensor,
    lm_head_bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """Per-token KL(p_t || SG[q_t]) [B, T] from hidden states [B, T, H] and the head [V, H] (+[V]).

    Equal to ``full_vocab_kl(h_s W^T + b, h_t W^T + b, temperature)`` in value and gradient, for any
    upstream gradient, without a [B, T, V] tensor. Backward recomputes logits chunk by chunk.
    """
    hs, ht = _flatten(student_hidden, teacher_hidden)  # [N, H] each
    c = chunk_size or auto_chunk_size(lm_head_weight.shape[0], hs.shape[0], hs.device)
    kl = _RecomputeKL.apply(hs, ht, lm_head_weight, lm_head_bias, float(temperature), int(c))  # [N]
    return kl.view(student_hidden.shape[:-1])  # [B, T]


def fused_weighted_full_vocab_kl(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    lm_head_weight: Tensor,
    weights: Tensor,
    lm_head_bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(sum_t weights_t * KL_t, per-token KL [B, T] detached) with gradients formed in the forward.

    ``weights`` [B, T] must be known before the call (they carry no gradient): typically the
    A > 0 gate times the loss-aggregation weights. Positions with weight 0 are not computed; their
    KL reads 0. The scalar may be scaled further (e.g. by beta(k)) before ``backward``.
    """
    hs, ht = _flatten(student_hidden, teacher_hidden)  # [N, H] each
    w = weights.detach().reshape(-1)  # [N]
    if w.shape[0] != hs.shape[0]:
        raise ValueError(f"weights {tuple(weights.shape)} do not match hidden states {tuple(student_hidden.shape[:-1])}")
    c = chunk_size or auto_chunk_size(lm_head_weight.shape[0], hs.shape[0], hs.device)
    loss, kl = _WeightedKL.apply(hs, ht, lm_head_weight, lm_head_bias, w, float(temperature), int(c))
    return loss, kl.view(student_hidden.shape[:-1])  # [], [B, T]
