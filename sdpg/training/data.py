"""Training and benchmark rows, and the student / teacher prompts built from them.

A row is a dict with ``problem``, ``answer`` and optionally ``solution``. Rows from a verl-format
parquet (the SDPG authors' format) carry the two prompts already written: the user message is
``<student prompt>[TEACHER_CONTEXT_TOKEN]<context>``; the student sees the text before the sentinel,
the teacher that text joined directly to the context (no separator, nothing stripped), both inside the
same chat template; templates are then not applied again. With ``data.answer_format: boxed`` (the authors'
setting) DAPO's "Answer:" instruction in such rows is first rewritten into the boxed one, as their dataset code
does. Plain rows are rendered through a template (``data.prompt_template``); a question that ends with its own
benchmark instruction loses it first when the template brings one (``data.problem_instruction``).
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
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


# The answer-format instructions of the authors' data: DAPO-Math's ("Answer: $Answer" on the last line) and the
# boxed one that replaces it when the answer format is boxed (``data.answer_format``), as their dataset code does.
DAPO_INSTRUCTION = (
    "The last line of your response should be of the form Answer: $Answer"
    " (without quotes) where $Answer is the answer to the problem."
)
BOXED_INSTRUCTION = "Present your final answer inside \\boxed{}, for example \\boxed{42}."

# The SDPG paper's prompts (Fig. 4), ``data.prompt_template: sdpg_fig4``: instruction, question and reminder are
# paragraphs (``\n\n``), as in the authors' rows. A plain row is laid out as the authors' rows are, the user message
# ``<student>\n[TEACHER_CONTEXT_TOKEN]\n\n<context>`` (the sentinel on the line after the reminder, ``[Hint]`` and
# ``[Instruction]`` each a new paragraph), and split as theirs: the student sees the text before the sentinel
# (so it ends with that line break), the teacher that text joined directly to the text after it. Without a
# worked solution in a row, the hint keeps the answer.
FIG4_STUDENT = (
    "Solve the following math problem step by step. "
    + BOXED_INSTRUCTION.replace("{", "{{").replace("}", "}}")
    + "\n\n{problem}\n\nRemember to put your final answer inside \\boxed{{}}."
)
FIG4_INSTRUCTION = (
    "[Instruction] If possible, derive the answer {answer} using an alternative, equally rigorous mathematical "
    "approach (e.g., algebraic vs geometric, or different substitution). If no alternative exists, articulate the "
    "standard approach with exceptional clarity. Do NOT state that you were given the answer or reference."
)
FIG4_CONTEXT_TEMPLATES = {
    "answer_solution": "[Hint] The correct answer is {answer}. A common way to solve this is:\n{solution}\n\n" + FIG4_INSTRUCTION,
    "answer": "[Hint] The correct answer is {answer}.\n\n" + FIG4_INSTRUCTION,
    "solution": "[Hint] A common way to solve this is:\n{solution}",
}
FIG4_BEFORE_SENTINEL = "\n"  # the sentinel's line follows the reminder: the student prompt's last character
FIG4_AFTER_SENTINEL = "\n\n"  # [Hint] opens a new paragraph


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
        messages = [rewrite_answer_format(dict(msg), cfg) for msg in raw["prompt"]]
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
        rows = embedded.rows_of(source, split)
        if split == "train" and cfg.solution_key != "solution":  # e.g. a negative control (CONTROL_SOLUTION_KEYS)
            if cfg.solution_key not in rows[0]:
                keys = ", ".join(k for k in rows[0] if k.startswith("solution"))
                raise ConfigError(f"data.solution_key: {cfg.solution_key!r} is not a field of {source!r} (fields: {keys})")
            rows = [{**r, "solution": r[cfg.solution_key]} for r in rows]
        return rows
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


def rewrite_answer_format(message: dict, cfg: DataConfig) -> dict:
    """A verl row's message with DAPO's answer instruction replaced (once) by the boxed one when
    ``data.answer_format`` is ``boxed``, as the authors' dataset code does before splitting at the sentinel."""
    content = message.get("content")
    if cfg.answer_format == "boxed" and isinstance(content, str) and DAPO_INSTRUCTION in content:
        message["content"] = content.replace(DAPO_INSTRUCTION, BOXED_INSTRUCTION, 1)
    return message


def strips_problem_instruction(cfg: DataConfig) -> bool:
    """Whether a plain row's own trailing instruction (``data.problem_instructions``) is removed before the
    template: ``auto`` does when the student template asks for ``\\boxed{}`` itself (``sdpg_fig4`` always does),
    so the prompt carries one instruction, not two."""
    if cfg.problem_instruction != "auto":
        return cfg.problem_instruction == "strip"
    return cfg.prompt_template == "sdpg_fig4" or "\\boxed" in cfg.student_template.replace("{problem}", "")


