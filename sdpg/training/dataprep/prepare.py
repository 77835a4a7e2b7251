"""``sdpg-data prepare``: a source into plain rows ``{id, problem, answer, solution}``, duplicates dropped, with a
data card. Rows keep the source's order; the first of a group of duplicates is kept."""

from __future__ import annotations

import functools
import os
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sdpg.training.config import ConfigError
from sdpg.training.data import TEACHER_SENTINEL, _get
from sdpg.training.dataprep import text as T
from sdpg.training.dataprep.card import card_files, new_card
from sdpg.training.dataprep.sources import Source, check_output, read_source, rows_bytes, write_atomic

MAX_EXAMPLES = 50  # dropped rows and duplicate pairs listed in a card


@dataclass
class PrepareOptions:
    source: str
    out: Path
    split: str = "train"
    revision: str | None = None
    name: str | None = None
    problem_key: str = "problem"
    answer_key: str = "answer"
    solution_key: str = "solution"
    tokenizer: str = "Qwen/Qwen3-4B"
    near_ngram: int = 8
    near_threshold: float = 0.8
    max_problem_chars: int = 20000
    keep_instructions: bool = False
    limit: int | None = None
    overwrite: bool = False


def is_verl(raw: dict) -> bool:
    return isinstance(raw.get("prompt"), (list, tuple)) and bool(raw["prompt"]) and isinstance(raw.get("reward_model"), dict)


def _verl_fields(raw: dict) -> tuple[Any, Any, Any]:
    """(problem, answer, solution) of one verl row: the user message before the sentinel, the ground truth, and
    the worked solution from ``extra_info.solution`` or the Fig. 4 hint after the sentinel."""
    messages = [m for m in raw["prompt"] if isinstance(m, dict)]
    user = next((m for m in messages if TEACHER_SENTINEL in str(m.get("content", ""))), messages[-1] if messages else {})
    content = str(user.get("content", ""))
    student, _, ctx = content.partition(TEACHER_SENTINEL)
    solution = _get(raw, "extra_info.solution")
    marker = "A common way to solve this is:\n"
    if solution is None and marker in ctx:
        solution = ctx.split(marker, 1)[1].split("\n[Instruction]", 1)[0]
    return student, _get(raw, "reward_model.ground_truth"), solution


