"""``sdpg-data contexts``: a verified worked solution per training row, written by a teacher model.

Rejection sampling: each row gets up to k attempts from the teacher (attempt a of row r sampled with its own seed,
a hash of the run seed, the row id and a, so a row's result does not depend on which other rows share its batch,
nor on whether the run was interrupted). An attempt is kept when the project's scorer (``sdpg.training.rewards``)
says its answer is correct; a row with no correct attempt is kept without a solution and counted, never given a
wrong one. Work goes in shards under ``<out>.parts/``, each written whole or not at all; a rerun with the same
input and settings continues after the last complete shard, and the outputs are assembled once all are there.

Outputs: the plain rows (``solution`` = the verified response) and, with ``--verl-out``, the SDPG authors' verl
parquet: the user message ``<Fig. 4 student prompt>\\n[TEACHER_CONTEXT_TOKEN]\\n\\n<Fig. 4 hint>`` (the authors'
layout, ``sdpg.training.data.fig4_message``), so the trainer's verl path sees the same student and teacher prompts
as its plain-row path with ``data.prompt_template: sdpg_fig4``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sdpg import fsio
from sdpg.training.config import ConfigError, DataConfig
from sdpg.training.data import FIG4_CONTEXT_TEMPLATES, fig4_message, problem_text
from sdpg.training.dataprep import text as T
from sdpg.training.dataprep.card import card_files, load_card, new_card
from sdpg.training.dataprep.prepare import load_hf_tokenizer
from sdpg.training.dataprep.sources import check_output, content_sha256, read_source, rows_bytes, write_atomic

if TYPE_CHECKING:
    from sdpg.training.rollout import RolloutEngine

TEMPLATES: dict[str, tuple[str, str]] = {
    "boxed": (
        "Solve the following math problem step by step. Present your final answer inside \\boxed{{}}.\n\n{problem}",
        "boxed",
    ),
    "boxed_with_answer": (
        "Solve the following math problem step by step. Present your final answer inside \\boxed{{}}.\n\n{problem}\n\n"
        "The correct final answer is {answer}. Write a complete, rigorous solution that derives it, without saying "
        "that you were given the answer.",
        "boxed",
    ),
    "embedded": ("Q:{problem}\nA:", "exact"),
    "embedded_answer": ("Q:{problem}\nH:{answer}\nA:", "exact"),
}
"""Named teacher prompts: (template with ``{problem}`` and optionally ``{answer}``, the scorer that verifies its
responses). ``boxed`` asks for an independent solution; ``boxed_with_answer`` gives the teacher the answer to
derive; the ``embedded`` pair are the built-in task's prompts (its tiny model as teacher)."""

SCORERS = ("boxed", "math", "exact")


@dataclass
class ContextOptions:
    input: str
    out: Path
    teacher: str
    verl_out: Path | None = None
    template: str = "boxed"
    template_text: str | None = None
    scorer: str | None = None
    k: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 4096
    seed: int = 0
    shard_size: int = 256
    backend: str = "auto"
    chat_template: str = "auto"
    keep_thinking: bool = False
    dtype: str = "auto"
    batch_size: int = 64
    overwrite: bool = False


def _log(msg: str) -> None:
    print(f"[sdpg-data] {msg}", file=sys.stderr, flush=True)


def attempt_seed(seed: int, row_id: str, attempt: int) -> int:
    return int(hashlib.sha256(f"{seed}:{row_id}:{attempt}".encode()).hexdigest()[:8], 16)


