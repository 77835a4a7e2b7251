"""Stand-ins a rehearsal makes itself, for a laptop without the hub or the authors' data.

* ``--rehearse-model builtin``: a Qwen3 model folder written here, no download: a Qwen3 config, a character
  tokenizer with every printable character, and a Qwen3-style chat template (ChatML turns; an empty think
  block when ``enable_thinking`` is false). The rehearsal then shrinks it as it shrinks a real model folder.
  What it cannot show: the real tokenizer's vocabulary and chat template, and a family other than Qwen3.
* ``--rehearse-data builtin``: each data file of the spec that is not found here is replaced by a few
  stand-in rows in the format its name says, written from the run's own config: a ``.parquet`` training
  file in the verl format (the user message ``<student prompt>[TEACHER_CONTEXT_TOKEN]<context>``, both
  rendered with the config's templates, as the authors' DAPO-Math file is written); other files as plain rows
  under the config's ``problem_key`` / ``answer_key`` / ``solution_key``. Files that are here are read and
  checked as always. What it cannot show: that the real files exist, parse, and hold what the scorer expects.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from sdpg import fsio

BUILTIN = "builtin"
"""The value of ``--rehearse-model`` / ``--rehearse-data`` that asks for these stand-ins."""

# The relevant part of Qwen3's chat template: ChatML turns, and an empty think block after the generation
# prompt only when enable_thinking is false.
QWEN3_STYLE_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

# (problem, answer, worked solution): answers in the forms math scorers must handle (integer, fraction, radical)
PROBLEMS = [
    ("What is $7 + 11$?", "18", "$7 + 11 = 18$."),
    ("What is half of one?", "\\frac{1}{2}", "$1/2$."),
    ("Simplify $\\sqrt{18}$.", "3\\sqrt{2}", "$\\sqrt{9 \\cdot 2} = 3\\sqrt{2}$."),
    ("How many sides has a hexagon?", "6", "A hexagon has six sides."),
]
ROWS = 12
"""Stand-in rows per file (more than a rehearsal reads)."""


def write_model(out: Path) -> Path:
    """The built-in Qwen3 stand-in (config, character tokenizer, chat template) saved like a hub model."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(string.printable)))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = QWEN3_STYLE_CHAT_TEMPLATE
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.pad_token_id,
    )
    fsio.ensure_dir(out)  # transformers writes the files inside: sdpg only makes the folder, refusing links
    cfg.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _nested(dotted: str, value: Any) -> dict:
    head, _, rest = dotted.partition(".")
    return {head: _nested(rest, value) if rest else value}


def _merge(a: dict, b: dict) -> dict:
    for k, v in b.items():
        a[k] = _merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
    return a


def rows_for(key: str, source: str, cfg) -> tuple[list[dict], str]:
    """Stand-in rows for the file ``source`` named by ``key`` under ``cfg`` and a few words on their format."""
    from sdpg.training.data import TEACHER_SENTINEL, build_prompts

    train = key == "data.train"
    rows: list[dict] = []
    if train and source.endswith(".parquet"):  # the verl format, prompts rendered from the config without the chat template
        plain = cfg.data.model_copy(update={"chat_template": "off"})
        for i in range(ROWS):
            q, a, s = PROBLEMS[i % len(PROBLEMS)]
            student, teacher = build_prompts({"problem": q, "answer": a, "solution": s}, plain, None)
            rows.append(
                {
                    "data_source": "sdpg_rehearsal",
                    "prompt": [{"role": "user", "content": student + TEACHER_SENTINEL + teacher[len(student) :]}],
                    "ability": "MATH",
                    "reward_model": {"style": "rule", "ground_truth": a},
                    "extra_info": {"index": i, "solution": s},
                }
            )
        return rows, "verl format with [TEACHER_CONTEXT_TOKEN], the config's prompts"
    d = cfg.data
    for i in range(ROWS):
        q, a, s = PROBLEMS[i % len(PROBLEMS)]
        row = _merge(_nested(d.problem_key, q), _nested(d.answer_key, a))
        if train:
            row = _merge(row, _nested(d.solution_key, s))
        rows.append(row)
    fields = [d.problem_key, d.answer_key] + ([d.solution_key] if train else [])
    return rows, "plain rows (" + ", ".join(fields) + ")"


def write_data(key: str, source: str, cfg, out_dir: Path, index: int) -> tuple[str, str]:
    """Write the stand-in for ``source`` in its own format into ``out_dir``; (its path, a note for the report)."""
    rows, what = rows_for(key, source, cfg)
    name = Path(source).name
    dest = out_dir / f"standin-{index:02d}-{name}"
    fsio.ensure_dir(out_dir)
    if dest.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with fsio.atomic_open(dest, "wb") as f:
            pq.write_table(pa.Table.from_pylist(rows), f)
    elif dest.suffix == ".json":
        fsio.write_text(dest, json.dumps(rows))
    else:
        dest = dest.with_suffix(".jsonl") if dest.suffix != ".jsonl" else dest
        fsio.write_text(dest, "".join(json.dumps(r) + "\n" for r in rows))
    note = (
        f"{key} {source!r} is not here (--rehearse-data builtin): rehearsed on {len(rows)} stand-in rows, {what}; "
        f"the real file was not read"
    )
    return str(dest), note
