"""sdpg-report SOURCE --out DIR: figures, tables and an index page from an experiment's MLflow runs.

SOURCE is an ablation spec, a sweep spec, an output folder with ``mlflow.db``, or ``URI#EXPERIMENT``.
The page is written twice from the same text: index.md, and index.html rendered from it by a Markdown
library. Reading is read-only: a SOURCE with no runs yet is refused before anything is created.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sdpg import fsio
from sdpg.reporting import page, report, sections, sweeps
from sdpg.reporting.sections import TRAIN_PANELS, pd_isna, seeds_line

__all__ = ["TRAIN_PANELS", "build_report", "main", "render_folder"]


def _trials_as_variants(src, runs, df, order) -> tuple[Any, sections.Trials, list[str]]:
    """A sweep's runs named by their trial (number and parameters): (df with those names as variants, the
    trials, the variants' order)."""
    study = sweeps.load_study(src.storage_url, src.study_name)
    trials = sweeps.trials_frame(study, runs)
    keys = src.space or list(dict.fromkeys(k for p in trials.params for k in p))
    names = sweeps.trial_names(trials, keys)
    # a retried trial (its worker died) reuses the first attempt's runs: they belong to the last attempt
    latest: dict[int, int] = {}
    for t in trials.itertuples():
        origin = int(t.retry_of) if t.retry_of is not None and not pd_isna(t.retry_of) else int(t.number)
        latest[origin] = max(latest.get(origin, -1), int(t.number))
    by_run = {
        r.run_id: names.get(latest.get(int(r.trial), int(r.trial)), r.variant) for r in runs.itertuples() if not pd_isna(r.trial)
    }
    df = df.assign(variant=df.run_id.map(by_run).fillna(df.variant))
    state = {names[int(t.number)]: t.state for t in trials.itertuples() if int(t.number) in names}
    order = order or [names[n] for n in sorted(names) if names[n] in set(df.variant)]
    return df, sections.Trials(study, trials, keys, state), order


def load(source: str, src: report.Source, out: Path, tags: dict[str, str] | None, include_evals: bool, log):
    """(run table, long metric frame with each run's grid ``group``) of ``src``; refused when there is no store or
    no run with metrics yet, before anything is written."""
    uri, exp = src.uri, src.experiment
    if not report.store_exists(uri):
        how = (
            f"start it with: sdpg-{'sweep' if src.kind == 'sweep' else 'ablate'} {source}"
            if source.endswith((".yaml", ".yml"))
            else "run the experiment first"
        )
        raise ValueError(f"{source}: nothing to report yet: no MLflow store at {report.tracking.redact(uri)} ({how})")
    log(f"[sdpg-report] loading runs of {exp!r} from {report.tracking.redact(uri)}")
    runs = report.run_table(uri, exp, tags, include_evals=include_evals)
    df = report.load_runs(uri, exp, tags=tags, cache_dir=out / ".cache", include_evals=include_evals)
    if df.empty:
        raise ValueError(f"{source}: experiment {exp!r} has no runs with metrics yet")
    return runs, df.assign(group=df.run_id.map(dict(zip(runs.run_id, runs.group))).fillna(""))


def whole(src: report.Source, runs, df, order: list[str] | None) -> tuple[sections.Part, sections.Trials | None]:
    """Every run as one part, its variants in order (given, else the spec's, else as logged), and a sweep's trials."""
    if not order and src.variants:  # an ablation: the spec's order, then any variant the spec no longer has
        present = list(dict.fromkeys(df.variant))
        order = [v for v in src.variants if v in present] + [v for v in present if v not in src.variants]
    # a sweep: variants are trials, named by number and parameters; pruned and failed ones kept apart
    trials = None
    if src.kind == "sweep" or runs.trial.notna().any():
        df, trials, order = _trials_as_variants(src, runs, df, order)
    variants = order or list(dict.fromkeys(df.variant))
    variants = [v for v in variants if v in set(df.variant)] or list(dict.fromkeys(df.variant))
    complete = variants if trials is None else [v for v in variants if trials.state.get(v) == "complete"]
    part = sections.Part(df, variants, sections.seed_counts(df, variants), report.benchmark_metrics(df, src.benchmarks), complete)
    return part, trials


def write_page(ctx: sections.Context, title: str, source: str, part: sections.Part, body: list[sections.Section]) -> Path:
    """index.md, and index.html rendered from the same text."""
    noun = "trials" if ctx.trials is not None else "variants"
    md = [f"# Report: {title}", "", f"Source: `{source}` · {part.df.run_id.nunique()} runs · {seeds_line(part.counts, noun)}", ""]
    for s in body:
        md += [f"{'#' * s.level} {s.title}", "", s.body, ""]
    text = "\n".join(md)
    fsio.write_text(ctx.out / "index.md", text)
    fsio.write_text(ctx.out / "index.html", page.render_page(text, f"Report: {title}", ctx.out))
    return ctx.out / "index.md"