def _fmt_s(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def verl_row(row: dict, index: int) -> dict:
    """One row in the SDPG authors' verl format, with the Fig. 4 prompts (answer-only hint without a solution)."""
    problem = problem_text(row, DataConfig(prompt_template="sdpg_fig4"))  # a benchmark's own instruction removed
    kind = "answer_solution" if row.get("solution") else "answer"
    ctx = FIG4_CONTEXT_TEMPLATES[kind].format(answer=row["answer"], solution=row.get("solution") or "")
    return {
        "data_source": "sdpg-data",
        "prompt": [{"role": "user", "content": fig4_message(problem, ctx)}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": row["answer"]},
        "extra_info": {"index": index, "id": row["id"], "solution": row.get("solution")},
    }


def _input_rows(source: str) -> list[dict]:
    raws = read_source(source).raws
    if not raws:
        raise ConfigError(f"--input {source!r}: has no rows")
    rows = []
    for i, r in enumerate(raws):
        p, a = r.get("problem"), r.get("answer")
        if not isinstance(p, str) or not isinstance(a, str) or not p.strip():
            raise ConfigError(
                f"--input {source!r}: row {i} has no text 'problem' and 'answer' (fields: {', '.join(map(str, r))[:200]}); "
                "run `sdpg-data prepare` on it first"
            )
        rows.append({"id": r.get("id") or T.row_id(p), "problem": p, "answer": a})
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--input {source!r}: row ids repeat; run `sdpg-data prepare` on it first (it drops duplicates)")
    return rows


class Teacher:
    """The teacher model behind one ``generate(prompt_ids, seeds)`` call: vLLM where installed (or asked for),
    transformers otherwise."""

    def __init__(self, o: ContextOptions):
        import importlib.util

        self.engine: RolloutEngine
        path = o.teacher
        if path in ("embedded", "embedded_chain"):
            from sdpg.training.config import EmbeddedModelConfig
            from sdpg.training.embedded import ensure_embedded_model

            path = str(ensure_embedded_model(EmbeddedModelConfig(task="sum" if path == "embedded" else "chain")))
        backend = o.backend
        if backend == "auto":
            backend = "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
        self.backend, self.path, self.o = backend, path, o
        self.tokenizer = load_hf_tokenizer(path, "--teacher")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if backend == "vllm":
            from transformers import AutoConfig

            from sdpg.training.rollout import VLLMRollout

            # the model's own context length, at most 32k tokens (prompt and response must fit in it)
            limit = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None) or 32768
            self.engine = VLLMRollout(path, self.tokenizer, dtype=o.dtype, max_model_len=min(int(limit), 32768))
        else:
            import torch
            from transformers import AutoModelForCausalLM

            from sdpg.training.rollout import HFRollout

            dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[o.dtype]
            try:
                model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype)
            except Exception as e:
                raise ConfigError(f"--teacher {o.teacher!r}: cannot load it ({type(e).__name__}: {str(e)[:200]})") from None
            model.to("cuda" if torch.cuda.is_available() else "cpu")  # type: ignore[arg-type]
            self.engine = HFRollout(model, self.tokenizer, o.batch_size)

    def prompt_ids(self, text: str) -> list[int]:
        tok, mode = self.tokenizer, self.o.chat_template
        if mode == "on" or (mode == "auto" and getattr(tok, "chat_template", None)):
            text = str(tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True))
        return tok.encode(text, add_special_tokens=False)

    def generate(self, prompts: list[list[int]], seeds: list[int]) -> list[str]:
        o = self.o
        out = self.engine.generate(
            prompts, n=1, temperature=o.temperature, top_p=o.top_p, max_new_tokens=o.max_new_tokens, seeds=seeds
        )
        texts = []
        for ids, m in zip(out.responses, out.mask):
            text = str(self.tokenizer.decode(ids[m.bool()].tolist(), skip_special_tokens=True))
            if not o.keep_thinking:
                text = re.sub(r"^\s*<think>.*?</think>\s*", "", text, flags=re.S)
            texts.append(text.strip())
        return texts


def _settings(o: ContextOptions, template: str, scorer: str) -> dict:
    keep = (
        "teacher",
        "template",
        "k",
        "temperature",
        "top_p",
        "max_new_tokens",
        "seed",
        "shard_size",
        "chat_template",
        "keep_thinking",
    )
    d = {k: v for k, v in asdict(o).items() if k in keep}
    return {**d, "template_text": template, "scorer": scorer}


