"""``sdpg-data {prepare,contexts,check}``: its options; the work is ``sdpg.training.dataprep`` (see docs/data.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdpg.training.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    from sdpg.training.dataprep.contexts import SCORERS, TEMPLATES

    p = argparse.ArgumentParser(
        prog="sdpg-data",
        description="Make the training data: prepare a source into rows with a data card, generate verified "
        "privileged contexts with a teacher model, check a training set against evaluation sets.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{prepare,contexts,check}")

    pr = sub.add_parser("prepare", help="a dataset (hub id, local file, verl parquet) into rows + data card")
    pr.add_argument("source", help="hf:ID (a hub dataset id, or a local datasets folder), or a .parquet/.jsonl/.json/.csv file")
    pr.add_argument("--out", required=True, type=Path, help="output rows: .jsonl or .parquet (card beside it: OUT.card.md/.json)")
    pr.add_argument("--split", default="train", help="dataset split (hf: sources; default train)")
    pr.add_argument("--revision", default=None, help="dataset revision: a commit, tag or branch (hf: sources)")
    pr.add_argument("--name", default=None, help="dataset configuration name (hf: sources)")
    pr.add_argument("--problem-key", default="problem", help="column with the question (dotted for nested: prompt.0.content)")
    pr.add_argument("--answer-key", default="answer", help="column with the reference answer (e.g. reward_model.ground_truth)")
    pr.add_argument("--solution-key", default="solution", help="column with a worked solution (optional)")
    pr.add_argument(
        "--tokenizer", default="Qwen/Qwen3-4B", help="tokenizer of the card's length statistics (hub id, folder, or 'embedded')"
    )
    pr.add_argument("--near-ngram", type=int, default=8, help="word n-gram of the near-duplicate test (default 8)")
    pr.add_argument(
        "--near-threshold", type=float, default=0.8, help="n-gram Jaccard similarity that makes a near duplicate (default 0.8)"
    )
    pr.add_argument("--max-problem-chars", type=int, default=20000, help="longer problems are dropped (default 20000)")
    pr.add_argument(
        "--keep-instructions", action="store_true", help="keep known instruction wrappers (DAPO's, Fig. 4's) in problems"
    )
    pr.add_argument("--limit", type=int, default=None, help="read only the first N rows of the source")
    pr.add_argument("--overwrite", action="store_true", help="replace an output that holds a different dataset")

    cx = sub.add_parser("contexts", help="verified teacher solutions per row (rejection sampling, resumable)")
    cx.add_argument("input", help="prepared rows (.jsonl / .parquet with problem, answer)")
    cx.add_argument("--out", required=True, type=Path, help="output rows with `solution`: .jsonl or .parquet")
    cx.add_argument(
        "--verl-out", type=Path, default=None, help="also write the SDPG authors' verl parquet (sentinel, Fig. 4 prompts)"
    )
    cx.add_argument("--teacher", required=True, help="model folder or hub id; 'embedded' is the built-in task's model")
    cx.add_argument("--template", default="boxed", help=f"named teacher prompt: {', '.join(TEMPLATES)} (default boxed)")
    cx.add_argument("--template-text", default=None, help="your own teacher prompt with {problem} (and optionally {answer})")
    cx.add_argument("--scorer", choices=SCORERS, default=None, help="verifier of the teacher's answers (default: the template's)")
    cx.add_argument("--k", type=int, default=4, help="attempts per row; the first correct one is kept (default 4)")
    cx.add_argument("--temperature", type=float, default=1.0)
    cx.add_argument("--top-p", type=float, default=1.0)
    cx.add_argument("--max-new-tokens", type=int, default=4096)
    cx.add_argument("--seed", type=int, default=0)
    cx.add_argument("--shard-size", type=int, default=256, help="rows per resumable shard (default 256)")
    cx.add_argument(
        "--backend", choices=("auto", "vllm", "hf"), default="auto", help="auto: vLLM where installed, else transformers"
    )
    cx.add_argument("--chat-template", choices=("auto", "on", "off"), default="auto")
    cx.add_argument("--keep-thinking", action="store_true", help="keep a leading <think> block in the solution")
    cx.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    cx.add_argument("--batch-size", type=int, default=64, help="transformers backend: sequences per generate call")
    cx.add_argument("--overwrite", action="store_true", help="replace different outputs / restart a run with other settings")

    ck = sub.add_parser("check", help="contamination of a training set by evaluation problems")
    ck.add_argument("train", help="training rows (.jsonl / .parquet, plain or verl)")
    ck.add_argument("--bench", action="append", default=[], metavar="NAME=FILE", help="an evaluation set (repeat)")
    ck.add_argument("--ngram", type=int, default=13, help="word n-gram of the overlap test (default 13)")
    ck.add_argument("--drop", type=Path, default=None, help="write the training set without the flagged rows here")
    ck.add_argument("--report", type=Path, default=None, help="write the full report (every pair) as JSON here")
    ck.add_argument("--overwrite", action="store_true", help="replace a --drop output that holds a different dataset")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.command == "prepare":
        from sdpg.training.dataprep.prepare import PrepareOptions, prepare

        if a.near_ngram < 1 or not 0 < a.near_threshold <= 1 or a.max_problem_chars < 1 or (a.limit is not None and a.limit < 1):
            raise ConfigError(
                f"sdpg-data prepare: --near-ngram {a.near_ngram} must be >= 1, --near-threshold {a.near_threshold} in (0, 1], "
                f"--max-problem-chars {a.max_problem_chars} and --limit {a.limit} >= 1"
            )
        opts = {k: v for k, v in vars(a).items() if k != "command"}
        card = prepare(PrepareOptions(**opts))
        c = card["steps"][-1]["counts"]
        print(f"[sdpg-data] {c['kept']} of {c['read']} rows kept; wrote {a.out} and its card", file=sys.stderr)
        return 0
    if a.command == "contexts":
        from sdpg.training.dataprep.contexts import ContextOptions, generate_contexts

        generate_contexts(ContextOptions(**{k: v for k, v in vars(a).items() if k != "command"}))
        return 0
    from sdpg.training.dataprep.check import CheckOptions, check

    benches = {}
    for b in a.bench:
        name, eq, path = b.partition("=")
        if not eq or not name or not path:
            raise ConfigError(f"--bench {b!r}: expected NAME=FILE")
        benches[name] = path
    check(CheckOptions(train=a.train, benchmarks=benches, ngram=a.ngram, drop=a.drop, report=a.report, overwrite=a.overwrite))
    return 0
