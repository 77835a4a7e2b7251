"""A trained policy as a Hugging Face folder that transformers, vLLM and evaluation harnesses load.

``<folder>/`` holds ``model.safetensors`` (``save_pretrained``), ``config.json`` whose ``dtype`` is the run's
compute dtype (``model.dtype``: the weights are stored in it, as the rollout engine and the evaluation saw
them), ``generation_config.json``, the tokenizer with its chat template, and ``sdpg_export.json``: the run's
config hash, the step, the dtypes, the prompt template and where the folder came from. The same facts are in
``config.json`` under ``sdpg`` so a loader that keeps only the model config still has them; ``sdpg_config.yaml``
is the run's resolved config.

A folder is complete or absent: it is written beside its destination under a temporary name and renamed
into place. An end-of-run export goes to ``<run>/hf``; ``sdpg-train export RUN_DIR [--step k] --out DIR``
writes one from any complete checkpoint of a run.

Deviation: the fp32 master weights are cast to the compute dtype; a bf16 export is what the policy computed
with, not the optimizer's fp32 copy (the checkpoint keeps that).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from sdpg import fsio
from sdpg.training.config import ConfigError, TrainConfig

EXPORT_DIRNAME = "hf"
"""The end-of-run export inside a run folder."""
META_FILE = "sdpg_export.json"
CONFIG_FILE = "sdpg_config.yaml"
"""The run's resolved config: ``sdpg-eval`` of the folder evaluates with the run's settings."""


class ExportError(ConfigError):
    """A run folder, checkpoint or destination an export cannot use; the message names it and why."""


def export_metadata(cfg: TrainConfig, step: int, source: str) -> dict[str, Any]:
    return {
        "config_hash": cfg.config_hash(),
        "step": step,
        "dtype": cfg.model.dtype,
        "param_dtype": cfg.model.param_dtype,
        "base_model": cfg.model.path,
        "student_template": cfg.data.student_template,
        "chat_template": cfg.data.chat_template,
        "seed": cfg.run.seed,
        "source": source,
    }


def _cast_state(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors in ``dtype`` on the CPU; tensors that shared storage (tied embeddings) still share it,
    so ``save_pretrained`` writes them once."""
    seen: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
    out = {}
    for name, t in state.items():
        t = t.detach()
        if hasattr(t, "full_tensor"):  # a DTensor left in a state dict
            t = t.full_tensor()
        key = (t.untyped_storage().data_ptr(), tuple(t.shape))
        if key not in seen:
            seen[key] = t.to("cpu", dtype) if t.is_floating_point() else t.to("cpu")
        out[name] = seen[key]
    return out


def write_hf_folder(
    model_config, tokenizer, state: dict[str, torch.Tensor], cfg: TrainConfig, step: int, dest: Path, source: str
) -> Path:
    """Write ``state`` (the policy's full state dict) as a Hugging Face folder at ``dest``, complete or absent.
    ``model_config`` is the policy's ``PretrainedConfig``; ``dest`` must not exist or be empty."""
    from transformers import AutoModelForCausalLM

    dest = Path(dest)
    dtype = getattr(torch, cfg.model.dtype)
    meta = export_metadata(cfg, step, source)
    conf = copy.deepcopy(model_config)
    conf.dtype = dtype
    conf.sdpg = {k: meta[k] for k in ("config_hash", "step", "dtype")}
    fsio.ensure_dir(dest.parent)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with torch.device("meta"):  # a skeleton that only carries the config and the tied-weight names
            skeleton = AutoModelForCausalLM.from_config(conf, trust_remote_code=cfg.model.trust_remote_code)
        skeleton.save_pretrained(tmp, state_dict=_cast_state(state, dtype))
        tokenizer.save_pretrained(tmp)  # the chat template travels with it
        fsio.write_text(tmp / META_FILE, json.dumps(meta, indent=1))  # redacted, never through a link
        fsio.write_text(tmp / CONFIG_FILE, yaml.safe_dump(cfg.resolved(), sort_keys=False))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if dest.exists():  # empty (checked by the caller) or an earlier end-of-run export of this run
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def is_exported(folder: Path) -> bool:
    return (Path(folder) / META_FILE).is_file() and (Path(folder) / "config.json").is_file()


def run_config(run_dir: Path) -> TrainConfig:
    """The resolved config a run folder holds (``config.yaml``, written at its start)."""
    from sdpg.training.config import load_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"run folder {run_dir} does not exist")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ExportError(f"{run_dir} is not a run folder: it has no config.yaml")
    return load_config(str(path), [f"run.output_dir={run_dir}"])


def pick_checkpoint(run_dir: Path, step: int | None, cfg: TrainConfig, log=print) -> tuple[int, dict]:
    """The state of checkpoint ``step`` of a run (``None``: the newest that reads, older ones as fallback),
    checked to belong to the run's config."""
    from sdpg.training.checkpoint import (
        CheckpointError,
        checkpoint_dir,
        checkpoints,
        load_checkpoint,
        sharded_model_state,
        step_of,
    )

    found = checkpoints(run_dir)
    if step is not None:
        found = [p for p in found if step_of(p) == step]
        if not found:
            steps = ", ".join(str(step_of(p)) for p in checkpoints(run_dir)) or "none"
            raise ExportError(f"run folder {run_dir} has no checkpoint of step {step} (complete checkpoints: {steps})")
    if not found:
        raise ExportError(f"run folder {run_dir} has no complete checkpoint in {checkpoint_dir(run_dir)}")
    errors = []
    for path in reversed(found):
        try:
            state = load_checkpoint(path)
            if state.get("sharded") is not None:  # the model's shards gathered here, the optimizer's left
                state["model"] = sharded_model_state(path)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        for skipped in errors:  # said only when an older checkpoint is used instead
            log(f"[sdpg] warning: skipped {skipped}")
        if state["config_hash"] != cfg.config_hash():
            raise ExportError(
                f"checkpoint {path} was written by another config than {run_dir / 'config.yaml'} "
                f"(hash {state['config_hash']} != {cfg.config_hash()})"
            )
        return int(state["step"]), state
    raise ExportError(f"no checkpoint of {run_dir} can be read ({errors[0]})")


def export_run(run_dir: Path, out: Path, step: int | None = None, log=print) -> Path:
    """``sdpg-train export``: the policy of checkpoint ``step`` (default: the newest complete one) of a run
    folder as a Hugging Face folder at ``out``. Everything is checked before anything is written."""
    from transformers import AutoConfig, AutoTokenizer

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out} exists and is not an empty folder; choose a new one")
    cfg = run_config(run_dir)
    k, state = pick_checkpoint(run_dir, step, cfg, log)
    base = base_model_folder(cfg, log)
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=cfg.model.trust_remote_code)
    conf = AutoConfig.from_pretrained(base, trust_remote_code=cfg.model.trust_remote_code)
    dest = write_hf_folder(conf, tokenizer, state["model"], cfg, k, out, source=f"{run_dir.resolve()} step {k}")
    log(f"[sdpg] exported step {k} of {run_dir} to {dest} ({cfg.model.dtype})")
    return dest


def base_model_folder(cfg: TrainConfig, log=print) -> str:
    """Where the run's base model (config and tokenizer) is: the built-in model's cache folder, or ``model.path``."""
    if cfg.model.path == "embedded":
        from sdpg.training.embedded import ensure_embedded_model

        return str(ensure_embedded_model(cfg.model.embedded, log=log))
    return cfg.model.path
