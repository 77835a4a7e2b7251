"""Data rows by kind, before any of them is trained on: a data file must be a regular file, each JSON line is
read with a size bound, and each row's problem / answer / solution must be text (or a finite number for an
answer). Below the configuration and the data module, so that the configuration's checks (preflight) and the
readers (``sdpg.training.data``) share these without importing each other."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdpg.training.errors import ConfigError

if TYPE_CHECKING:  # types only
    from sdpg.training.config import DataConfig


def regular_file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a data file by its kind (checked before it is opened: opening a FIFO
    waits for a writer; ``/dev/zero`` never ends), or None for a regular file (symlinks followed)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    kind = (
        "a folder"
        if stat.S_ISDIR(mode)
        else "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "not a file"
    )
    return f"is not a regular file ({kind})"


def jsonl_lines(path: Path, max_row_bytes: int):
    """(line number, bytes) of each line of a JSON-lines file, each read with a bound: a line longer than
    ``max_row_bytes`` raises ConfigError naming it and the setting before the rest of it is read."""
    with open(path, "rb") as f:
        n = 0
        while True:
            line = f.readline(max_row_bytes + 2)
            if not line:
                return
            n += 1
            if len(line.rstrip(b"\r\n")) > max_row_bytes:
                raise ConfigError(
                    f"{path}: line {n}: row longer than data.max_row_bytes={max_row_bytes} bytes; "
                    f"shorten the row or raise data.max_row_bytes"
                )
            yield n, line


def _text_problem(value: Any, what: str, empty_ok: bool = False) -> str | None:
    if not isinstance(value, str):
        return None
    if not empty_ok and not value.strip():
        return f"'{what}' is empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"'{what}' holds a lone UTF-16 surrogate (\\u{ord(value[_surrogate_at(value)]):04x}), not valid Unicode"
    return None


def _surrogate_at(value: str) -> int:
    return next(i for i, ch in enumerate(value) if 0xD800 <= ord(ch) <= 0xDFFF)


def _answer_problem(value: Any, what: str) -> str | None:
    """A reference answer is text, or a finite number written as JSON (``42``); not a boolean, NaN or a list."""
    if isinstance(value, bool):
        return f"'{what}' is a boolean ({str(value).lower()}), expected text or a number"
    if isinstance(value, float) and not math.isfinite(value):
        return f"'{what}' is {value!r}, not a finite number"
    if isinstance(value, (int, float)):
        return None
    if not isinstance(value, str):
        return f"'{what}' is {_kind(value)}, expected text or a number"
    return _text_problem(value, what)


def _kind(value: Any) -> str:
    return {list: "an array", dict: "an object", bool: "a boolean", type(None): "null", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def row_problem(raw: dict, cfg: DataConfig) -> str | None:
    """Why a row (a JSON object) cannot be trained or scored on, or None: problem text that is not empty,
    an answer that is text or a finite number, an optional solution that is text, no lone surrogates; a
    verl row's prompt a list of messages with text content and a usable ground truth."""
    if "prompt" in raw and "reward_model" in raw:  # verl format
        prompt = raw["prompt"]
        if not isinstance(prompt, (list, tuple)) or not prompt:
            return f"verl 'prompt' is {_kind(prompt)}, expected a list of messages ({{role, content}})"
        for msg in prompt:
            if not isinstance(msg, dict) or not isinstance(msg.get("content"), str):
                what = "a message without text content" if isinstance(msg, dict) else _kind(msg)
                return f"verl 'prompt' holds {what}, expected messages {{role, content}}"
            why = _text_problem(msg["content"], "prompt.content", empty_ok=True)
            if why:
                return why
        rm = raw["reward_model"]
        gt = rm.get("ground_truth") if isinstance(rm, dict) else None
        if gt is None:
            return "verl row without reward_model.ground_truth"
        return _answer_problem(gt, "reward_model.ground_truth")
    problem, answer = _get(raw, cfg.problem_key), _get(raw, cfg.answer_key)
    if problem is not None:
        if not isinstance(problem, str):
            return f"'{cfg.problem_key}' is {_kind(problem)}, expected text"
        why = _text_problem(problem, cfg.problem_key)
        if why:
            return why
    if answer is not None:
        why = _answer_problem(answer, cfg.answer_key)
        if why:
            return why
    solution = _get(raw, cfg.solution_key)
    if solution is not None:
        if not isinstance(solution, str):
            return f"'{cfg.solution_key}' is {_kind(solution)}, expected text"
        return _text_problem(solution, cfg.solution_key, empty_ok=True)
    return None


def _get(row: dict, dotted: str) -> Any:
    cur: Any = row
    for part in dotted.split("."):
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, (list, tuple)) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
    return cur
