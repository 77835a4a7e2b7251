"""sdpg-report SOURCE --out DIR: figures, tables and an index page from an experiment's MLflow runs.

SOURCE is an ablation spec, a sweep spec, an output folder with ``mlflow.db``, or ``URI#EXPERIMENT``.
The page is written twice from the same text: index.md, and index.html rendered from it by a Markdown
library. Reading is read-only: a SOURCE with no runs yet is refused before anything is created.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from sdpg import fsio
from sdpg.reporting import page, report, sweeps

TRAIN_PANELS = [
    "train/accuracy",
    "train/opd_kl",
    "train/gate_fraction",
    "train/beta",
    "train/ref_kl",
    "train/pg_clipfrac",
    "train/grad_norm",
    "timing/step",
]
BASELINES = ("grpo", "dapo", "dr_grpo")


def pd_isna(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _seed_counts(df, variants: list[str]) -> dict[str, int]:
    n = df.groupby("variant").seed.nunique().to_dict()
    return {v: int(n.get(v, 0)) for v in variants}


def _too_few(counts: dict[str, int]) -> list[str]:
    few = [f"{v} has {n}" for v, n in counts.items() if n < report.MIN_SEEDS]
    if len(few) > 4:
        return [
            f"{len(few)} of {len(counts)} variants have a single seed"
            if all(n == 1 for n in counts.values() if n < report.MIN_SEEDS)
            else f"{len(few)} of {len(counts)} variants have fewer"
        ]
    return few


def _names(vs: list[str], most: int = 4) -> str:
    return ", ".join(vs) if len(vs) <= most else f"{len(vs)} of them"


def _band_caption(counts: dict[str, int]) -> str:
    few = [v for v, n in counts.items() if n < report.MIN_SEEDS]
    s = (
        f"Lines: mean over seeds (n in the legend). Shaded: 95% bootstrap band over seeds, drawn only for "
        f"variants with at least {report.MIN_SEEDS} seeds"
    )
    if few and len(few) == len(counts):
        return s + "; none here: every variant has a single seed, so there is no spread over seeds to show."
    return s + (f"; none for {_names(few)} (a single seed: no spread to show)." if few else ".")


def _seeds_line(counts: dict[str, int], noun: str) -> str:
    if len(set(counts.values())) == 1:
        n = next(iter(counts.values()))
        return f"{len(counts)} {noun}, {n} seed{'s' if n != 1 else ''} each" + (
            f": {', '.join(counts)}" if noun == "variants" else ""
        )
    return f"{len(counts)} {noun}: " + ", ".join(f"{v} ({n} seed{'s' if n != 1 else ''})" for v, n in counts.items())


def _notes_caption(notes: dict[str, list[str]]) -> str:
    if not notes:
        return ""
    items = "; ".join(f"`{m}`: {', '.join(v)}" for m, v in notes.items())
    return (
        " Series that are identically 0 (a term the method does not compute, e.g. GRPO's opd_kl, or an event that "
        "never happened, e.g. no clipped ratio) are drawn dotted at 0 and named; metrics a run did not log are named "
        f"too: {items}."
    )


def _fmt_cell(mean: float, reached: int, total: int, digits: int) -> str:
    if reached == 0:
        return f"never (0/{total})"
    s = f"{mean:.{digits}f}"
    return s if reached == total else f"{s} ({reached}/{total} seeds)"


STABILITY_TEXT = {
    "entropy_collapse_step": ("Entropy collapse", "first step at which train/entropy falls below 25% of its first value", 0),
    "length_collapse_step": (
        "Length collapse",
        "first step at which train/response_length falls below 50% of its first value",
        0,
    ),
    "max_reward_drawdown": ("Reward drawdown", "largest fall of train/reward below its running maximum", 3),
    "late_variance": ("Late variance", "variance of the first benchmark over the last quarter of its evaluations", 5),
    "steps_to_threshold": ("Steps to threshold", "first step at which the first benchmark reaches the threshold", 0),
}


def stability_section(
    per_run,
    summary,
    threshold: float | None,
    bench: str | None,
    order: list[str] | None = None,
    late_k: int | None = None,
    tag: str = "",
) -> str:
    if order:
        rank = {v: i for i, v in enumerate(order)}
        summary = summary.sort_values("variant", key=lambda s: s.map(lambda v: rank.get(v, len(rank))), kind="stable")
    cols = [c for c in STABILITY_TEXT if c in summary.columns]
    head = ["Variant", "Seeds"] + [
        STABILITY_TEXT[c][0] + (f" ({threshold:g})" if c == "steps_to_threshold" else "") for c in cols
    ]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for _, r in summary.iterrows():
        n = int(r["seeds"])
        cells = [
            "–" if c == "late_variance" and late_k == 1 else _fmt_cell(r[c], n - int(r[f"{c}_never"]), n, STABILITY_TEXT[c][2])
            for c in cols
        ]
        lines.append(f"| {r['variant']} | {n} | " + " | ".join(cells) + " |")
    what = "; ".join(f"**{STABILITY_TEXT[c][0]}**: {STABILITY_TEXT[c][1]}" for c in cols)
    text = (
        "\n".join(lines) + f"\n\nEach cell: mean over the seeds where the event happened; `never (0/n)`: no seed of "
        f"the variant had it, `(k/n seeds)`: only k of n did. {what}."
    )
    if bench:
        text += f" First benchmark: `{bench}`."
    if late_k is not None and "late_variance" in cols:
        text += f" Late variance here is over the last {late_k} evaluation{'s' if late_k != 1 else ''} of each run" + (
            " (one value has no variance: not shown; run longer or evaluate more often)." if late_k == 1 else "."
        )
    if threshold is None:
        text += " Steps to a threshold: not computed; give `--threshold X` (an accuracy of the first benchmark)."
    return text + f" Per run: [stability_runs{tag}.csv](tables/stability_runs{tag}.csv).\n"


def _ci(lo: float, hi: float, d: int) -> str:
    return "–" if math.isnan(lo) else f"[{lo:.{d}f}, {hi:.{d}f}]"


def _num(x: float, d: int, sign: bool = False) -> str:
    return "–" if math.isnan(x) else (f"{x:+.{d}f}" if sign else f"{x:.{d}f}")


def improvement_section(
    lb,
    benches: list[str],
    variants: list[str],
    base: str | None,
    counts: dict[str, int],
    out: Path,
    compare: str = "baseline",
    tag: str = "",
) -> str:
    """IQM of the Last scores and, per variant, against ``base`` (``compare="baseline"``) or against the
    variant before it (``"previous"``): the IQM difference and the probability of improvement with 95%
    intervals. Written to ``tables/improvement{tag}.md`` and returned ("" when there is nothing to compare)."""
    scores = {}
    for var in variants:
        last = lb[(lb.variant == var) & (lb.kind == "Last")]
        per = [np.asarray(last[last.metric == m].iloc[0]["per_seed"]) for m in benches if (last.metric == m).any()]
        if len(per) == len(benches) and len({len(p) for p in per}) == 1:
            scores[var] = np.stack(per, axis=1)  # [seeds, benchmarks]
    if len(scores) < 2 or (compare == "baseline" and base not in scores):
        return ""
    imp = report.improvement(scores, base, compare=compare)
    if compare == "previous":
        lines = [
            "| Variant | Seeds | IQM (Last) | 95% CI | Against | ΔIQM | 95% CI | P(improve) | 95% CI | Intervals separate? |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for _, r in imp.iterrows():
            if pd_isna(r["against"]):
                tail = "(first) | – | – | – | – | –"
            else:
                sep = "–"
                if not math.isnan(r["d_lo"]):
                    sep = "yes: better" if r["d_lo"] > 0 else "yes: worse" if r["d_hi"] < 0 else "no"
                tail = (
                    f"{r['against']} | {_num(r['d_iqm'], 3, True)} | {_ci(r['d_lo'], r['d_hi'], 3)} | "
                    f"{_num(r['p_improve'], 2)} | {_ci(r['p_lo'], r['p_hi'], 2)} | {sep}"
                )
            lines.append(f"| {r['variant']} | {r['seeds']} | {r['iqm']:.3f} | {_ci(r['iqm_lo'], r['iqm_hi'], 3)} | {tail} |")
        who = "the variant before it (the previous step)"
        skipped = [v for v in variants if v not in scores]
    else:
        lines = [
            f"| Variant | Seeds | IQM (Last) | 95% CI | ΔIQM vs {base} | 95% CI | P(improve over {base}) | 95% CI |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for _, r in imp.iterrows():
            lines.append(
                f"| {r['variant']} | {r['seeds']} | {r['iqm']:.3f} | {_ci(r['iqm_lo'], r['iqm_hi'], 3)} | "
                f"{_num(r['d_iqm'], 3, True)} | {_ci(r['d_lo'], r['d_hi'], 3)} | {_num(r['p_improve'], 2)} | "
                f"{_ci(r['p_lo'], r['p_hi'], 2)} |"
            )
        who = str(base)
        skipped = []
    text = "\n".join(lines) + "\n\n"
    few = _too_few({v: counts[v] for v in scores})
    if few:
        text += (
            f"**No intervals and no probability of improvement where a variant has fewer than {report.MIN_SEEDS} "
            f"seeds** ({', '.join(few)}): over one seed an interval has zero width and P(improve) only counts the "
            f"benchmarks won, so neither says anything about seed-to-seed variation. Add seeds to the spec "
            f"(`seeds: [0, 1, 2]`) to get them. "
        )
    if skipped:
        text += (
            f"Left out (no Last score on every benchmark yet): {', '.join(skipped)}; the next step is compared "
            f"with the one before it. "
        )
    text += (
        f"IQM: interquartile mean of the Last scores over seeds x {len(benches)} benchmark(s); ΔIQM: the variant's "
        f"IQM minus that of {who}; P(improve): probability that a seed of the variant beats a seed of {who} on a "
        f"benchmark, averaged over benchmarks (ties count one half). 95% intervals from a stratified bootstrap over "
        f"seeds within each benchmark, both sides resampled independently (2,000 resamples; rliable, Agarwal et al. "
        f"2021)."
    )
    if compare == "previous":
        text += (
            " An effect is called one only when the intervals separate: the ΔIQM interval excludes 0 (then "
            "P(improve)'s lies on the same side of 0.5 in all but borderline cases)."
        )
    text += "\n"
    fsio.write_text(out / "tables" / f"improvement{tag}.md", text)
    return text


def _trials_as_variants(src, runs, df, order):
    """A sweep's runs named by their trial (number and parameters): (df with those names as variants, the
    study, its trials frame, the parameter keys, each name's trial state, the variants' order)."""
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
    return df, study, trials, keys, state, order


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
    df = df.assign(group=df.run_id.map(dict(zip(runs.run_id, runs.group))).fillna(""))
    if not order and src.variants:  # an ablation: the spec's order, then any variant the spec no longer has
        present = list(dict.fromkeys(df.variant))
        order = [v for v in src.variants if v in present] + [v for v in present if v not in src.variants]

    # a sweep: variants are trials, named by number and parameters; pruned and failed ones kept apart
    trials = None
    if src.kind == "sweep" or runs.trial.notna().any():
        df, study, trials, keys, state, order = _trials_as_variants(src, runs, df, order)
    variants = order or list(dict.fromkeys(df.variant))
    variants = [v for v in variants if v in set(df.variant)] or list(dict.fromkeys(df.variant))
    counts = _seed_counts(df, variants)
    benches = report.benchmark_metrics(df, src.benchmarks)
    log(f"[sdpg-report] {df.run_id.nunique()} runs, {len(variants)} variants, benchmarks: {', '.join(benches) or 'none'}")
    fsio.ensure_dir(out / "figures", root=out)
    fsio.ensure_dir(out / "tables", root=out)
    sections: list[tuple] = []  # (title, body) or (title, body, heading level)

    # a sweep's own sections first: what was tried, how it went, what mattered
    complete = variants
    if trials is not None:
        complete = [v for v in variants if state.get(v) == "complete"]
        direction = (src.objective or {}).get("direction", "maximize")
        tt = sweeps.trials_table(trials, keys, src.objective, direction)
        sweeps.trials_csv(trials, keys, out / "tables" / "trials.csv")
        counts_by_state = trials.state.value_counts().to_dict()
        summary = ", ".join(f"{counts_by_state[s]} {s}" for s in sweeps.STATE_ORDER if s in counts_by_state)
        if trials.attrs.get("duplicates"):
            summary += (
                f" ({trials.attrs['duplicates']} more proposals repeated a point another trial holds and were "
                f"dropped untrained; not listed)"
            )
        src_note = (
            ""
            if study is not None
            else (
                " The Optuna storage was not found, so states come from the MLflow run tags and objective values are not known."
            )
        )
        sections.append(
            (
                "Trials",
                f"{len(trials)} trials: {summary}. Best completed trial in bold. Pruned trials were "
                f"stopped early by the pruner: the value shown is the last one they reported, at the "
                f"step given, and they are left out of the Last/Best table below.{src_note}\n\n"
                f"{tt}\n[CSV](tables/trials.csv)",
            )
        )
        if study is not None:
            target = (src.objective or {}).get("metric", "objective")
            png, why = sweeps.plot_history(study, out / "figures" / "optimization_history", target)
            body = (
                f"![optimisation history](figures/{png.name})\n\n[PDF](figures/{png.with_suffix('.pdf').name}) · "
                f"Optuna's optimisation history: the objective of each completed trial and the best so far "
                f"(pruned trials have no objective and are not in it)."
                if png
                else f"Not drawn: {why}."
            )
            sections.append(("Optimisation history", body))
            png, how = sweeps.plot_importance(study, out / "figures" / "param_importances")
            body = (
                f"![parameter importances](figures/{png.name})\n\n[PDF](figures/{png.with_suffix('.pdf').name}) · "
                f"Optuna's parameter importances ({how}, completed trials): the share of the objective's variance "
                f"each parameter explains."
                if png
                else f"Not drawn: {how}."
            )
            sections.append(("Parameter importance", body))

    def group_sections(df, variants, counts, benches, complete, tag: str) -> list[tuple]:
        """Figures, tables and stability of one set of runs (every run, or one named grid group's); ``tag``
        suffixes the group's file names."""
        sections: list[tuple] = []
        # figures
        dashed = [v for v in variants if trials is not None and state.get(v) == "pruned"]
        labels = {v: f"{v} (pruned)" for v in dashed}
        notes: dict[str, list[str]] = {}
        grid = report.paper_grid(
            df,
            out / "figures" / f"curves{tag}",
            ema=ema,
            order=variants,
            labels=labels,
            dashed=dashed,
            notes=notes,
            benchmarks=src.benchmarks,
        )
        pruned_note = " Dashed: pruned trials (stopped early)." if dashed else ""
        sections.append(
            (
                "Curves",
                f"![curves](figures/{grid.name})\n\n[PDF](figures/{grid.with_suffix('.pdf').name}) · "
                f"{_band_caption(counts)}{pruned_note}{_notes_caption(notes)}",
            )
        )
        present = [m for m in TRAIN_PANELS if m in set(df.metric)]
        if present:
            notes = {}
            tr = report.plot_curves(
                df,
                present,
                out / "figures" / f"training{tag}",
                ncols=4,
                ema=ema,
                order=variants,
                labels=labels,
                dashed=dashed,
                notes=notes,
            )
            sections.append(
                (
                    "Training signals",
                    f"![training](figures/{tr.name})\n\n[PDF](figures/{tr.with_suffix('.pdf').name}) · "
                    f"{_band_caption(counts)}{pruned_note}{_notes_caption(notes)}",
                )
            )

        # tables (completed variants only: a pruned trial's Last is where it was stopped, not where it ended)
        if benches and complete:
            lb = report.last_best(df[df.variant.isin(complete)], benches)
            labels_b = {m: m.split("/")[1] for m in benches}
            v, cols, cells = report.table_matrix(lb, benches, complete, labels_b)
            seeds = [str(counts[x]) for x in v]
            fsio.write_text(out / "tables" / f"last_best{tag}.md", report.render_table(v, cols, cells, "markdown"))
            fsio.write_text(out / "tables" / f"last_best{tag}.tex", report.render_table(v, cols, cells, "latex"))
            fsio.write_text(out / "tables" / f"last_best{tag}.csv", report.render_table(v, cols, cells, "csv", seeds=seeds))
            few = _too_few({x: counts[x] for x in v})
            marked = "best per column bold, second underlined (ties share a rank)"
            if few:
                marked = f"no best marked: with fewer than {report.MIN_SEEDS} seeds a variant's mean cannot be ordered"
            caption = (
                f"Mean over seeds ± half-width of the 95% bootstrap interval over seeds; {marked}; "
                "Last: each run's final evaluation, Best: its maximum"
                + (f"; benchmarks: {', '.join(f'`{m}`' for m in benches)}" if benches else "")
                + "."
            )
            if few:
                caption += (
                    f" No ± where a variant has fewer than {report.MIN_SEEDS} seeds ({', '.join(few)}): one seed "
                    "gives no interval."
                )
            if trials is not None and len(complete) < len(variants):
                caption += " Completed trials only."
            sections.append(
                (
                    "Last and Best",
                    report.render_table(v, cols, cells, "markdown", seeds=seeds)
                    + "\n"
                    + caption
                    + f"\n\n[LaTeX](tables/last_best{tag}.tex) · [CSV](tables/last_best{tag}.csv) · "
                    f"[Markdown](tables/last_best{tag}.md)",
                )
            )
            ref = reference or (complete[0] if trials is None else None)
            if ref in complete and len(complete) > 1:
                d = report.delta_table(lb, benches, str(ref), order=complete, labels=labels_b)
                fsio.write_text(out / "tables" / f"ablation_delta{tag}.md", d)
                caveat = (
                    f" With fewer than {report.MIN_SEEDS} seeds ({', '.join(few)}) a difference is one run's against "
                    "another's: it does not say which method is better (seed-to-seed spread is often as large)."
                    if few
                    else ""
                )
                sections.append((f"Differences to {ref}", d + "\nMeans over seeds, variant minus reference." + caveat))
            if compare == "previous" and trials is None:
                text = improvement_section(lb, benches, complete, None, counts, out, "previous", tag)
                if text:
                    sections.append(("Each step against the previous one: IQM difference and probability of improvement", text))
            else:
                base = baseline or next((x for x in complete if x in BASELINES), complete[0] if trials is None else None)
                if base in complete:
                    text = improvement_section(lb, benches, complete, base, counts, out, "baseline", tag)
                    if text:
                        sections.append((f"Against {base}: IQM and probability of improvement", text))

        per_run, summary = report.stability(df, benches[0] if benches else None, threshold=threshold)
        fsio.write_text(out / "tables" / f"stability_runs{tag}.csv", per_run.to_csv(index=False))
        if benches:  # every run's scores, from which the tables above are computed
            fsio.write_text(out / "tables" / f"scores_runs{tag}.csv", report.run_scores(df, benches).to_csv(index=False))
        late_k = None
        if benches:
            n_evals = int(df[df.metric == benches[0]].groupby("run_id").step.nunique().min())
            late_k = max(1, int(round(0.25 * n_evals)))  # as report.stability(late_frac=0.25)
        stab = stability_section(per_run, summary, threshold, benches[0] if benches else None, variants, late_k, tag)
        fsio.write_text(out / "tables" / f"stability{tag}.md", stab)
        sections.append(("Stability", stab))

        return sections

    groups = list(dict.fromkeys(df.group))
    if groups == [""]:
        sections += group_sections(df, variants, counts, benches, complete, "")
    else:
        for g in groups:
            d = df[df.group == g]
            vs = [v for v in variants if v in set(d.variant)]
            gc = _seed_counts(d, vs)
            tag = "_" + "_".join(part.replace("=", "-") for part in g.split(", "))
            head = (
                f"Runs of the grid group `{g}`: {d.run_id.nunique()} runs · {_seeds_line(gc, 'variants')}"
                if g
                else f"Runs without a grid group (logged before groups were tagged): {d.run_id.nunique()} runs"
            )
            sections.append((g or "no group", head, 2))
            for title, body in group_sections(
                d, vs, gc, report.benchmark_metrics(d, src.benchmarks), [v for v in complete if v in vs], tag
            ):
                sections.append((f"{title} ({g})", body, 3))

    seeds_line = _seeds_line(counts, "trials" if trials is not None else "variants")
    md = [f"# Report: {exp}", "", f"Source: `{source}` · {df.run_id.nunique()} runs · {seeds_line}", ""]
    for title, body, *level in sections:
        md += [f"{'#' * (level[0] if level else 2)} {title}", "", body, ""]
    text = "\n".join(md)
    fsio.write_text(out / "index.md", text)
    fsio.write_text(out / "index.html", page.render_page(text, f"Report: {exp}", out))
    log(f"[sdpg-report] wrote {out / 'index.md'} and {out / 'index.html'}")
    return out / "index.md"


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
