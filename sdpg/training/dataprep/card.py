"""The data card: what a prepared file is, where it came from and what was done to it (``*.card.json`` and a
rendered ``*.card.md``). Each step (prepare, contexts, check) appends its own section; nothing in a card depends
on the clock, so the same inputs give the same card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CARD_VERSION = 1


def load_card(path: Path) -> dict | None:
    """The card JSON beside a data file, or None."""
    from sdpg.training.dataprep.sources import card_paths

    p = card_paths(path)[1]
    if not p.is_file():
        return None
    try:
        card = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return card if isinstance(card, dict) and card.get("sdpg_data_card") else None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def _table(rows: list[tuple[Any, ...]], head: tuple[str, ...]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(x).replace("|", "\\|").replace("\n", " ") for x in r) + " |")
    return out + [""]


def _short(text: str, n: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def render_markdown(card: dict) -> str:
    """The card as Markdown, for people."""
    md = [f"# Data card: `{card['file']}`", ""]
    md += [f"{card['rows']} rows, format `{card['format']}`, content SHA-256 `{card['content_sha256'][:16]}…`.", ""]
    for step in card.get("steps", []):
        kind = step["step"]
        if kind == "prepare":
            src = step["source"]
            md += ["## Source", ""]
            md += _table([(k, v) for k, v in src.items() if v is not None and k != "columns"], ("field", "value"))
            kept = step["counts"]["kept"]
            have = {"problem": kept, "answer": kept, "solution": step.get("with_solution", 0)}
            md += _table(
                [(k, v, have.get(k, "")) for k, v in step["columns"].items()], ("row field", "source column", "rows with it")
            )
            c = step["counts"]
            md += ["## Rows", ""]
            md += _table(
                [("read", c["read"]), ("kept", c["kept"])] + [(f"dropped: {k}", v) for k, v in c["dropped"].items()],
                ("", "rows"),
            )
            if step["unwrapped"]:
                md += [
                    "Instruction wrappers removed from problems: "
                    + ", ".join(f"{k} ({v})" for k, v in step["unwrapped"].items()),
                    "",
                ]
            d = step["duplicates"]
            md += [
                "## Duplicates",
                "",
                f"Exact (normalised text): {d['exact']} dropped. Near (word {d['near_ngram']}-gram Jaccard ≥ "
                f"{d['near_threshold']}): {d['near']} dropped. Same problem with a different answer: {d['conflicting_answers']}.",
                "",
            ]
            if d["pairs"]:
                md += _table(
                    [(p["kind"], p["kept"], p["dropped"], p.get("similarity", 1.0)) for p in d["pairs"][:20]],
                    ("kind", "kept id", "dropped id", "similarity"),
                )
            if step["dropped_examples"]:
                md += ["Dropped rows (first 20):", ""]
                md += _table([(e["index"], e["reason"]) for e in step["dropped_examples"][:20]], ("source row", "why"))
            a = step["answers"]
            md += ["## Answers", ""]
            md += _table([(k, v) for k, v in a["kinds"].items() if v], ("format", "rows"))
            if any(a["converted"].values()):
                md += ["Converted to text: " + ", ".join(f"{k} {v}" for k, v in a["converted"].items() if v), ""]
            ln = step["lengths"]
            md += [f"## Lengths (tokens of `{ln['tokenizer']}`)", ""]
            md += _table(
                [
                    (field, *(s[q] for q in ("p50", "p90", "p99", "max", "mean")))
                    for field, s in ln.items()
                    if isinstance(s, dict)
                ],
                ("field", "p50", "p90", "p99", "max", "mean"),
            )
        elif kind == "contexts":
            md += ["## Contexts (teacher solutions, verified)", ""]
            md += _table([(k, v) for k, v in step["settings"].items()], ("setting", "value"))
            md += _table([(k, v) for k, v in step["results"].items()], ("result", "value"))
        elif kind == "check":
            md += ["## Contamination check", ""]
            md += [
                f"Against {', '.join(step['benchmarks'])}: exact match after normalisation and word "
                f"{step['ngram']}-gram overlap. {step['flagged_rows']} training rows flagged"
                + (f", dropped ({step['dropped']})." if step.get("dropped") is not None else "."),
                "",
            ]
            md += _table(
                [(b, s["rows"], s["exact"], s["ngram"]) for b, s in step["per_benchmark"].items()],
                ("benchmark", "benchmark rows", "exact matches", f"{step['ngram']}-gram overlaps"),
            )
            if step["pairs"]:
                md += _table(
                    [
                        (p["benchmark"], p["bench_index"], p["train_id"], p["kind"], _short(p["evidence"], 70))
                        for p in step["pairs"][:30]
                    ],
                    ("benchmark", "bench row", "train id", "kind", "shared text"),
                )
    return "\n".join(md).rstrip() + "\n"


def card_files(out: Path, card: dict) -> list[tuple[Path, bytes]]:
    from sdpg.training.dataprep.sources import card_paths

    md_path, json_path = card_paths(out)
    return [
        (json_path, (json.dumps(card, indent=1, ensure_ascii=False) + "\n").encode()),
        (md_path, render_markdown(card).encode()),
    ]


def new_card(out: Path, fmt: str, rows: list[dict], steps: list[dict]) -> dict:
    from sdpg.training.dataprep.sources import content_sha256

    return {
        "sdpg_data_card": CARD_VERSION,
        "file": out.name,
        "format": fmt,
        "rows": len(rows),
        "content_sha256": content_sha256(rows),
        "steps": steps,
    }
