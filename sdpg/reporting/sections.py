"""The sections of a report, one function each: what every section shares travels in a ``Context`` (where files
go, the reader's options, a sweep's trials) and a ``Part`` (the runs one part of the report covers: every run,
or one named grid group's). Each section writes its own files under ``figures/`` and ``tables/`` and returns
its Markdown; ``sdpg.reporting.build`` puts them in order.

The default baseline of the comparisons is the first variant named after an RLVR baseline method, as the
method presets declare them (``sdpg.training.methods.RLVR_BASELINES``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdpg import fsio
from sdpg.reporting import report, sweeps
from sdpg.training import methods

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


@dataclass(frozen=True)
class Options:
    """What the reader asked of the report beyond its source (``sdpg-report``'s flags)."""

    reference: str | None = None  # variant the differences are taken against (default: the first)
    baseline: str | None = None  # variant IQM differences are taken against (default: ``default_baseline``)
    ema: float = 0.0  # EMA smoothing of the curves
    threshold: float | None = None  # accuracy of the first benchmark for steps-to-threshold
    compare: str = "baseline"  # "baseline" or "previous" (each variant against the one before it)


@dataclass(frozen=True)
class Trials:
    """A sweep's trials: the Optuna ``study`` (None when its storage is gone), the trials ``frame``, the searched
    parameter ``keys`` and each trial's ``state`` by its name as a variant."""

    study: Any
    frame: Any
    keys: list[str]
    state: dict[str, str]


@dataclass(frozen=True)
class Context:
    """What every section of one report shares."""

    out: Path  # the report folder
    benchmarks: list[str]  # the spec's benchmark names in panel order ([] when not known)
    options: Options
    trials: Trials | None = None  # a sweep's trials; None for an ablation or a bare experiment


@dataclass(frozen=True)
class Part:
    """The runs one part of a report covers: every run, or one named grid group's."""

    df: Any  # the long metric frame of these runs (``report.load_runs``), variants named
    variants: list[str]  # in legend and table order
    counts: dict[str, int]  # seeds per variant
    benches: list[str]  # ``eval/<bench>/mean@k`` keys present
    complete: list[str]  # variants whose Last/Best count (a sweep: completed trials only)
    tag: str = ""  # suffix of the part's file names ("" for every run, "_task-chain" for a group)

    @property
    def first_bench(self) -> str | None:
        return self.benches[0] if self.benches else None


@dataclass(frozen=True)
class Section:
    title: str
    body: str
    level: int = 2  # Markdown heading level


def pd_isna(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def seed_counts(df, variants: list[str]) -> dict[str, int]:
    n = df.groupby("variant").seed.nunique().to_dict()
    return {v: int(n.get(v, 0)) for v in variants}


def default_baseline(variants: list[str], sweep: bool) -> str | None:
    """The first variant named after an RLVR baseline method (``methods.RLVR_BASELINES``); else the first
    variant of an ablation, and none for a sweep (its trials have no baseline)."""
    return next((v for v in variants if v in methods.RLVR_BASELINES), variants[0] if variants and not sweep else None)


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------


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


def seeds_line(counts: dict[str, int], noun: str) -> str:
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


def _ci(lo: float, hi: float, d: int) -> str:
    return "–" if math.isnan(lo) else f"[{lo:.{d}f}, {hi:.{d}f}]"


def _num(x: float, d: int, sign: bool = False) -> str:
    return "–" if math.isnan(x) else (f"{x:+.{d}f}" if sign else f"{x:.{d}f}")


def _figure(png: Path, alt: str, caption: str) -> str:
    return f"![{alt}](figures/{png.name})\n\n[PDF](figures/{png.with_suffix('.pdf').name}) · {caption}"


# --------------------------------------------------------------------------------------------
# A sweep's own sections: what was tried, how it went, what mattered
# --------------------------------------------------------------------------------------------


def trials_section(out: Path, sweep: Trials, objective: dict | None) -> Section:
    """Every trial with its state, objective and parameters; ``tables/trials.csv``."""
    trials, keys = sweep.frame, sweep.keys
    tt = sweeps.trials_table(trials, keys, objective, (objective or {}).get("direction", "maximize"))
    sweeps.trials_csv(trials, keys, out / "tables" / "trials.csv")
    by_state = trials.state.value_counts().to_dict()
    summary = ", ".join(f"{by_state[s]} {s}" for s in sweeps.STATE_ORDER if s in by_state)
    if trials.attrs.get("duplicates"):
        summary += (
            f" ({trials.attrs['duplicates']} more proposals repeated a point another trial holds and were "
            f"dropped untrained; not listed)"
        )
    src_note = (
        ""
        if sweep.study is not None
        else (" The Optuna storage was not found, so states come from the MLflow run tags and objective values are not known.")
    )
    return Section(
        "Trials",
        f"{len(trials)} trials: {summary}. Best completed trial in bold. Pruned trials were "
        f"stopped early by the pruner: the value shown is the last one they reported, at the "
        f"step given, and they are left out of the Last/Best table below.{src_note}\n\n"
        f"{tt}\n[CSV](tables/trials.csv)",
    )


def study_sections(out: Path, study, objective: dict | None) -> list[Section]:
    """Optuna's optimisation history and parameter importances (none without the study's storage)."""
    if study is None:
        return []
    target = (objective or {}).get("metric", "objective")
    png, why = sweeps.plot_history(study, out / "figures" / "optimization_history", target)
    history = (
        _figure(
            png,
            "optimisation history",
            "Optuna's optimisation history: the objective of each completed trial and the best so far "
            "(pruned trials have no objective and are not in it).",
        )
        if png
        else f"Not drawn: {why}."
    )
    png, how = sweeps.plot_importance(study, out / "figures" / "param_importances")
    importance = (
        _figure(
            png,
            "parameter importances",
            f"Optuna's parameter importances ({how}, completed trials): the share of the objective's variance "
            f"each parameter explains.",
        )
        if png
        else f"Not drawn: {how}."
    )
    return [Section("Optimisation history", history), Section("Parameter importance", importance)]


# --------------------------------------------------------------------------------------------
# The sections of one part (every run, or one grid group's)
# --------------------------------------------------------------------------------------------


def curves_sections(ctx: Context, part: Part) -> list[Section]:
    """The paper's grid of benchmark and training curves, then the training signals logged."""
    state = ctx.trials.state if ctx.trials is not None else {}
    dashed = [v for v in part.variants if ctx.trials is not None and state.get(v) == "pruned"]
    style: dict[str, Any] = dict(
        ema=ctx.options.ema, order=part.variants, labels={v: f"{v} (pruned)" for v in dashed}, dashed=dashed
    )
    pruned_note = " Dashed: pruned trials (stopped early)." if dashed else ""
    notes: dict[str, list[str]] = {}
    grid = report.paper_grid(part.df, ctx.out / "figures" / f"curves{part.tag}", notes=notes, benchmarks=ctx.benchmarks, **style)
    sections = [Section("Curves", _figure(grid, "curves", f"{_band_caption(part.counts)}{pruned_note}{_notes_caption(notes)}"))]
    present = [m for m in TRAIN_PANELS if m in set(part.df.metric)]
    if present:
        notes = {}
        tr = report.plot_curves(part.df, present, ctx.out / "figures" / f"training{part.tag}", ncols=4, notes=notes, **style)
        caption = f"{_band_caption(part.counts)}{pruned_note}{_notes_caption(notes)}"
        sections.append(Section("Training signals", _figure(tr, "training", caption)))
    return sections


def last_best_section(ctx: Context, part: Part, lb) -> Section:
    """Last and Best per benchmark, mean ± 95% interval over seeds; ``tables/last_best{tag}.{md,tex,csv}``."""
    v, cols, cells = report.table_matrix(lb, part.benches, part.complete, {m: m.split("/")[1] for m in part.benches})
    seeds = [str(part.counts[x]) for x in v]
    tables = ctx.out / "tables"
    fsio.write_text(tables / f"last_best{part.tag}.md", report.render_table(v, cols, cells, "markdown"))
    fsio.write_text(tables / f"last_best{part.tag}.tex", report.render_table(v, cols, cells, "latex"))
    fsio.write_text(tables / f"last_best{part.tag}.csv", report.render_table(v, cols, cells, "csv", seeds=seeds))
    few = _too_few({x: part.counts[x] for x in v})
    marked = "best per column bold, second underlined (ties share a rank)"
    if few:
        marked = f"no best marked: with fewer than {report.MIN_SEEDS} seeds a variant's mean cannot be ordered"
    caption = (
        f"Mean over seeds ± half-width of the 95% bootstrap interval over seeds; {marked}; "
        "Last: each run's final evaluation, Best: its maximum"
        + (f"; benchmarks: {', '.join(f'`{m}`' for m in part.benches)}" if part.benches else "")
        + "."
    )
    if few:
        caption += (
            f" No ± where a variant has fewer than {report.MIN_SEEDS} seeds ({', '.join(few)}): one seed gives no interval."
        )
    if ctx.trials is not None and len(part.complete) < len(part.variants):
        caption += " Completed trials only."
    tag = part.tag
    return Section(
        "Last and Best",
        report.render_table(v, cols, cells, "markdown", seeds=seeds)
        + "\n"
        + caption
        + f"\n\n[LaTeX](tables/last_best{tag}.tex) · [CSV](tables/last_best{tag}.csv) · [Markdown](tables/last_best{tag}.md)",
    )


def delta_section(ctx: Context, part: Part, lb) -> Section | None:
    """Each variant's Last / Best minus the reference variant's (default: the first; none for a sweep)."""
    ref = ctx.options.reference or (part.complete[0] if ctx.trials is None else None)
    if ref not in part.complete or len(part.complete) < 2:
        return None
    labels = {m: m.split("/")[1] for m in part.benches}
    d = report.delta_table(lb, part.benches, str(ref), order=part.complete, labels=labels)
    fsio.write_text(ctx.out / "tables" / f"ablation_delta{part.tag}.md", d)
    few = _too_few({x: part.counts[x] for x in part.complete})
    caveat = (
        f" With fewer than {report.MIN_SEEDS} seeds ({', '.join(few)}) a difference is one run's against "
        "another's: it does not say which method is better (seed-to-seed spread is often as large)."
        if few
        else ""
    )
    return Section(f"Differences to {ref}", d + "\nMeans over seeds, variant minus reference." + caveat)


def comparison_section(ctx: Context, part: Part, lb) -> Section | None:
    """IQM differences and probabilities of improvement against the baseline, or step over step."""
    if ctx.options.compare == "previous" and ctx.trials is None:
        text = improvement_section(lb, part.benches, part.complete, None, part.counts, ctx.out, "previous", part.tag)
        title = "Each step against the previous one: IQM difference and probability of improvement"
        return Section(title, text) if text else None
    base = ctx.options.baseline or default_baseline(part.complete, sweep=ctx.trials is not None)
    if base not in part.complete:
        return None
    text = improvement_section(lb, part.benches, part.complete, base, part.counts, ctx.out, "baseline", part.tag)
    return Section(f"Against {base}: IQM and probability of improvement", text) if text else None


def table_sections(ctx: Context, part: Part) -> list[Section]:
    """Last/Best, differences and comparisons, over completed variants only (a pruned trial's Last is where
    it was stopped, not where it ended); none without benchmarks."""
    if not part.benches or not part.complete:
        return []
    lb = report.last_best(part.df[part.df.variant.isin(part.complete)], part.benches)
    found = [last_best_section(ctx, part, lb), delta_section(ctx, part, lb), comparison_section(ctx, part, lb)]
    return [s for s in found if s is not None]


def stability_part(ctx: Context, part: Part) -> Section:
    """Stability events per run and variant; ``tables/stability_runs{tag}.csv``, ``stability{tag}.md`` and the
    per-run scores every table is computed from (``tables/scores_runs{tag}.csv``)."""
    bench = part.first_bench
    per_run, summary = report.stability(part.df, bench, threshold=ctx.options.threshold)
    fsio.write_text(ctx.out / "tables" / f"stability_runs{part.tag}.csv", per_run.to_csv(index=False))
    late_k = None
    if bench:  # every run's scores, from which the tables above are computed
        scores = report.run_scores(part.df, part.benches)
        fsio.write_text(ctx.out / "tables" / f"scores_runs{part.tag}.csv", scores.to_csv(index=False))
        n_evals = int(part.df[part.df.metric == bench].groupby("run_id").step.nunique().min())
        late_k = max(1, int(round(0.25 * n_evals)))  # as report.stability(late_frac=0.25)
    stab = stability_section(per_run, summary, ctx.options.threshold, bench, part.variants, late_k, part.tag)
    fsio.write_text(ctx.out / "tables" / f"stability{part.tag}.md", stab)
    return Section("Stability", stab)


def part_sections(ctx: Context, part: Part) -> list[Section]:
    """Figures, tables and stability of one part, in the page's order."""
    return [*curves_sections(ctx, part), *table_sections(ctx, part), stability_part(ctx, part)]


def group_parts(ctx: Context, part: Part) -> list[Section]:
    """``part_sections`` of every run, or, when runs carry named grid groups, a heading per group and its
    sections one level below (file names suffixed with the group)."""
    groups = list(dict.fromkeys(part.df.group))
    if groups == [""]:
        return part_sections(ctx, part)
    sections: list[Section] = []
    for g in groups:
        d = part.df[part.df.group == g]
        vs = [v for v in part.variants if v in set(d.variant)]
        gc = seed_counts(d, vs)
        tag = "_" + "_".join(piece.replace("=", "-") for piece in g.split(", "))
        head = (
            f"Runs of the grid group `{g}`: {d.run_id.nunique()} runs · {seeds_line(gc, 'variants')}"
            if g
            else f"Runs without a grid group (logged before groups were tagged): {d.run_id.nunique()} runs"
        )
        sections.append(Section(g or "no group", head, 2))
        benches = report.benchmark_metrics(d, ctx.benchmarks)
        sub = Part(d, vs, gc, benches, [v for v in part.complete if v in vs], tag)
        sections += [Section(f"{s.title} ({g})", s.body, 3) for s in part_sections(ctx, sub)]
    return sections


# --------------------------------------------------------------------------------------------
# Section texts (tables with their captions)
# --------------------------------------------------------------------------------------------


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


def _last_scores(lb, benches: list[str], variants: list[str]) -> dict[str, np.ndarray]:
    """Per variant with a Last score on every benchmark from the same seeds: [seeds, benchmarks]."""
    scores = {}
    for var in variants:
        last = lb[(lb.variant == var) & (lb.kind == "Last")]
        per = [np.asarray(last[last.metric == m].iloc[0]["per_seed"]) for m in benches if (last.metric == m).any()]
        if len(per) == len(benches) and len({len(p) for p in per}) == 1:
            scores[var] = np.stack(per, axis=1)  # [seeds, benchmarks]
    return scores


def _previous_rows(imp) -> list[str]:
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
    return lines


def _baseline_rows(imp, base: str | None) -> list[str]:
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
    return lines


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
    scores = _last_scores(lb, benches, variants)
    if len(scores) < 2 or (compare == "baseline" and base not in scores):
        return ""
    imp = report.improvement(scores, base, compare=compare)
    previous = compare == "previous"
    lines = _previous_rows(imp) if previous else _baseline_rows(imp, base)
    who = "the variant before it (the previous step)" if previous else str(base)
    skipped = [v for v in variants if v not in scores] if previous else []
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
    if previous:
        text += (
            " An effect is called one only when the intervals separate: the ΔIQM interval excludes 0 (then "
            "P(improve)'s lies on the same side of 0.5 in all but borderline cases)."
        )
    text += "\n"
    fsio.write_text(out / "tables" / f"improvement{tag}.md", text)
    return text
