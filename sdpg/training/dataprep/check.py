"""``sdpg-data check``: evaluation problems inside a training set.

Two tests per (training row, benchmark row): the same problem after normalisation (``text.normalise``: the
instruction wrappers, TeX spacing, case and white space do not count), and a shared word n-gram (13 by
default, as in the usual contamination checks) -- which finds a benchmark problem that was lightly reworded
or embedded in a longer text. A benchmark problem shorter than n words is checked for the exact match only, and
an n-gram that occurs in more than one distinct benchmark problem is boilerplate, not evidence.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from sdpg.training.config import ConfigError
from sdpg.training.dataprep import text as T
from sdpg.training.dataprep.card import card_files, load_card, new_card
from sdpg.training.dataprep.prepare import _verl_fields, is_verl
from sdpg.training.dataprep.sources import card_paths, check_output, read_source, rows_bytes, write_atomic


@dataclass
class CheckOptions:
    train: str
    benchmarks: dict[str, str]
    ngram: int = 13
    drop: Path | None = None
    report: Path | None = None
    overwrite: bool = False


def problem_of(raw: dict, source: str, i: int) -> str:
    if isinstance(raw.get("problem"), str):
        return raw["problem"]
    if is_verl(raw):
        return str(_verl_fields(raw)[0])
    for key in ("question", "Problem", "prompt"):
        if isinstance(raw.get(key), str):
            return raw[key]
    raise ConfigError(f"{source}: row {i} has no 'problem' text (fields: {', '.join(map(str, raw))[:200]})")


def find_contamination(train: list[str], benches: dict[str, list[str]], n: int) -> tuple[list[dict], dict]:
    """Offending (training row, benchmark row) pairs, and per-benchmark counts."""
    exact_index: dict[str, list[tuple[str, int]]] = {}
    gram_index: dict[tuple[str, ...], list[tuple[str, int]]] = {}
    gram_texts: dict[tuple[str, ...], set[str]] = {}
    for b, problems in benches.items():
        for j, p in enumerate(problems):
            norm = T.normalise(p)
            exact_index.setdefault(norm, []).append((b, j))
            toks = T.words(norm)
            if len(toks) >= n:
                for g in T.ngrams(toks, n):
                    gram_index.setdefault(g, []).append((b, j))
                    gram_texts.setdefault(g, set()).add(norm)
    # boilerplate ("... where m and n are relatively prime positive integers. Find m+n"): an n-gram of more than
    # one distinct benchmark problem is no evidence of any one of them
    boilerplate = [g for g, texts in gram_texts.items() if len(texts) > 1]
    for g in boilerplate:
        del gram_index[g]
    pairs: list[dict] = []
    per = {b: {"rows": len(ps), "exact": 0, "ngram": 0, "benchmark_rows_found": 0} for b, ps in benches.items()}
    found: dict[str, set[int]] = {b: set() for b in benches}
    for i, p in enumerate(train):
        norm = T.normalise(p)
        hits: dict[tuple[str, int], tuple[str, str]] = {}
        for b, j in exact_index.get(norm, ()):
            hits[(b, j)] = ("exact", norm[:200])
        toks = T.words(norm)
        if len(toks) >= n:
            for g in T.ngrams(toks, n):
                for b, j in gram_index.get(g, ()):
                    hits.setdefault((b, j), (f"{n}-gram", " ".join(g)))
        for (b, j), (kind, evidence) in sorted(hits.items()):
            per[b]["exact" if kind == "exact" else "ngram"] += 1
            found[b].add(j)
            pairs.append({"benchmark": b, "bench_index": j, "train_index": i, "kind": kind, "evidence": evidence})
    for b in benches:
        per[b]["benchmark_rows_found"] = len(found[b])
    return pairs, per


def check(o: CheckOptions) -> dict:
    if not o.benchmarks:
        raise ConfigError("sdpg-data check: no benchmark given; pass --bench NAME=FILE (e.g. --bench aime24=data/aime24.jsonl)")
    if o.ngram < 1:
        raise ConfigError(f"--ngram {o.ngram}: must be at least 1")
    if o.drop is not None:
        check_output(o.drop, o.overwrite, what="--drop")
    src = read_source(o.train)
    if not src.raws:
        raise ConfigError(f"--train {o.train!r}: has no rows")
    train = [problem_of(r, o.train, i) for i, r in enumerate(src.raws)]
    benches = {}
    for name, path in o.benchmarks.items():
        braws = read_source(path, split="test").raws
        if not braws:
            raise ConfigError(f"--bench {name}={path}: has no rows")
        benches[name] = [problem_of(r, path, i) for i, r in enumerate(braws)]
    pairs, per = find_contamination(train, benches, o.ngram)
    for p in pairs:
        p["train_id"] = src.raws[p["train_index"]].get("id") or T.row_id(train[p["train_index"]])
    flagged = sorted({p["train_index"] for p in pairs})
    step = {
        "step": "check",
        "train": o.train,
        "benchmarks": {name: path for name, path in o.benchmarks.items()},
        "ngram": o.ngram,
        "train_rows": len(train),
        "flagged_rows": len(flagged),
        "per_benchmark": per,
        "pairs": pairs,
        "dropped": None,
    }
    for name, s in per.items():
        print(
            f"{name}: {s['benchmark_rows_found']}/{s['rows']} benchmark problems found in training "
            f"({s['exact']} exact, {s['ngram']} {o.ngram}-gram)",
            file=sys.stderr,
        )
    for p in pairs:
        print(
            f"  {p['benchmark']}[{p['bench_index']}] ~ train[{p['train_index']}] id {p['train_id']}: "
            f"{p['kind']}: {p['evidence'][:100]}"
        )
    files: list[tuple[Path, bytes]] = []
    train_path = Path(o.train)
    in_card = load_card(train_path) if train_path.is_file() else None
    if in_card is not None:  # the checked file's card records the check (the data file itself is not touched)
        in_card = {**in_card, "steps": [s for s in in_card["steps"] if s["step"] != "check"] + [step]}
        files += card_files(train_path, in_card)
    if o.drop is not None:
        flagged_set = set(flagged)
        keep = [r for i, r in enumerate(src.raws) if i not in flagged_set]
        if not keep:
            raise ConfigError(f"--drop {str(o.drop)!r}: every training row is contaminated; nothing to write")
        data = rows_bytes(keep, o.drop.suffix)
        check_output(o.drop, o.overwrite, data, what="--drop")
        steps = [s for s in (in_card or {}).get("steps", []) if s["step"] != "check"]
        step_out = {**step, "dropped": len(flagged)}
        fmt = in_card["format"] if in_card else "rows"
        files += card_files(o.drop, new_card(o.drop, fmt, keep, steps + [step_out]))
        files.append((o.drop, data))
        print(f"dropped {len(flagged)} contaminated rows; wrote {len(keep)} rows to {o.drop}", file=sys.stderr)
    if o.report is not None:
        import json

        files.append((o.report, (json.dumps(step, indent=1, ensure_ascii=False) + "\n").encode()))
    if files:
        write_atomic(files)
    if in_card is not None:
        print(f"recorded in {card_paths(train_path)[0]}", file=sys.stderr)
    return step
