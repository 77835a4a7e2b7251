"""The policy as the trainer sees it: loading, FSDP2 sharding, full state dicts, and the one helper that
turns a forward pass into statistics of the sampled tokens (``sampled_token_stats``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sdpg.objective import hidden_token_logprobs, token_entropy, token_logprobs
from sdpg.training.config import TrainConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_policy(cfg: TrainConfig, device: torch.device, log=print):
    """Tokenizer and model from ``model.path``: the embedded model, a local folder or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = cfg.model.path
    if path == "embedded":
        from sdpg.training.embedded import ensure_embedded_model

        path = str(ensure_embedded_model(cfg.model.embedded, log=log))
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # parameters (and so AdamW's state and the checkpoints) in param_dtype; compute in model.dtype (``compute``)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, cfg.model.param_dtype), "trust_remote_code": cfg.model.trust_remote_code}
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device)  # type: ignore[arg-type]
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    model.sdpg_source_path = path  # where the weights came from (the vLLM engine loads the same)
    return tokenizer, model


def compute(cfg: TrainConfig, device: torch.device, sharded: bool = False):
    """The context the forwards run in: ``torch.autocast`` to ``model.dtype`` when it differs from the
    parameters' dtype on one device (CPU bf16 included); nothing when they agree, or when FSDP2's
    mixed-precision policy already casts (``shard_fsdp``)."""
    import contextlib

    if sharded or cfg.model.dtype == cfg.model.param_dtype:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, cfg.model.dtype))