def _parts_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.parts")


def generate_contexts(o: ContextOptions) -> dict:
    """Run (or continue) the generation and write the outputs; returns the card."""
    if o.template_text is None and o.template not in TEMPLATES:
        raise ConfigError(f"--template {o.template!r}: not one of {', '.join(TEMPLATES)} (or give --template-text)")
    template = o.template_text if o.template_text is not None else TEMPLATES[o.template][0]
    if "{problem}" not in template:
        raise ConfigError(f"--template-text {template[:60]!r}: has no {{problem}}")
    try:
        template.format(problem="", answer="")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            f"--template-text {template[:60]!r}: {type(e).__name__} {e} (write literal braces as {{{{ }}}})"
        ) from None
    scorer = o.scorer or (TEMPLATES[o.template][1] if o.template in TEMPLATES else "boxed")
    if scorer not in SCORERS:
        raise ConfigError(f"--scorer {scorer!r}: not one of {', '.join(SCORERS)}")
    if o.k < 1 or o.shard_size < 1:
        raise ConfigError(f"--k {o.k} / --shard-size {o.shard_size}: must be at least 1")
    check_output(o.out, o.overwrite)
    if o.verl_out is not None:
        if o.verl_out.suffix != ".parquet":
            raise ConfigError(f"--verl-out {str(o.verl_out)!r}: the verl format is a .parquet file")
        check_output(o.verl_out, o.overwrite, what="--verl-out")
    rows = _input_rows(o.input)
    settings = _settings(o, template, scorer)
    manifest = {"input_sha256": content_sha256(rows), "rows": len(rows), "settings": settings}

    parts = _parts_dir(o.out)
    mpath = parts / "run.json"
    done_card = load_card(o.out) if o.out.is_file() and not parts.exists() else None
    last = (done_card or {}).get("steps", [{}])[-1]
    if done_card is not None and last.get("step") == "contexts" and last.get("input_sha256") == manifest["input_sha256"]:
        if {k: v for k, v in last["settings"].items() if k != "input"} == settings and (
            o.verl_out is None or o.verl_out.is_file()
        ):
            _log(f"{o.out} already holds this run's output ({last['results']['verified']}/{last['results']['rows']} verified)")
            return done_card
    if parts.is_dir() and mpath.is_file():
        old = json.loads(mpath.read_text())
        if old != manifest:
            diff = next((k for k in settings if old.get("settings", {}).get(k) != settings[k]), "input rows")
            if not o.overwrite:
                raise ConfigError(
                    f"{parts}: holds an unfinished run with other settings ({diff}: {old.get('settings', {}).get(diff)!r} "
                    f"vs {settings.get(diff)!r}); rerun with them, or pass --overwrite to start again"
                )
            shutil.rmtree(parts)
    if not mpath.is_file():
        shutil.rmtree(parts, ignore_errors=True)
        fsio.ensure_dir(parts)
        write_atomic([(mpath, json.dumps(manifest, indent=1).encode())])

    shards = [rows[s : s + o.shard_size] for s in range(0, len(rows), o.shard_size)]
    done = [s for s in range(len(shards)) if (parts / f"shard-{s:05d}.jsonl").is_file()]
    todo = [s for s in range(len(shards)) if s not in done]
    if done:
        _log(f"resuming: {len(done)} of {len(shards)} shards already done in {parts}")
    teacher = Teacher(o) if todo else None
    verifier = None
    if todo:
        from sdpg.training.rewards import Verifier

        verifier = Verifier(scorer)
        assert teacher is not None
        _log(
            f"teacher {o.teacher} ({teacher.backend}), template {o.template if o.template_text is None else 'custom'}, "
            f"scorer {scorer}, k={o.k}: {sum(len(shards[s]) for s in todo)} rows in {len(todo)} shards"
        )
    t0, n_done, n_rows = time.time(), 0, sum(len(shards[s]) for s in todo)
    try:
        for s in todo:
            assert teacher is not None  # built when there is work left
            out_rows = _run_shard(shards[s], teacher, verifier, template, o)
            write_atomic([(parts / f"shard-{s:05d}.jsonl", rows_bytes(out_rows, ".jsonl"))])
            n_done += len(out_rows)
            rate = n_done / max(time.time() - t0, 1e-9)
            ok = sum(r["solution"] is not None for r in out_rows) / len(out_rows)
            _log(
                f"shard {s + 1}/{len(shards)}: {n_done}/{n_rows} rows, {rate:.2f} rows/s, "
                f"ETA {_fmt_s((n_rows - n_done) / rate)}, verified in this shard {ok:.1%}"
            )
    finally:
        if verifier is not None:
            verifier.close()
    return _assemble(o, parts, len(shards), settings, rows)