def problem_text(row: dict, cfg: DataConfig) -> str:
    """The question as the template receives it: without its own trailing instruction when that is stripped."""
    problem = row["problem"]
    if strips_problem_instruction(cfg):
        end = problem.rstrip()
        for instruction in cfg.problem_instructions:
            if instruction and end.endswith(instruction):
                return end[: -len(instruction)].rstrip()
    return problem


def fig4_message(problem: str, context: str) -> str:
    """The user message of an authors'-format row with the Fig. 4 prompts: ``<student>\\n[TEACHER_CONTEXT_TOKEN]\\n\\n
    <context>`` (no sentinel without a context). ``sdpg_fig4`` splits it as the authors' dataset code does."""
    student = FIG4_STUDENT.format(problem=problem) + FIG4_BEFORE_SENTINEL
    return student + TEACHER_SENTINEL + FIG4_AFTER_SENTINEL + context if context else student


def build_prompts(row: dict, cfg: DataConfig, tokenizer) -> tuple[str, str]:
    """(student prompt x, teacher prompt: x with the privileged context c appended), as text ready to tokenize."""
    if "student_prompt" in row:
        student, teacher = row["student_prompt"], row["teacher_prompt"]
        if cfg.context == "none":
            teacher = student
    else:
        problem = problem_text(row, cfg)
        ctx = render_context(row, cfg)
        if cfg.prompt_template == "sdpg_fig4":  # split as the authors' rows are
            student, _, after = fig4_message(problem, ctx).partition(TEACHER_SENTINEL)
            teacher = student + after
        else:
            student = cfg.student_template.format(problem=problem)
            teacher = cfg.teacher_template.format(student=student, problem=problem, context=ctx) if ctx else student
    prefix = row.get("chat_prefix")
    return _chat(student, tokenizer, cfg, prefix), _chat(teacher, tokenizer, cfg, prefix)


@dataclass
class PromptIds:
    """Token ids of the prompts of a data set, and what ``data.max_prompt_tokens`` did to them."""

    rows: list[dict]
    """The rows kept: all, unless ``data.overlong_prompts`` is ``drop``."""
    student: list[list[int]]
    """Student prompt ids per kept row."""
    teacher: list[list[int]]
    """Teacher prompt ids per kept row, cut from the right at ``data.max_prompt_tokens`` (as the authors)."""
    dropped: int = 0
    """Rows left out because their student prompt is too long (``data.overlong_prompts: drop``)."""
    student_cut: int = 0
    """Student prompts cut from the left (``data.overlong_prompts: cut_left``)."""
    teacher_cut: int = 0
    """Teacher prompts cut from the right."""


def tokenize_prompts(rows: list[dict], cfg: DataConfig, tokenizer, where: str = "data") -> PromptIds:
    """Token ids of every row's (student, teacher) prompts. A teacher prompt longer than ``max_prompt_tokens`` is
    cut from the right, as the authors'. A student prompt is never cut by default (the authors' is not): per
    ``data.overlong_prompts`` a longer one is an error naming ``where`` (e.g. ``data.train=path``), is left out
    with its row and counted, or is cut from the left."""
    limit, mode = cfg.max_prompt_tokens, cfg.overlong_prompts
    out = PromptIds([], [], [])
    too_long: list[tuple[int, int]] = []  # (row index, student tokens)
    for i, r in enumerate(rows):
        s, t = (tokenizer.encode(x, add_special_tokens=False) for x in build_prompts(r, cfg, tokenizer))
        if len(s) > limit:
            too_long.append((i, len(s)))
            if mode == "drop":
                out.dropped += 1
                continue
            out.student_cut += 1
            s = s[-limit:]
        out.teacher_cut += len(t) > limit
        out.rows.append(r)
        out.student.append(s)
        out.teacher.append(t[:limit])
    if too_long and mode == "error":
        i, n = too_long[0]
        raise ConfigError(
            f"{where}: {len(too_long)} of {len(rows)} rows have a student prompt longer than "
            f"data.max_prompt_tokens={limit} (row {i}: {n} tokens); student prompts are never cut unless asked: "
            "raise data.max_prompt_tokens, or set data.overlong_prompts to drop (leave such rows out, counted) or cut_left"
        )
    return out


class PromptSampler:
    """Endless, seeded, resumable stream of training rows: shuffled each epoch. With ``drop_last`` (a draw
    size k), an epoch ends when fewer than k of its rows are left, and they are skipped (a step never mixes
    two epochs); without, a draw continues into the next epoch."""

    def __init__(self, n_rows: int, seed: int, shuffle: bool = True, drop_last: int | None = None):
        self.n, self.seed, self.shuffle, self.drop_last = n_rows, seed, shuffle, drop_last
        self.epoch, self.pos = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next(self, k: int) -> list[int]:
        out: list[int] = []
        if self.drop_last is not None and self.pos + self.drop_last > self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._make_order()
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
