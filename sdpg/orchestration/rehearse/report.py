"""The rehearsal's report: per run its verdict, what was checked, shrunk and measured, and what was not rehearsed
here; on the console, in ``report.md`` and in ``report.json``; and the exit code it implies."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from sdpg import fsio
from sdpg.orchestration.rehearse.plan import Context, Outcome, _clip


def write_report(outcomes: list[Outcome], ctx: Context, folder: Path, timing: dict, models: dict, sources: dict) -> str:
    """The console text; also writes ``report.md`` and ``report.json`` in ``folder``."""
    n_pass = sum(o.status == "pass" for o in outcomes)
    head = [("run", "result", "steps/s", "wall", "first error")]
    for o in outcomes:
        head.append(
            (
                o.name,
                o.status.upper(),
                f"{o.steps_per_s:.2f}" if o.steps_per_s else "-",
                f"{o.wall_s:.0f}s" if o.wall_s else "-",
                _clip(o.first_error, 160),
            )
        )
    widths = [max(len(r[i]) for r in head) for i in range(4)]
    table = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in head]
    table.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 11)
    seconds = timing["wall_s"]
    lines = [
        f"Rehearsal of {ctx.spec_path} ({ctx.tool}): {n_pass}/{len(outcomes)} runs pass in {seconds:.0f} s "
        f"({timing['cpu_s']:.0f} s of CPU; load average {timing['load_average']:.1f} on {os.cpu_count()} cores)",
        "",
    ]
    lines += table
    for o in outcomes:
        if o.status != "pass" and o.errors:
            lines.append(f"\n{o.name}: {o.status}")
            lines += [f"  - {e}" for e in o.errors]
    # prompts: each distinct rendering once
    shown: dict[tuple, list[str]] = {}
    for o in outcomes:
        if o.student_prompt is not None:
            shown.setdefault((o.student_prompt, o.teacher_prompt), []).append(o.name)
    for (s, t), names in shown.items():
        who = "all runs" if len(names) == len(outcomes) else ", ".join(names)
        lines += ["", f"First student prompt ({who}):", _indent(s), f"First teacher prompt ({who}):", _indent(t)]
    verdicts: dict[tuple, list[str]] = {}
    for o in outcomes:
        if o.scorer:
            verdicts.setdefault(tuple(json.dumps(v, sort_keys=True) for v in o.scorer), []).append(o.name)
    for vs, names in verdicts.items():
        who = "all runs" if len(names) == len(outcomes) else ", ".join(names)
        lines += ["", f"Scorer on gold answers ({who}):"]
        for v in map(json.loads, vs):
            lines.append(
                f"  {v['source']} row {v['row']}, {v.get('scorer', '')}: gold {_clip(v['gold'], 30)!r} written {v['how']} "
                f"{_clip(v['response'], 50)!r} -> {v['score']:g}"
            )
    warnings = sorted({w for o in outcomes for w in o.warnings})
    if warnings:
        lines += ["", "Warnings:"] + [f"  - {w}" for w in warnings]
    scaled = next((o.shrunk for o in outcomes if o.shrunk), None)
    if scaled:
        lines += ["", "Scaled for the rehearsal (real -> here): " + "; ".join(f"{k} {v}" for k, v in scaled.items())]
    notes = []
    for o in outcomes:
        for n in o.not_rehearsed:
            if n not in notes:
                notes.append(n)
    if notes:
        lines += ["", "Not rehearsed here:"] + [f"  - {n}" for n in notes]
    lines += [
        "",
        f"Report: {folder / 'report.md'} and {folder / 'report.json'}"
        + (
            f"; MLflow: mlflow ui --backend-store-uri sqlite:///{folder / 'mlflow.db'}"
            if (folder / "mlflow.db").is_file()
            else "; nothing ran, no MLflow store"
        ),
    ]
    text = "\n".join(lines)
    fsio.write_text(folder / "report.md", _markdown(outcomes, ctx, seconds, text), root=folder)
    payload = {
        "spec": str(ctx.spec_path),
        "tool": ctx.tool,
        "seconds": seconds,
        **timing,
        "passed": n_pass,
        "runs": [{**asdict(o), "first_error": o.first_error} for o in outcomes],
        "models": {
            k[0]: (str(v) if isinstance(v, Exception) else {**v.__dict__, "path": str(v.path)}) for k, v in models.items()
        },
        "data": {k[0]: {"rows": v.n_rows, "rehearsal_copy": v.rehearsal_source, "error": v.error} for k, v in sources.items()},
    }
    fsio.write_text(folder / "report.json", json.dumps(payload, indent=1, default=str), root=folder)
    return text


def _indent(s: str | None, pad: str = "    | ") -> str:
    return "\n".join(pad + ln for ln in (s or "").splitlines()) or pad


def _markdown(outcomes: list[Outcome], ctx: Context, seconds: float, console: str) -> str:
    md = [
        f"# Rehearsal of `{ctx.spec_path}`",
        "",
        f"{sum(o.status == 'pass' for o in outcomes)}/{len(outcomes)} runs pass ({seconds:.0f} s).",
        "",
        "| run | result | steps/s | wall | first error |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        md.append(
            f"| {o.name} | {o.status} | {o.steps_per_s and f'{o.steps_per_s:.2f}' or '-'} | "
            f"{o.wall_s and f'{o.wall_s:.0f} s' or '-'} | {o.first_error.replace('|', '/')} |"
        )
    md += ["", "## Details", "", "```", console, "```", ""]
    return "\n".join(md)


def exit_code(outcomes: list[Outcome]) -> int:
    return 0 if outcomes and all(o.status == "pass" for o in outcomes) else 1