def _run_shard(rows: list[dict], teacher: Teacher, verifier, template: str, o: ContextOptions) -> list[dict]:
    results: dict[str, tuple[str | None, int]] = {}
    pending = list(rows)
    for a in range(o.k):
        if not pending:
            break
        texts = teacher.generate(
            [teacher.prompt_ids(template.format(problem=r["problem"], answer=r["answer"])) for r in pending],
            [attempt_seed(o.seed, r["id"], a) for r in pending],
        )
        scores = verifier.correctness(texts, [r["answer"] for r in pending])
        still = []
        for r, t, sc in zip(pending, texts, scores):
            if sc >= 1.0:
                results[r["id"]] = (t, a + 1)
            else:
                still.append(r)
        pending = still
    for r in pending:
        results[r["id"]] = (None, o.k)
    return [
        {
            "id": r["id"],
            "problem": r["problem"],
            "answer": r["answer"],
            "solution": results[r["id"]][0],
            "context_attempts": results[r["id"]][1],
        }
        for r in rows
    ]


def _assemble(o: ContextOptions, parts: Path, n_shards: int, settings: dict, inputs: list[dict]) -> dict:
    rows: list[dict] = []
    for s in range(n_shards):
        rows += [json.loads(line) for line in (parts / f"shard-{s:05d}.jsonl").read_text().splitlines() if line]
    assert [r["id"] for r in rows] == [r["id"] for r in inputs], "shards do not match the input rows"
    verified = sum(r["solution"] is not None for r in rows)
    attempts = sum(r["context_attempts"] for r in rows)
    results = {
        "rows": len(rows),
        "verified": verified,
        "without_solution": len(rows) - verified,
        "pass_rate_within_k": round(verified / len(rows), 4),
        "attempts": attempts,
        "per_attempt_pass_rate": round(verified / max(attempts, 1), 4),
    }
    in_card = load_card(Path(o.input)) if Path(o.input).is_file() else None
    steps = list(in_card["steps"]) if in_card else []
    steps.append(
        {
            "step": "contexts",
            "settings": {"input": o.input, **settings},
            "input_sha256": content_sha256(inputs),
            "results": results,
        }
    )
    files = card_files(o.out, new_card(o.out, "rows", rows, steps))
    data = rows_bytes(rows, o.out.suffix)
    check_output(o.out, o.overwrite, data)
    files.append((o.out, data))
    if o.verl_out is not None:
        vrows = [verl_row(r, i) for i, r in enumerate(rows)]
        vdata = rows_bytes(vrows, ".parquet")
        check_output(o.verl_out, o.overwrite, vdata, what="--verl-out")
        files = card_files(o.verl_out, new_card(o.verl_out, "verl", vrows, steps)) + files + [(o.verl_out, vdata)]
    write_atomic(files)
    shutil.rmtree(parts, ignore_errors=True)
    _log(
        f"{verified}/{len(rows)} rows with a verified solution (pass rate within k={o.k}: {results['pass_rate_within_k']:.1%}); "
        f"{len(rows) - verified} kept without one; wrote {o.out}" + (f" and {o.verl_out}" if o.verl_out else "")
    )
    return new_card(o.out, "rows", rows, steps)
