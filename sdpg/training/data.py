"""Training and benchmark rows, and the student / teacher prompts built from them.

A row is a dict with ``problem``, ``answer`` and optionally ``solution``. Rows from a verl-format
parquet (the SDPG reference's format) carry the two prompts already written: the question before
``[TEACHER_CONTEXT_TOKEN]`` is the student prompt, and the question plus what follows the sentinel
is the teacher prompt; templates are then not applied again.
"""

from __future__ import annotations

import json
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
    # verl format: prompt = [{role, content}], reward_model.ground_truth
    if "prompt" in raw and isinstance(raw["prompt"], (list, tuple)) and raw["prompt"] and "reward_model" in raw:
        content = raw["prompt"][0]["content"]
        gt = _get(raw, "reward_model.ground_truth")
        student, _, teacher_ctx = content.partition(TEACHER_SENTINEL)
        row = {"problem": student.strip(), "answer": str(gt), "solution": _get(raw, "extra_info.solution")}
        row["student_prompt"] = student.strip()
        row["teacher_prompt"] = (student.rstrip() + "\n\n" + teacher_ctx.strip()).strip() if teacher_ctx else student.strip()
        return row
    problem, answer = _get(raw, cfg.problem_key), _get(raw, cfg.answer_key)
    if problem is None or answer is None:
        raise ConfigError(
            f"{source}: row {index} has no '{cfg.problem_key}' or '{cfg.answer_key}' field "
            f"(fields: {', '.join(map(str, raw.keys()))}); set data.problem_key / data.answer_key"
        )
    return {"problem": str(problem), "answer": str(answer), "solution": _get(raw, cfg.solution_key)}


def read_source(source: str, cfg: DataConfig, split: str = "train") -> list[dict]:
    """Rows of ``embedded`` (or a built-in evaluation set ``embedded:<set>``), a .jsonl / .json / .parquet
    file, or ``hf:NAME[:SPLIT]``."""
    from sdpg.training import embedded

    if source == "embedded" or source.startswith("embedded:"):
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
        if not p.is_file():
            raise ConfigError(f"data source {source!r}: no such file")
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            raws = pq.read_table(p).to_pylist()
        elif p.suffix in (".jsonl", ".json"):
            text = p.read_text()
            if p.suffix == ".json" and text.lstrip().startswith("["):
                raws = json.loads(text)
            else:
                raws = []
                for i, line in enumerate(text.splitlines()):
                    if line.strip():
                        try:
                            raws.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise ConfigError(f"{source}: line {i + 1} is not JSON: {e}") from None
        else:
            raise ConfigError(f"data source {source!r}: expected .jsonl, .json or .parquet")
    return [normalise_row(r, cfg, source, i) for i, r in enumerate(raws)]


def render_context(row: dict, cfg: DataConfig) -> str:
    """The privileged context c for one row, per ``data.context``."""
    if cfg.context == "none":
        return ""
    template = cfg.context_templates.get(cfg.context) or DEFAULT_CONTEXT_TEMPLATES[cfg.context]
    solution = row.get("solution")
    if "{solution}" in template and not solution:
        # no worked solution in this row: fall back to the answer alone rather than an empty hint
        template = cfg.context_templates.get("answer", DEFAULT_CONTEXT_TEMPLATES["answer"])
    return template.format(problem=row["problem"], answer=row["answer"], solution=solution or "")


def _chat(text: str, tokenizer, cfg: DataConfig) -> str:
    use = cfg.chat_template == "on" or (cfg.chat_template == "auto" and getattr(tokenizer, "chat_template", None))
    if not use:
        return text
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def build_prompts(row: dict, cfg: DataConfig, tokenizer) -> tuple[str, str]:
    """(student prompt x, teacher prompt with privileged context c), as text ready to tokenize."""
    if "student_prompt" in row:
        student, teacher = row["student_prompt"], row["teacher_prompt"]
        if cfg.context == "none":
            teacher = student
    else:
        student = cfg.student_template.format(problem=row["problem"])
        ctx = render_context(row, cfg)
        teacher = cfg.teacher_template.format(problem=row["problem"], context=ctx) if ctx else student
    return _chat(student, tokenizer, cfg), _chat(teacher, tokenizer, cfg)


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