def build_report(
    source: str,
    out: str | Path,
    tags: dict[str, str] | None = None,
    reference: str | None = None,
    baseline: str | None = None,
    ema: float = 0.0,
    order: list[str] | None = None,
    threshold: float | None = None,
    log=print,
    compare: str | None = None,
    include_evals: bool = False,
) -> Path:
    """The report of ``source`` in ``out``. Runs tagged with named grid groups (``grid.<axis>``, e.g.
    ``task=chain``) get one part each: curves, Last/Best, comparisons and stability per group. ``compare``
    (default: the spec's ``report.compare``, else ``baseline``) says what IQM differences and probabilities of
    improvement are taken against: the ``baseline`` or the ``previous`` variant in order. ``include_evals`` (or
    a ``sdpg.kind=eval`` tag filter): ``sdpg-eval`` runs as rows of their own (a base model, a checkpoint), each
    one point at its step, after the spec's variants."""
    out = fsio.expand_path(out, "--out")
    include_evals = include_evals or (tags or {}).get("sdpg.kind") == "eval"
    src = report.resolve(source)
    compare = compare or src.compare or "baseline"
    if compare not in report.COMPARE:
        raise ValueError(f"--compare {compare!r}: expected one of {', '.join(report.COMPARE)}")
    runs, df = load(source, src, out, tags, include_evals, log)
    part, trials = whole(src, runs, df, order)
    benches = ", ".join(part.benches) or "none"
    log(f"[sdpg-report] {part.df.run_id.nunique()} runs, {len(part.variants)} variants, benchmarks: {benches}")
    fsio.ensure_dir(out / "figures", root=out)
    fsio.ensure_dir(out / "tables", root=out)
    ctx = sections.Context(out, src.benchmarks, sections.Options(reference, baseline, ema, threshold, compare), trials)
    body: list[sections.Section] = []
    if trials is not None:  # a sweep's own sections first: what was tried, how it went, what mattered
        body += [sections.trials_section(out, trials, src.objective), *sections.study_sections(out, trials.study, src.objective)]
    body += sections.group_parts(ctx, part)
    index = write_page(ctx, src.experiment, source, part, body)
    log(f"[sdpg-report] wrote {out / 'index.md'} and {out / 'index.html'}")
    return index


def render_folder(folder: str | Path) -> Path:
    """index.html of a report folder, rendered again from its index.md."""
    folder = Path(folder)
    md = folder / "index.md"
    if not md.is_file():
        raise ValueError(f"{folder}: no index.md in this folder")
    out = folder / "index.html"
    fsio.write_text(out, page.render_page(md.read_text(), None, folder))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sdpg-report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="ablation spec, sweep spec, output folder with mlflow.db, or URI#EXPERIMENT")
    p.add_argument("--out", help="folder for index.md, index.html, figures/ and tables/ (required unless --page-only)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="only runs with this MLflow tag")
    p.add_argument("--reference", help="variant the ablation deltas are taken against (default: the first)")
    p.add_argument("--baseline", help="RLVR baseline for IQM / probability of improvement (default: grpo if present)")
    p.add_argument(
        "--compare",
        choices=report.COMPARE,
        help="IQM difference and P(improve) of each variant against the baseline, or against the previous variant "
        "in order (a chain of one-piece ablation steps); default: the spec's report.compare, else baseline",
    )
    p.add_argument("--ema", type=float, default=0.0, help="EMA smoothing factor in [0, 1) for curves")
    p.add_argument("--order", nargs="+", help="variant order (legend, table rows)")
    p.add_argument("--threshold", type=float, help="accuracy threshold for steps-to-threshold")
    p.add_argument(
        "--include-evals",
        action="store_true",
        help="also show sdpg-eval runs in the experiment (base models, checkpoints) as rows, one point at their step",
    )
    p.add_argument(
        "--screenshot",
        action="store_true",
        help="also save screenshot.png of index.html as headless Chromium renders it (needs chromium)",
    )
    p.add_argument(
        "--page-only",
        action="store_true",
        help="SOURCE is a report folder: render its index.html again from its index.md (e.g. after editing it)",
    )
    a = p.parse_args(argv)
    if a.out is None and not a.page_only:
        p.error("the following arguments are required: --out")
    try:
        if a.page_only:
            index = render_folder(a.source)
            if a.screenshot:
                from sdpg.reporting import browser

                print(f"[sdpg-report] wrote {browser.screenshot(index, index.parent / 'screenshot.png')}", file=sys.stderr)
            return 0
        bad = [t for t in a.tag if "=" not in t]
        if bad:
            raise ValueError(f"--tag {bad[0]!r}: expected KEY=VALUE")
        if not 0 <= a.ema < 1:
            raise ValueError(f"--ema {a.ema}: expected a value in [0, 1)")
        if a.baseline is not None and a.compare == "previous":
            raise ValueError(f"--baseline {a.baseline!r}: each variant is compared with the previous one (--compare previous)")
        tags = dict(t.split("=", 1) for t in a.tag)
        index = build_report(
            a.source,
            a.out,
            tags,
            a.reference,
            a.baseline,
            a.ema,
            a.order,
            a.threshold,
            log=lambda m: print(m, file=sys.stderr, flush=True),
            compare=a.compare,
            include_evals=a.include_evals,
        )
        if a.screenshot:
            from sdpg.reporting import browser

            shot = browser.screenshot(index.with_suffix(".html"), index.parent / "screenshot.png")
            print(f"[sdpg-report] wrote {shot}", file=sys.stderr, flush=True)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
