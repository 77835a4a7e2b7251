"""Checks that reach the world before anything is created: a config that passes the schema can still name a
device that does not exist, a data file that is not there or not JSON, a template placeholder nobody fills,
Adam betas outside [0, 1)... Each of these used to fail inside the job, after the model had loaded (or after an
ablation had created its store, runs and jobs). Here each is one sentence naming the file, the key and the
value, raised as ``ConfigError`` before any folder, store, model or job exists.

* ``check_config(cfg)``: pure checks on the values (no file system): templates, betas, finiteness,
  methods with no training signal. Cheap; run for every resolved config of an ablation or sweep.
* ``check_world(cfg, local=...)``: files, folders and devices. ``local=False`` (a SLURM submission host)
  skips what only the compute node can know (is there a GPU).
"""

from __future__ import annotations

import json
import math
import os
import re
import string
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdpg.training import embedded
from sdpg.training.errors import ConfigError, short_repr

if TYPE_CHECKING:  # types only: the configuration calls these checks
    from sdpg.training.config import TrainConfig
from sdpg.training.rows import jsonl_lines, regular_file_problem, row_problem

PLACEHOLDERS = {
    "data.student_template": {"problem"},
    "data.teacher_template": {"student", "problem", "context"},
}
CONTEXT_PLACEHOLDERS = {"problem", "answer", "solution"}
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
MAX_ROWS_CHECKED = 1_000_000


def _v(value: Any, limit: int = 80) -> str:
    return short_repr(value, limit)