def _percentiles(xs: list[int]) -> dict:
    import numpy as np

    if not xs:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "mean": 0.0}
    a = np.asarray(xs)
    return {
        "p50": int(np.percentile(a, 50)),
        "p90": int(np.percentile(a, 90)),
        "p99": int(np.percentile(a, 99)),
        "max": int(a.max()),
        "mean": round(float(a.mean()), 1),
    }


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_answers(timeout_s: float = 3.0) -> bool:
    """Whether the hub (``HF_ENDPOINT``, default huggingface.co) accepts a TCP connection, asked once. Behind a
    proxy (``HTTPS_PROXY`` and the like) a direct probe says nothing, so the hub is taken to answer there."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout_s).close()
        return True
    except (OSError, ValueError):
        return False


def load_hf_tokenizer(name: str, flag: str):
    """A transformers tokenizer from a folder or a hub id, failing in one sentence (``flag`` names the option).

    A hub id is read from the local cache first; only when it is not there is the hub asked, and only after one
    quick probe says the hub answers. Without it, huggingface_hub retries each file about five times over some
    30 s, printing a line per try, before the same error (the case of every machine without hub access)."""

    def fail(why: str) -> ConfigError:
        return ConfigError(f"{flag} {name!r}: cannot load it ({why})")

    def load(source: str, **kw):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(source, **kw)
        except Exception as e:
            raise fail(f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None

    local = Path(name).expanduser()
    if local.is_dir():
        return load(str(local))
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise fail("no such folder, and not a hub id of the form org/name")
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(name, "tokenizer_config.json"), str)
    except Exception:  # a name the hub's id rules refuse
        cached = False
    if cached:
        try:
            return load(name, local_files_only=True)
        except ConfigError:  # an incomplete cached copy: the hub may complete it
            pass
    if _offline():
        raise fail("not in the local Hugging Face cache, and HF_HUB_OFFLINE is set; give a tokenizer folder or 'embedded'")
    if not hub_answers():
        host = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").netloc
        raise fail(
            f"not in the local Hugging Face cache, and the hub ({host}) cannot be reached from here; "
            "give a tokenizer folder or 'embedded'"
        )
    return load(name)


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str):
    """A tokenizer by hub id or folder; ``embedded`` is the built-in task's character tokenizer. Kept once per
    name: ``prepare`` loads it before cleaning the rows, and uses it after."""
    if name == "embedded":
        from sdpg.training.embedded import build_tokenizer

        return build_tokenizer()
    return load_hf_tokenizer(name, "--tokenizer")


def token_lengths(tokenizer, texts: list[str]) -> list[int]:
    out: list[int] = []
    for s in range(0, len(texts), 512):
        out += [len(ids) for ids in tokenizer(texts[s : s + 512], add_special_tokens=False)["input_ids"]]
    return out


def near_duplicates(rows: list[dict], n: int, threshold: float) -> dict[int, tuple[int, float]]:
    """Rows (by position) that are near duplicates of an earlier kept row: word n-gram Jaccard similarity at
    least ``threshold``. Texts shorter than n words are left to the exact check. N-grams shared by more than 200
    rows (boilerplate) do not count as evidence."""
    index: dict[int, list[int]] = {}
    sizes: dict[int, int] = {}
    out: dict[int, tuple[int, float]] = {}
    for i, r in enumerate(rows):
        toks = T.words(T.normalise(r["problem"]))
        if len(toks) < n:
            continue
        grams = {hash(g) for g in T.ngrams(toks, n)}
        counts: Counter[int] = Counter()
        for g in grams:
            post = index.get(g)
            if post is not None and len(post) <= 200:
                counts.update(post)
        best, best_sim = -1, 0.0
        for j, c in counts.items():
            sim = c / (len(grams) + sizes[j] - c)
            if sim > best_sim:
                best, best_sim = j, sim
        if best >= 0 and best_sim >= threshold:
            out[i] = (best, round(best_sim, 3))
            continue
        sizes[i] = len(grams)
        for g in grams:
            index.setdefault(g, []).append(i)
    return out


def build_rows(src: Source, o: PrepareOptions) -> tuple[list[dict], dict]:
    """Rows and the card's ``prepare`` step."""
    label = o.source
    if not src.raws:
        raise ConfigError(f"source {label!r}: has no rows")
    default_keys = (o.problem_key, o.answer_key, o.solution_key) == ("problem", "answer", "solution")
    verl = default_keys and is_verl(src.raws[0]) and "problem" not in src.raws[0]
    if not verl:
        for key, flag in ((o.problem_key, "--problem-key"), (o.answer_key, "--answer-key")):
            if all(_get(r, key) is None for r in src.raws[:1000]):
                cols = ", ".join(map(str, src.raws[0].keys()))[:300]
                raise ConfigError(f"source {label!r}: column {key!r} ({flag}) is in none of the first rows (columns: {cols})")
    dropped: Counter[str] = Counter()
    examples: list[dict] = []
    converted: Counter[str] = Counter()
    unwrapped: Counter[str] = Counter()

    def drop(i: int, reason: str, key: str) -> None:
        dropped[key] += 1
        if len(examples) < MAX_EXAMPLES:
            examples.append({"index": i, "reason": reason})

    rows: list[dict] = []
    for i, raw in enumerate(src.raws):
        if verl and is_verl(raw):
            problem, answer, solution = _verl_fields(raw)
        else:
            problem, answer, solution = _get(raw, o.problem_key), _get(raw, o.answer_key), _get(raw, o.solution_key)
        if isinstance(problem, (int, float)) and not isinstance(problem, bool):
            problem = str(problem)
        if not isinstance(problem, str) or not problem.strip():
            what = "missing" if problem is None else "empty" if isinstance(problem, str) else "a " + type(problem).__name__
            drop(i, f"problem ({o.problem_key}) is {what}", "no problem")
            continue
        if len(problem) > o.max_problem_chars:
            drop(i, f"problem has {len(problem)} characters (> --max-problem-chars {o.max_problem_chars})", "problem too long")
            continue
        ans, how = T.answer_text(answer)
        if ans is None:
            drop(i, f"{how} ({o.answer_key})", "unusable answer")
            continue
        if how:
            converted[how] += 1
        if not o.keep_instructions:
            problem, wrapper = T.unwrap(problem)
            if wrapper:
                unwrapped[wrapper] += 1
        if solution is not None and not isinstance(solution, str):
            solution = None
        rows.append(
            {"id": T.row_id(problem), "problem": problem.strip(), "answer": ans, "solution": solution or None, "source_index": i}
        )

    # exact duplicates: the same id
    seen: dict[str, dict] = {}
    kept: list[dict] = []
    pairs: list[dict] = []
    conflicting = exact = 0
    for r in rows:
        first = seen.get(r["id"])
        if first is None:
            seen[r["id"]] = r
            kept.append(r)
            continue
        exact += 1
        conflicting += T.normalise(first["answer"]) != T.normalise(r["answer"])
        drop(r["source_index"], f"exact duplicate of source row {first['source_index']} (id {r['id']})", "exact duplicate")
        if len(pairs) < MAX_EXAMPLES:
            pairs.append({"kind": "exact", "kept": first["id"], "dropped": r["id"], "similarity": 1.0})
    near = near_duplicates(kept, o.near_ngram, o.near_threshold)
    for i, (j, sim) in near.items():
        drop(
            kept[i]["source_index"],
            f"near duplicate (similarity {sim}) of source row {kept[j]['source_index']}",
            "near duplicate",
        )
        if len(pairs) < MAX_EXAMPLES:
            pairs.append({"kind": "near", "kept": kept[j]["id"], "dropped": kept[i]["id"], "similarity": sim})
    kept = [r for i, r in enumerate(kept) if i not in near]
    if not kept:
        raise ConfigError(f"source {label!r}: no usable rows ({', '.join(f'{k}: {v}' for k, v in dropped.items())})")

    tok = load_tokenizer(o.tokenizer)
    lengths = {"tokenizer": o.tokenizer, "problem": _percentiles(token_lengths(tok, [r["problem"] for r in kept]))}
    sols = [r["solution"] for r in kept if r["solution"]]
    if sols:
        lengths["solution"] = _percentiles(token_lengths(tok, sols))
    kinds = Counter(T.answer_kind(r["answer"]) for r in kept)
    step = {
        "step": "prepare",
        "source": {**src.meta, "verl_format": verl},
        "columns": {"problem": o.problem_key, "answer": o.answer_key, "solution": o.solution_key}
        if not verl
        else {
            "problem": "prompt (before [TEACHER_CONTEXT_TOKEN])",
            "answer": "reward_model.ground_truth",
            "solution": "extra_info.solution / hint",
        },
        "counts": {"read": len(src.raws), "kept": len(kept), "dropped": dict(dropped)},
        "unwrapped": dict(unwrapped),
        "duplicates": {
            "exact": exact,
            "near": len(near),
            "near_ngram": o.near_ngram,
            "near_threshold": o.near_threshold,
            "conflicting_answers": conflicting,
            "pairs": pairs,
        },
        "dropped_examples": examples,
        "answers": {
            "kinds": {k: kinds.get(k, 0) for k in T.ANSWER_KINDS},
            "converted": {"number": converted["number"], "list": converted["list"]},
        },
        "lengths": lengths,
        "with_solution": len(sols),
    }
    return kept, step


def prepare(o: PrepareOptions) -> dict:
    """Read, clean and write; returns the card."""
    check_output(o.out, o.overwrite)  # before the (possibly long) read: refuse early
    src = read_source(o.source, o.split, o.revision, o.name)
    load_tokenizer(o.tokenizer)  # a tokenizer that cannot be had (no hub from here): before the cleaning
    if o.limit is not None:
        src.raws = src.raws[: o.limit]
        src.meta["limit"] = o.limit
    rows, step = build_rows(src, o)
    data = rows_bytes(rows, o.out.suffix)
    check_output(o.out, o.overwrite, data)
    card = new_card(o.out, "rows", rows, [step])
    write_atomic(card_files(o.out, card) + [(o.out, data)])
    return card