def in_compute_dtype(
    dtype: torch.dtype, hidden: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Hidden states and output head cast to ``dtype`` for code that runs its own GEMMs outside autocast (the
    chunked head passes and the step loss); differentiable casts, so gradients reach the fp32 parameters.
    No copies when they already have it (fp32 runs; FSDP2's gathered bf16 parameters)."""
    return hidden.to(dtype), weight.to(dtype), (bias.to(dtype) if bias is not None else None)


def is_sharded(model) -> bool:
    """Whether ``shard_fsdp`` was applied to ``model``."""
    return getattr(model, "sdpg_fsdp", False)


def shard_fsdp(model, compute_dtype: torch.dtype | None = None) -> None:
    """FSDP2: each decoder layer its own unit, the root (embeddings, final norm, tied head) kept gathered
    from its forward to its backward so the fused KL can use the head. FSDP averages gradients over ranks;
    the trainer scales each loss by the world size, since its weights already carry the global normaliser.
    ``compute_dtype`` different from the parameters': FSDP2's mixed precision (parameters gathered in it for
    compute, gradients reduced in float32 into the float32 shards), as the authors' FSDP runs."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    param_dtype = next(model.parameters()).dtype
    kw: dict[str, Any] = {}
    if compute_dtype is not None and compute_dtype != param_dtype:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    backbone = getattr(model, model.base_model_prefix)
    for layer in backbone.layers:
        fully_shard(layer, **kw)
    fully_shard(model, reshard_after_forward=False, **kw)
    model.sdpg_fsdp = True


def full_state(model, optimizer=None, all_ranks: bool = False) -> tuple[dict, dict | None]:
    """Unsharded model (and optimizer) state dicts: on rank 0 only (CPU) or on every rank."""
    if not is_sharded(model):
        return model.state_dict(), (optimizer.state_dict() if optimizer is not None else None)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=not all_ranks)
    model_state = get_model_state_dict(model, options=opts)
    optim_state = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return model_state, optim_state


def load_full_state(model, optimizer, model_state: dict, optim_state: dict) -> None:
    if not is_sharded(model):
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=opts)
    set_optimizer_state_dict(model, optimizer, optim_state, options=opts)


def head_of(model) -> tuple[Tensor, Tensor | None]:
    """The output head's weight [V, H] and bias [V] (or None). Under FSDP, read it after a forward: then
    it is the gathered head."""
    head = model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)  # [V, H], [V] | None


def response_hidden(model, ids: Tensor, attn: Tensor, prompt_len: int, n_resp: int) -> Tensor:
    """Last hidden states that predict the response tokens: positions P-1 .. P+T-2 -> [b, T, H].

    The backbone's output is taken without the full logits. Under FSDP2 the root module's forward must
    run (its hooks gather and later reduce-scatter the root's parameters), so it is called with
    ``logits_to_keep=1`` and the backbone's output is caught by a hook."""
    backbone = getattr(model, model.base_model_prefix)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)  # [b, L]
    if is_sharded(model):
        caught: dict[str, Tensor] = {}

        def catch(module, args, output):
            hidden = output if isinstance(output, Tensor) else getattr(output, "last_hidden_state", None)
            caught.setdefault("hidden", hidden if hidden is not None else output[0])

        handle = backbone.register_forward_hook(catch)
        try:
            model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=False, logits_to_keep=1)
        finally:
            handle.remove()
        hidden = caught["hidden"]  # [b, L, H]
    else:
        hidden = backbone(
            input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=False
        ).last_hidden_state  # [b, L, H]
    return hidden[:, prompt_len - 1 : prompt_len - 1 + n_resp]  # [b, T, H]


@dataclass
class TokenStats:
    """What one forward pass says about the sampled tokens ``y_t`` of a batch of sequences."""

    logp: Tensor | None  # [b, T] log pi(y_t) at the temperature, float32; with gradient when the forward has one
    entropy: Tensor | None  # [b, T] entropy of pi(.|prefix), no gradient (a metric)
    hidden: Tensor  # [b, T, H] last hidden states at the response positions (for the fused distillation term)
    head_weight: Tensor  # [V, H] the output head used
    head_bias: Tensor | None  # [V]
    logits: Tensor | None  # [b, T, V] only when asked for (``keep_logits``)


def sampled_token_stats(
    model,
    seq: Tensor,
    attn: Tensor,
    prompt_len: int,
    tokens: Tensor,
    temperature: float = 1.0,
    *,
    logprobs: bool = True,
    entropy: bool = False,
    keep_logits: bool = False,
    impl: str = "fused",
    chunk_size: int | None = None,
) -> TokenStats:
    """log pi(y_t) (and the entropy) of the response ``tokens`` [b, T] under ``model`` on ``seq`` [b, P+T]
    (``attn`` [b, P+T]; prompts left-padded to ``prompt_len``). Gradients flow when called with grad enabled.

    The one place the trainer goes from hidden states to the head to token statistics. Without gradient and
    with ``impl="fused"`` it runs chunk by chunk (``hidden_token_logprobs``: no [b, T, V] tensor; response
    padding skipped and read as 0); ``impl="materialised"`` or ``keep_logits`` build the logits [b, T, V]."""
    hidden = response_hidden(model, seq, attn, prompt_len, tokens.shape[1])  # [b, T, H]
    weight, bias = head_of(model)  # after the forward: under FSDP the gathered head
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):  # the head in autocast's dtype, explicitly: the chunked path
        hidden, weight, bias = in_compute_dtype(torch.get_autocast_dtype(device_type), hidden, weight, bias)
    with torch.autocast(device_type, enabled=False):
        return _head_stats(
            hidden, weight, bias, attn, prompt_len, tokens, temperature, logprobs, entropy, keep_logits, impl, chunk_size
        )


def _head_stats(
    hidden, weight, bias, attn, prompt_len, tokens, temperature, logprobs, entropy, keep_logits, impl, chunk_size
) -> TokenStats:
    """The head part of ``sampled_token_stats``, outside autocast: hidden states and head in one dtype."""
    if impl != "materialised" and not keep_logits and not torch.is_grad_enabled():  # chunked: no [b, T, V] tensor
        response_mask = attn[:, prompt_len : prompt_len + tokens.shape[1]]  # [b, T] padding is skipped, reads 0
        logp, ent = hidden_token_logprobs(
            hidden, weight, bias, tokens, temperature, mask=response_mask, with_entropy=entropy, chunk_size=chunk_size
        )  # [b, T] each
        return TokenStats(
            logp=logp if logprobs else None, entropy=ent, hidden=hidden, head_weight=weight, head_bias=bias, logits=None
        )
    logits = torch.nn.functional.linear(hidden, weight, bias)  # [b, T, V]
    return TokenStats(
        logp=token_logprobs(logits, tokens, temperature) if logprobs else None,  # [b, T]
        entropy=token_entropy(logits.detach(), temperature) if entropy else None,  # [b, T]
        hidden=hidden,
        head_weight=weight,
        head_bias=bias,
        logits=logits if keep_logits else None,
    )