def _bad(source: str, key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{source}: key '{key}' has bad value {_v(value)}: {why}")


# ------------------------------------------------------------------------------------------- pure value checks
def template_fields(template: str) -> list[str]:
    """Placeholder names in a ``str.format`` template; ValueError for broken braces or positional fields."""
    names = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        if field == "" or field.isdigit():
            raise ValueError("positional placeholders ({} or {0}) are not filled; name them, or write {{ }} for a brace")
        base = re.split(r"[.\[]", field, maxsplit=1)[0]
        if base != field:
            raise ValueError(f"placeholder {{{field}}} uses attribute or index access; write {{{base}}}")
        names.append(field)
    return names


def _check_template(source: str, key: str, template: str, allowed: set[str]) -> None:
    try:
        fields = template_fields(template)
    except ValueError as e:
        msg = str(e)
        if "Single" in msg or "unmatched" in msg.lower() or "expected '}'" in msg:
            msg = f"unbalanced braces ({msg}); write {{{{ and }}}} for literal braces"
        raise _bad(source, key, template, msg) from None
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise _bad(
            source,
            key,
            template,
            f"unknown placeholder {{{unknown[0]}}} (known: "
            + ", ".join("{" + a + "}" for a in sorted(allowed))
            + "; write {{ }} for literal braces)",
        )


def _walk_floats(d: Any, prefix: str = "") -> Iterable[tuple[str, float]]:
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _walk_floats(v, f"{prefix}{k}.")
    elif isinstance(d, (list, tuple)):
        for i, v in enumerate(d):
            yield from _walk_floats(v, f"{prefix}{i}.")
    elif isinstance(d, float):
        yield prefix[:-1], d


def check_config(cfg: TrainConfig, source: str = "<config>") -> None:
    """Value checks the schema does not express; ConfigError naming ``source``, the key and the value."""
    for key, val in _walk_floats(cfg.model_dump(mode="python")):
        if not math.isfinite(val):
            raise _bad(source, key, val, "must be a finite number")
    d = cfg.data
    for key, allowed in PLACEHOLDERS.items():
        _check_template(source, key, getattr(d, key.split(".")[1]), allowed)
    for name, tpl in d.context_templates.items():
        _check_template(source, f"data.context_templates.{name}", tpl, CONTEXT_PLACEHOLDERS)
    b1, b2 = cfg.optim.betas
    for i, b in enumerate((b1, b2)):
        if not 0.0 <= b < 1.0:
            raise _bad(source, "optim.betas", list(cfg.optim.betas), f"betas[{i}]={b} must lie in [0, 1) (Adam's moment decays)")
    _check_builtin_sets(cfg, source)
    a = cfg.algo
    if a.pg_coef == 0 and a.beta == 0:
        raise _bad(
            source,
            "algo.beta",
            a.beta,
            f"with algo.method={a.method} (algo.pg_coef=0) a zero distillation coefficient leaves no training signal",
        )


def _check_builtin_sets(cfg: TrainConfig, source: str) -> None:
    """``<task source>:<set>`` (``embedded:more_terms``, ``embedded_chain:larger_numbers``) names a known
    built-in evaluation set, only under ``data.eval``, with room in ``eval.max_new_tokens`` for its
    longest reference solution. Training on a built-in task: the built-in model is that task's. (A short
    ``rollout.max_new_tokens`` is a choice smoke tests make: the trainer warns when it cuts most solutions.)"""

    train_task = embedded.task_of_source(cfg.data.train)
    if train_task is not None and ":" in cfg.data.train:
        known = ", ".join(embedded.builtin_sets(train_task))
        base = embedded.TASK_SOURCE[train_task]
        raise _bad(source, "data.train", cfg.data.train, f"the built-in sets ({known}) are held out; train on {base!r}")
    if train_task is not None:
        if cfg.model.path == "embedded" and cfg.model.embedded.task != train_task:
            raise _bad(
                source,
                "model.embedded.task",
                cfg.model.embedded.task,
                f"data.train={cfg.data.train} is the {train_task!r} task; set model.embedded.task={train_task}",
            )
    for name, src in cfg.data.eval.items():
        task = embedded.task_of_source(src)
        if task is None or ":" not in src:
            continue
        set_name = src.split(":", 1)[1]
        if set_name not in embedded.TASK_EVAL_SETS[task]:
            known = ", ".join(embedded.builtin_sets(task))
            raise _bad(source, f"data.eval.{name}", src, f"not a built-in set (sets: {known})")
        need = embedded.eval_set_response_tokens(set_name, task)
        if (cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens) < need:
            raise _bad(
                source,
                "eval.max_new_tokens",
                cfg.eval.max_new_tokens,
                f"data.eval.{name}={src} has reference solutions of up to {need} tokens with the stop token; "
                f"set eval.max_new_tokens to at least {need}",
            )


# ------------------------------------------------------------------------------------------------ world checks
def _check_output_dir(source: str, out: str) -> None:
    p = Path(out)
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise _bad(source, "run.output_dir", out, f"{probe} is a file, not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise _bad(source, "run.output_dir", out, f"{probe} is not writable")


def _check_device(source: str, name: str, local: bool) -> None:
    if name == "auto":
        return
    m = re.fullmatch(r"(cpu|cuda|mps|xpu)(?::(\d+))?", name)
    if m is None:
        raise _bad(source, "model.device", name, "expected auto, cpu, cuda or cuda:N")
    if not local or m.group(1) == "cpu":
        return
    import torch

    if m.group(1) == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise _bad(source, "model.device", name, "no CUDA device is visible on this machine")
        if m.group(2) is not None and int(m.group(2)) >= n:
            raise _bad(source, "model.device", name, f"this machine has {n} CUDA device(s) (0..{n - 1})")
    elif m.group(1) == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise _bad(source, "model.device", name, "MPS is not available on this machine")


HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def _check_model_path(source: str, path: str) -> None:
    if path == "embedded":
        return
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise _bad(source, "model.path", path, "is a file; expected a folder saved with save_pretrained or a hub id")
        if not (p / "config.json").is_file():
            raise _bad(source, "model.path", path, "the folder has no config.json (not a save_pretrained folder)")
        return
    if HUB_ID.fullmatch(path) and not path.startswith((".", "/")):
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            try:
                from huggingface_hub import try_to_load_from_cache

                if not isinstance(try_to_load_from_cache(path, "config.json"), str):
                    raise _bad(source, "model.path", path, "not a local folder, and HF_HUB_OFFLINE is set with no cached copy")
            except ImportError:
                pass
        return
    raise _bad(source, "model.path", path, "no such folder (and not a hub id of the form org/name)")


def _row_error(file: str, line: int, why: str) -> ConfigError:
    return ConfigError(f"{file}: line {line}: {why}")


def _check_row(file: str, line: int, raw: Any, cfg: TrainConfig, what: str) -> bool:
    """Check one raw row; returns whether it carries a worked solution."""
    d = cfg.data
    if not isinstance(raw, dict):
        kind = {list: "an array", int: "a number", float: "a number", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(raw), type(raw).__name__
        )
        raise _row_error(file, line, f"is {kind}, expected a JSON object with '{d.problem_key}' and '{d.answer_key}'")
    if "prompt" in raw and "reward_model" in raw:  # verl format
        why = row_problem(raw, d)
        if why:
            raise _row_error(file, line, why)
        return bool((raw.get("extra_info") or {}).get("solution")) if isinstance(raw.get("extra_info"), dict) else False
    for key_name, field in (("data.problem_key", d.problem_key), ("data.answer_key", d.answer_key)):
        cur: Any = raw
        for part in field.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if field.split(".")[0] not in raw:
            fields = ", ".join(map(str, list(raw)[:8])) or "none"
            raise _row_error(file, line, f"no '{field}' field (fields: {_v(fields, 60)}); set {key_name}")
        if cur is None:
            raise _row_error(file, line, f"'{field}' is null")
        if isinstance(cur, (dict, list)):
            raise _row_error(file, line, f"'{field}' is {type(cur).__name__}, expected text or a number")
    why = row_problem(raw, d)
    if why:
        raise _row_error(file, line, why)
    sol = raw.get(d.solution_key)
    return bool(sol)


def _named(key: str, check, *args) -> Any:
    """``check(*args)``, its error ending with the setting that names the file (``data.eval.aime24``)."""
    try:
        return check(*args)
    except ConfigError as e:
        raise ConfigError(f"{e}, named by {key}") from None


def check_data_file(cfg: TrainConfig, key: str, src: str, source: str, what: str = "train") -> None:
    """A data source named by ``key`` (``data.train`` / ``data.eval.NAME``): exists, has a known format,
    and every row parses and carries its fields."""
    if src.startswith("hf:") or embedded.task_of_source(src):  # built-in sets: check_config
        return
    p = Path(src)
    if not p.exists():
        raise _bad(source, key, src, "no such file")
    if p.is_dir():
        raise _bad(source, key, src, "is a folder; expected a .jsonl, .json or .parquet file")
    kind = regular_file_problem(p)
    if kind:  # checked by its kind, never opened: a FIFO waits for a writer, /dev/zero never ends
        raise _bad(source, key, src, kind)
    if p.suffix not in DATA_SUFFIXES:
        raise _bad(source, key, src, "expected a .jsonl, .json or .parquet file")
    rows_with_solution, n = 0, 0
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            rows = pq.read_table(p).to_pylist()
        except Exception as e:  # noqa: BLE001 - any reader failure is the file's fault here
            raise ConfigError(
                f"{p}: not a readable parquet file ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
            ) from None
        for i, r in enumerate(rows[:MAX_ROWS_CHECKED]):
            rows_with_solution += _named(key, _check_row, str(p), i + 1, r, cfg, what)
            n += 1
    else:
        lines: list[str] = []
        offset = 0
        for ln, raw_line in jsonl_lines(p, cfg.data.max_row_bytes):
            if b"\x00" in raw_line:
                raise ConfigError(
                    f"{p}: is binary, not JSON text (NUL byte at offset {offset + raw_line.index(0)}), named by {key}"
                )
            try:
                lines.append(raw_line.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ConfigError(
                    f"{p}: is not UTF-8 text (byte 0x{raw_line[e.start]:02x} on line {ln}), named by {key}"
                ) from None
            offset += len(raw_line)
        text = "".join(lines)
        if p.suffix == ".json" and text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{p}: line {e.lineno}: not valid JSON ({e.msg})") from None
            items = [(i + 1, r) for i, r in enumerate(rows)]
        else:
            items = []
            for i, line in enumerate(text.splitlines()):
                if not line.strip():
                    continue
                try:
                    items.append((i + 1, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise _row_error(str(p), i + 1, f"not valid JSON ({e.msg} at column {e.colno})") from None
        for ln, r in items:
            rows_with_solution += _named(key, _check_row, str(p), ln, r, cfg, what)
            n += 1
    if n == 0:
        raise ConfigError(f"{p}: is empty (no rows), named by {key}")
    used = min(n, cfg.data.train_limit or n)
    if what == "train" and cfg.run.max_epochs is not None and used < cfg.rollout.prompts_per_step:
        raise ConfigError(
            f"{p}: {used} training rows make no complete step of rollout.prompts_per_step={cfg.rollout.prompts_per_step}, "
            f"and run.max_epochs={cfg.run.max_epochs} drops an epoch's incomplete step"
        )
    if what == "train" and cfg.data.context in ("solution",) and rows_with_solution == 0:
        raise ConfigError(
            f"{p}: no row has a '{cfg.data.solution_key}' field, but data.context is "
            f"'{cfg.data.context}'; set data.context or data.solution_key"
        )


VLLM_INSTALL = (
    "in the sdpg checkout: pip install -e '.[vllm]' where the jobs run on GPUs; "
    "on a CPU pip install -e '.[rehearse]' && python -m sdpg.environment --fix"
)


def _check_packages(source: str, cfg: TrainConfig) -> None:
    """Packages the run imports that the base install does not bring. Jobs (local processes, submitit's SLURM
    jobs) run with this Python, so what is missing here is missing there."""
    import importlib.util

    if cfg.rollout.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise _bad(
            source,
            "rollout.backend",
            "vllm",
            f"the vllm package is not installed for {sys.executable}, the Python the jobs run with "
            f"({VLLM_INSTALL}), or set rollout.backend=hf",
        )
    if cfg.rollout.backend == "vllm":
        from sdpg._media import MEDIA_PACKAGES, mismatch

        stray = [why for n in MEDIA_PACKAGES if (why := mismatch(n))]
        if stray:
            raise _bad(
                source,
                "rollout.backend",
                "vllm",
                f"{stray[0]}, which stops vLLM's model check in its child process; "
                f"python -m sdpg.environment --fix uninstalls {'it' if len(stray) == 1 else 'them'} (sdpg uses none)",
            )


def check_world(cfg: TrainConfig, source: str = "<config>", local: bool = True) -> None:
    """Everything ``check_config`` checks, plus packages, files, folders and devices (``local``: this machine
    runs it)."""
    check_config(cfg, source)
    _check_packages(source, cfg)
    _check_device(source, cfg.model.device, local)
    _check_model_path(source, cfg.model.path)
    check_data_file(cfg, "data.train", cfg.data.train, source, "train")
    for name, src in cfg.data.eval.items():
        check_data_file(cfg, f"data.eval.{name}", src, source, "eval")
    _check_output_dir(source, cfg.run.output_dir)


def world_warnings(cfg: TrainConfig, source: str = "<config>", local: bool = True) -> list[str]:
    """What ``check_world`` would refuse on this machine, as warning sentences instead of an error:
    ``--dry-run`` and ``--print-config`` plan anywhere (a laptop without vLLM or the data) and say what the
    jobs will need where they run."""
    checks = [
        lambda: _check_packages(source, cfg),
        lambda: _check_device(source, cfg.model.device, local),
        lambda: _check_model_path(source, cfg.model.path),
        lambda: check_data_file(cfg, "data.train", cfg.data.train, source, "train"),
        *(
            (lambda name=name, src=src: check_data_file(cfg, f"data.eval.{name}", src, source, "eval"))
            for name, src in cfg.data.eval.items()
        ),
        lambda: _check_output_dir(source, cfg.run.output_dir),
    ]
    out = []
    for check in checks:
        try:
            check()
        except ConfigError as e:
            out.append(" ".join(str(e).split()))
    return out
