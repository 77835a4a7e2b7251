"""A model shrunk in place: the architecture family and tokenizer of ``model.path``, a few layers and
a few dimensions wide, random weights. Rehearsals run every code path of a real run on it.

What is kept: ``model_type`` and every setting of the source config that is not a size (rope, norms,
tied embeddings, vocabulary, special token ids, sliding-window pattern), the tokenizer files with
their chat template, and the generation config. What is cut: layers, hidden size, attention and
key/value heads, the MLP width, experts. The head dimension is 32, one the vLLM CPU attention kernels
accept. Weights are drawn from the architecture's own initialiser with a fixed seed and saved in
float32; the trainer loads them in ``model.dtype`` as it would the real ones.
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdpg import fsio

# Sizes of a shrunk model.
LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE, EXPERTS, EXPERTS_PER_TOKEN = 2, 64, 2, 1, 32, 128, 4, 2

# Size attributes by the names transformers' families give them.
_SIZE_KEYS: dict[str, tuple[str, ...]] = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model"),
    "heads": ("num_attention_heads", "n_head"),
    "kv_heads": ("num_key_value_heads", "multi_query_group_num"),
    "intermediate": ("intermediate_size", "ffn_dim", "n_inner"),
}
_CONFIG_FILES = ("config.json", "generation_config.json")
_TOKENIZER_PATTERNS = ("*.json", "*.jinja", "*.model", "*.txt", "*.tiktoken", "*.py")


class ModelSourceError(ValueError):
    """``model.path`` cannot be read here; the message is one sentence and says what to do."""


@dataclass
class ShrunkModel:
    path: Path
    """Folder with the shrunk config, random weights and the source's tokenizer."""
    source: str
    """What it stands in for (``model.path``)."""
    stand_in: str
    """Where the config and tokenizer were read (the source, a cached hub copy, or ``--rehearse-model``)."""
    model_type: str
    """The architecture family, e.g. ``qwen3``."""
    source_params: int
    """Parameters of the source architecture (counted on the meta device, nothing allocated)."""
    params: int
    """Parameters of the shrunk model."""
    max_positions: int | None = None
    """``max_position_embeddings`` of the source config (the shrunk model keeps it)."""

    def describe(self) -> str:
        return (
            f"{self.model_type} config and tokenizer from {self.stand_in} ({_human(self.source_params)} parameters), "
            f"shrunk to {_human(self.params)} ({LAYERS} layers, hidden {HIDDEN}, {HEADS} heads of {HEAD_DIM}, "
            f"random weights) in {self.path}"
        )


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether huggingface.co answers a TCP connection (False when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def locate_source(path: str, stand_in: str | None = None, trust_remote_code: bool = False) -> Path:
    """A local folder holding ``path``'s config and tokenizer: ``stand_in`` when given, the folder
    itself, or the hub's files (from the local cache first; downloaded when the hub answers).
    Raises ModelSourceError with one sentence otherwise."""
    if stand_in:
        p = Path(stand_in)
        if not (p / "config.json").is_file():
            raise ModelSourceError(
                f"--rehearse-model {stand_in}: no config.json there (expected a folder with the "
                f"model's config.json and tokenizer files)"
            )
        return p
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelSourceError(f"model.path {path!r}: the folder has no config.json")
        return p
    looks_like_hub_id = not path.startswith(("/", ".", "~")) and path.count("/") <= 1
    if not looks_like_hub_id:
        raise ModelSourceError(
            f"model.path {path!r}: no such folder here (it may exist on the cluster); "
            f"rehearse with --rehearse-model PATH, a local folder with its config.json and tokenizer, "
            f"or --rehearse-model builtin (a Qwen3 stand-in made here)"
        )
    from huggingface_hub import snapshot_download

    patterns = list(_CONFIG_FILES) + list(_TOKENIZER_PATTERNS)
    try:
        return Path(snapshot_download(path, allow_patterns=patterns, local_files_only=True))
    except Exception:  # not in the local cache: ask the hub, if it answers
        pass
    if not hub_reachable():
        raise ModelSourceError(
            f"model.path {path!r} is a hub id and the hub cannot be reached from here; "
            f"rehearse with --rehearse-model PATH, a local folder with its config.json and tokenizer, "
            f"or --rehearse-model builtin (a Qwen3 stand-in made here)"
        )
    try:
        return Path(snapshot_download(path, allow_patterns=patterns))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelSourceError(
            f"model.path {path!r}: the hub has no such model or refused it ({first}); rehearse with --rehearse-model PATH"
        ) from None


def _set_first(cfg: Any, names: tuple[str, ...], value: int) -> bool:
    for n in names:
        if getattr(cfg, n, None) is not None:
            setattr(cfg, n, value)
            return True
    return False


def shrink_config(cfg: Any) -> Any:
    """``cfg`` (a transformers config, changed in place and returned) cut to the shrunk sizes."""
    for sub in ("text_config",):  # multimodal families keep the language model in a sub-config
        if getattr(cfg, sub, None) is not None:
            shrink_config(getattr(cfg, sub))
    _set_first(cfg, _SIZE_KEYS["layers"], LAYERS)
    _set_first(cfg, _SIZE_KEYS["hidden"], HIDDEN)
    _set_first(cfg, _SIZE_KEYS["heads"], HEADS)
    _set_first(cfg, _SIZE_KEYS["kv_heads"], KV_HEADS)
    _set_first(cfg, _SIZE_KEYS["intermediate"], INTERMEDIATE)
    if hasattr(cfg, "head_dim"):
        cfg.head_dim = HEAD_DIM
    elif HIDDEN // HEADS != HEAD_DIM:  # families that derive it
        raise ValueError("shrunk sizes must give the head dimension HEAD_DIM")
    if isinstance(getattr(cfg, "layer_types", None), list):  # e.g. full / sliding attention per layer
        cfg.layer_types = cfg.layer_types[:LAYERS]
    if isinstance(getattr(cfg, "max_window_layers", None), int):
        cfg.max_window_layers = min(cfg.max_window_layers, LAYERS)
    if isinstance(getattr(cfg, "mlp_only_layers", None), list):
        cfg.mlp_only_layers = [i for i in cfg.mlp_only_layers if i < LAYERS]
    for n in ("num_experts", "n_routed_experts", "num_local_experts"):
        if isinstance(getattr(cfg, n, None), int) and getattr(cfg, n) > 0:
            setattr(cfg, n, min(getattr(cfg, n), EXPERTS))
    for n in ("num_experts_per_tok",):
        if isinstance(getattr(cfg, n, None), int) and getattr(cfg, n) > 0:
            setattr(cfg, n, min(getattr(cfg, n), EXPERTS_PER_TOKEN))
    for n in ("moe_intermediate_size", "shared_expert_intermediate_size"):
        if isinstance(getattr(cfg, n, None), int) and getattr(cfg, n) > 0:
            setattr(cfg, n, INTERMEDIATE // 2)
    if getattr(cfg, "quantization_config", None) is not None:  # random weights are not quantised
        del cfg.quantization_config
    return cfg


def count_params(cfg: Any, trust_remote_code: bool = False) -> int:
    """Parameters of a config's model, built on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in m.parameters())


def shrink_model(
    source: str, out: str | Path, stand_in: str | None = None, trust_remote_code: bool = False, seed: int = 0
) -> ShrunkModel:
    """Write the shrunk stand-in of ``source`` (``model.path``) to ``out``. ``embedded`` is the built-in
    model's architecture and tokenizer (not pre-trained). Raises ModelSourceError when the source
    cannot be read here."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    fsio.ensure_dir(out)
    if source == "embedded" and not stand_in:
        from sdpg.training.config import EmbeddedModelConfig
        from sdpg.training.embedded import build_model, build_tokenizer

        tok = build_tokenizer()
        cfg = build_model(EmbeddedModelConfig(), tok).config
        folder_note = "the built-in recipe"
    else:
        folder = locate_source(source, stand_in, trust_remote_code)
        folder_note = str(folder)
        try:
            cfg = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
            tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelSourceError(f"{folder}: its config or tokenizer does not load ({first})") from None
        if (folder / "generation_config.json").is_file():
            shutil.copy(folder / "generation_config.json", out / "generation_config.json")
    source_params = count_params(cfg, trust_remote_code)
    cfg = shrink_config(cfg)
    cfg.dtype = "float32"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code, dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())
    gen = out / "generation_config.json"
    kept_gen = gen.read_bytes() if gen.is_file() else None
    model.save_pretrained(out)
    if kept_gen is not None:  # the source's sampling defaults, not ones derived from the config
        fsio.write_bytes(gen, kept_gen)
    tok.save_pretrained(out)
    info = ShrunkModel(
        path=out,
        source=source,
        stand_in=folder_note,
        model_type=str(getattr(cfg, "model_type", "?")),
        source_params=source_params,
        params=params,
        max_positions=getattr(cfg, "max_position_embeddings", None),
    )
    fsio.write_json(out / "sdpg_shrunk.json", {**info.__dict__, "path": str(out)}, indent=1)
    return info
