"""sdpg-report SOURCE --out DIR: figures, tables and an index page from an experiment's MLflow runs.

SOURCE is an ablation spec, a sweep spec, an output folder with ``mlflow.db``, or ``URI#EXPERIMENT``.
The page is written twice from the same text: index.md, and index.html rendered from it by a Markdown
library. Reading is read-only: a SOURCE with no runs yet is refused before anything is created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdpg import fsio
from sdpg.reporting import page, report, sections, sweeps
from sdpg.reporting.sections import TRAIN_PANELS, pd_isna, seeds_line

__all__ = ["TRAIN_PANELS", "build_report", "render_folder"]


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
