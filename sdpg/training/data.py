"""Training and benchmark rows, and the student / teacher prompts built from them.

A row is a dict with ``problem``, ``answer`` and optionally ``solution``. Rows from a verl-format
parquet (the SDPG authors' format) carry the two prompts already written: the user message is
``<student prompt>[TEACHER_CONTEXT_TOKEN]<context>``; the student sees the text before the sentinel,
the teacher that text joined directly to the context (no separator, nothing stripped), both inside the
same chat template; templates are then not applied again.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

from sdpg.training.config import ConfigError, DataConfig

TEACHER_SENTINEL = "[TEACHER_CONTEXT_TOKEN]"

# Privileged-context templates; ``answer_solution`` follows the hint of SDPG's Fig. 4.
DEFAULT_CONTEXT_TEMPLATES = {
    "none": "",
    "answer": "The reference answer to this problem is {answer}.",
    "solution": "Here is a reference solution to this problem:\n{solution}",
    "answer_solution": (
        "Here is a reference solution to this problem:\n{solution}\n"
        "The final answer is {answer}.\n"
        "After understanding the reference solution, please try to solve this problem using your own "
        "approach below, without referring to the reference solution."
    ),
}


# The SDPG paper's prompts (Fig. 4), ``data.prompt_template: sdpg_fig4``. The teacher sees the student prompt
# with the context appended on a new line. Without a worked solution in a row, the hint keeps the answer.
FIG4_STUDENT = (
    "Solve the following math problem step by step. Present your final answer inside \\boxed{{}}, "
    "for example \\boxed{{42}}.\n{problem}\nRemember to put your final answer inside \\boxed{{}}."
)
FIG4_INSTRUCTION = (
    "[Instruction] If possible, derive the answer {answer} using an alternative, equally rigorous mathematical "
    "approach (e.g., algebraic vs geometric, or different substitution). If no alternative exists, articulate the "
    "standard approach with exceptional clarity. Do NOT state that you were given the answer or reference."
)
FIG4_CONTEXT_TEMPLATES = {
    "answer_solution": "[Hint] The correct answer is {answer}. A common way to solve this is:\n{solution}\n" + FIG4_INSTRUCTION,
    "answer": "[Hint] The correct answer is {answer}.\n" + FIG4_INSTRUCTION,
    "solution": "[Hint] A common way to solve this is:\n{solution}",
}
FIG4_JOIN = "\n"  # between the student prompt and the context


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


def normalise_row(raw: dict, cfg: DataConfig, source: str, index: int) -> dict:
    """One input row as {problem, answer, solution, student_prompt?, teacher_prompt?}."""
    why = row_problem(raw, cfg) if isinstance(raw, dict) else f"is {_kind(raw)}, expected a JSON object"
    if why:
        raise ConfigError(f"{source}: row {index + 1}: {why}")
    # verl format: prompt = [{role, content}], reward_model.ground_truth
    if "prompt" in raw and isinstance(raw["prompt"], (list, tuple)) and raw["prompt"] and "reward_model" in raw:
        messages = list(raw["prompt"])
        user = next((i for i, msg in enumerate(messages) if TEACHER_SENTINEL in str(msg.get("content", ""))), len(messages) - 1)
        content = messages[user]["content"]
        gt = _get(raw, "reward_model.ground_truth")
        student, _, teacher_ctx = content.partition(TEACHER_SENTINEL)
        row = {"problem": student, "answer": str(gt), "solution": _get(raw, "extra_info.solution")}
        row["student_prompt"] = student
        row["teacher_prompt"] = student + teacher_ctx
        if user > 0:  # e.g. a system message before the user's: both views keep it
            row["chat_prefix"] = [dict(msg) for msg in messages[:user]]
        return row
    problem, answer = _get(raw, cfg.problem_key), _get(raw, cfg.answer_key)
    if problem is None or answer is None:
        raise ConfigError(
            f"{source}: row {index} has no '{cfg.problem_key}' or '{cfg.answer_key}' field "
            f"(fields: {', '.join(map(str, raw.keys()))}); set data.problem_key / data.answer_key"
        )
    return {"problem": str(problem), "answer": str(answer), "solution": _get(raw, cfg.solution_key)}


def read_source(source: str, cfg: DataConfig, split: str = "train") -> list[dict]:
    """Rows of a built-in task (``embedded``, ``embedded_chain``, or an evaluation set ``<source>:<set>``),
    a .jsonl / .json / .parquet file, or ``hf:NAME[:SPLIT]``."""
    from sdpg.training import embedded

    if embedded.task_of_source(source) is not None:
        return embedded.rows_of(source, split)
    if source.startswith("hf:"):
        parts = source[3:].split(":")
        try:
            import datasets  # optional
        except ImportError:
            raise ConfigError(f"data source {source!r} needs the 'datasets' package (pip install datasets)") from None
        ds = datasets.load_dataset(parts[0], split=parts[1] if len(parts) > 1 else split)
        raws = [dict(r) for r in ds]
    else:
        p = Path(source)
        if not p.exists():
            raise ConfigError(f"data source {source!r}: no such file")
        kind = regular_file_problem(p)
        if kind:
            raise ConfigError(f"data source {source!r}: {kind}")
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            raws = pq.read_table(p).to_pylist()
        elif p.suffix == ".json" and p.read_text().lstrip().startswith("["):
            raws = json.loads(p.read_text())
        elif p.suffix in (".jsonl", ".json"):
            raws = []
            for n, line in jsonl_lines(p, cfg.max_row_bytes):
                if line.strip():
                    try:
                        raws.append(json.loads(line))
                    except (json.JSONDecodeError, UnicodeDecodeError) as e:
                        raise ConfigError(f"{source}: line {n} is not JSON: {e}") from None
        else:
            raise ConfigError(f"data source {source!r}: expected .jsonl, .json or .parquet")
    return [normalise_row(r, cfg, source, i) for i, r in enumerate(raws)]


def render_context(row: dict, cfg: DataConfig) -> str:
    """The privileged context c for one row, per ``data.context`` and ``data.prompt_template``."""
    if cfg.context == "none":
        return ""
    builtin = FIG4_CONTEXT_TEMPLATES if cfg.prompt_template == "sdpg_fig4" else DEFAULT_CONTEXT_TEMPLATES
    template = cfg.context_templates.get(cfg.context) or builtin[cfg.context]
    solution = row.get("solution")
    if "{solution}" in template and not solution:
        # no worked solution in this row: fall back to the answer alone rather than an empty hint
        template = cfg.context_templates.get("answer", builtin["answer"])
    return template.format(problem=row["problem"], answer=row["answer"], solution=solution or "")


def _chat(text: str, tokenizer, cfg: DataConfig, prefix: list[dict] | None = None) -> str:
    use = cfg.chat_template == "on" or (cfg.chat_template == "auto" and getattr(tokenizer, "chat_template", None))
    if not use:
        return text
    messages = list(prefix or []) + [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **cfg.chat_template_kwargs)


def build_prompts(row: dict, cfg: DataConfig, tokenizer) -> tuple[str, str]:
    """(student prompt x, teacher prompt: x with the privileged context c appended), as text ready to tokenize."""
    if "student_prompt" in row:
        student, teacher = row["student_prompt"], row["teacher_prompt"]
        if cfg.context == "none":
            teacher = student
    else:
        ctx = render_context(row, cfg)
        if cfg.prompt_template == "sdpg_fig4":
            student = FIG4_STUDENT.format(problem=row["problem"])
            teacher = student + FIG4_JOIN + ctx if ctx else student
        else:
            student = cfg.student_template.format(problem=row["problem"])
            teacher = cfg.teacher_template.format(student=student, problem=row["problem"], context=ctx) if ctx else student
    prefix = row.get("chat_prefix")
    return _chat(student, tokenizer, cfg, prefix), _chat(teacher, tokenizer, cfg, prefix)


def tokenize_prompts(rows: list[dict], cfg: DataConfig, tokenizer) -> tuple[list[list[int]], list[list[int]], int]:
    """Token ids of every row's (student, teacher) prompts, cut at ``max_prompt_tokens``: the student's from
    the left, the teacher's from the right (as the authors). Returns (student ids, teacher ids, number cut)."""
    s_ids, t_ids, cut, limit = [], [], 0, cfg.max_prompt_tokens
    for r in rows:
        s, t = (tokenizer.encode(x, add_special_tokens=False) for x in build_prompts(r, cfg, tokenizer))
        cut += (len(s) > limit) + (len(t) > limit)
        s_ids.append(s[-limit:])
        t_ids.append(t[:limit])
    return s_ids, t_ids, cut


class PromptSampler:
    """Endless, seeded, resumable stream of training rows: shuffled each epoch."""

    def __init__(self, n_rows: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n_rows, seed, shuffle
        self.epoch, self.pos = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._make_order()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "n": self.n, "seed": self.seed}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos = s["epoch"], s["pos"]
        self._order = self._make_order()
