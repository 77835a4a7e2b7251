"""sdpg-report on real MLflow runs of the embedded task, and the statistics by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import tiny_overrides_dict

from sdpg.orchestration.ablate import load_plan, submit
from sdpg.reporting import report

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["grpo", "sdpg_urkl", "sdpg_ufkl"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_model_built):
    """3 variants x 2 seeds of the embedded task, 2 steps each with an evaluation at steps 0, 1 and 2 (Last and
    Best differ in what they read), through sdpg-ablate and MLflow."""
    d = tmp_path_factory.mktemp("report")
    spec = {
        "name": "rep",
        "base": "embedded",
        "overrides": {**tiny_overrides_dict(), "run.total_steps": 2, "eval.every": 1, "data.train_limit": 256},
        "variants": {"grpo": {"algo.method": "grpo"}, "sdpg_urkl": {}, "sdpg_ufkl": {"algo.kl_mode": "ufkl"}},
        "seeds": [0, 1],
        "executor": "local",
        "max_parallel": 2,
        "output_dir": str(d / "rep"),
    }
    p = d / "rep.yaml"
    p.write_text(yaml.safe_dump(spec))
    plan = load_plan(p)
    submit(plan, wait=True, log=lambda m: None)
    return p, plan


@pytest.fixture(scope="module")
def report_of_two_seeds(experiment, tmp_path_factory) -> Path:
    """``sdpg-report SPEC --order grpo sdpg_urkl sdpg_ufkl``, written once for the tests that read its files, its
    page and its tables (each report is some 10 s of figures)."""
    from sdpg.commands import report_main

    spec, _ = experiment
    out = tmp_path_factory.mktemp("two-seeds") / "out"
    assert report_main([str(spec), "--out", str(out), "--order", *VARIANTS]) == 0
    return out


@pytest.mark.slow
def test_report_on_real_runs(experiment, tmp_path):
    spec, plan = experiment
    uri, exp = report.resolve_source(str(spec))
    df = report.load_runs(uri, exp, cache_dir=tmp_path / "cache")
    assert sorted(df.variant.unique()) == sorted(VARIANTS)
    assert df.groupby("variant").seed.nunique().to_dict() == {v: 2 for v in VARIANTS}
    assert "eval/embedded/mean@2" in set(df.metric)  # the paper's name, '@' restored

    # Last = the last logged value, Best = the maximum, from each run's own metrics.jsonl
    lb = report.last_best(df, ["eval/embedded/mean@2"])
    for r in plan.runs:
        rows = [json.loads(x) for x in open(Path(r.config.run.output_dir) / "metrics.jsonl")]
        ev = [(x["step"], x["eval/embedded/mean@2"]) for x in rows if "eval/embedded/mean@2" in x]
        last = lb[(lb.variant == r.variant) & (lb.kind == "Last")].iloc[0]
        best = lb[(lb.variant == r.variant) & (lb.kind == "Best")].iloc[0]
        seeds = sorted(df[df.variant == r.variant].seed.unique())
        i = seeds.index(r.seed)
        assert last.per_seed[i] == pytest.approx(ev[-1][1])
        assert best.per_seed[i] == pytest.approx(max(v for _, v in ev))
    # intervals are over seeds: n = 2 and the bootstrap of the two per-seed values
    for _, row in lb.iterrows():
        assert row.n == 2
        assert (row.lo, row.hi) == pytest.approx(report.bootstrap_ci(row.per_seed))
        assert min(row.per_seed) - 1e-12 <= row.lo <= row["mean"] <= row.hi <= max(row.per_seed) + 1e-12

    # the paper grid: benchmark panel + reward, entropy, response length; one line per variant
    png, fig = report.paper_grid(df, tmp_path / "grid", order=VARIANTS, keep_figure=True)
    assert png.is_file() and png.with_suffix(".pdf").is_file() and png.stat().st_size > 10_000
    drawn = [ax for ax in fig.axes if ax.get_lines()]
    assert [ax.get_title() for ax in drawn] == ["embedded mean@2", "reward", "entropy", "response length"]
    for ax in drawn:
        assert ax.get_xlabel() == "step"
        assert len(ax.get_lines()) == 3
    colours = {ln.get_label().split(" ")[0]: ln.get_color() for ln in drawn[0].get_lines()}
    for ax in drawn[1:]:  # one colour per variant across panels
        assert {ln.get_label().split(" ")[0]: ln.get_color() for ln in ax.get_lines()} == colours


@pytest.mark.slow
def test_sdpg_report_command_writes_index_figures_tables(report_of_two_seeds, tmp_path):
    from sdpg.commands import report_main

    out = report_of_two_seeds
    index = (out / "index.md").read_text()
    for f in (
        "figures/curves.png",
        "figures/curves.pdf",
        "figures/training.png",
        "tables/last_best.tex",
        "tables/last_best.csv",
        "tables/stability_runs.csv",
        "tables/scores_runs.csv",
        "tables/improvement.md",
    ):
        assert (out / f).is_file(), f
    for link in (
        "figures/curves.png",
        "figures/training.png",
        "tables/last_best.tex",
        "tables/last_best.csv",
        "tables/stability_runs.csv",
    ):
        assert link in index, link
    assert "| grpo |" in index and "Against grpo" in index
    assert (out / "index.html").read_text().count("<img") == 2
    # the per-run scores beside the tables, from which analysis/recompute.py gives the report's IQMs again
    import contextlib
    import io
    import runpy

    scores = pd.read_csv(out / "tables" / "scores_runs.csv")
    assert len(scores) == scores.run_id.nunique() and {"variant", "seed"} <= set(scores.columns)
    buf = io.StringIO()
    argv = ["recompute.py", str(out / "tables" / "scores_runs.csv"), "--baseline", "grpo"]
    with contextlib.redirect_stdout(buf), pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", argv)
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(Path(__file__).resolve().parents[1] / "analysis" / "recompute.py"), run_name="__main__")
    assert done.value.code == 0
    improvement_md = (out / "tables" / "improvement.md").read_text()
    rows = buf.getvalue().splitlines()[2:]
    assert len(rows) == len(VARIANTS)
    for line in rows:
        variant, _, _, iqm = line.split()[:4]
        row = next(r for r in improvement_md.splitlines() if r.startswith(f"| {variant} |"))
        assert f"| {float(iqm):.3f} |" in row, (line, row)
    assert report_main([str(tmp_path / "nowhere.yaml"), "--out", str(tmp_path / "x")]) == 2


def test_paper_table1_marks_best_and_second():
    variants, cols, cells = report.table_from_csv(ROOT / "analysis" / "paper_table1.csv")
    md = report.render_table(variants, cols, cells, "markdown").splitlines()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in md[2:]}
    # AIME24 Last: URKL and UFKL tie at 0.380 (both best), RLSD second
    assert rows["SDPG-URKL"][0] == rows["SDPG-UFKL"][0] == "**0.380**" and rows["RLSD"][0] == "<u>0.378</u>"
    assert rows["SDPG-UFKL"][1] == "**0.408**" and rows["SDPG-URKL"][1] == "<u>0.401</u>"
    assert rows["SDPG-UFKL"][2] == "**0.327**" and rows["SDPG-URKL"][2] == "<u>0.307</u>"
    assert rows["SDPG-UFKL"][3] == "**0.335**" and rows["SDPG-URKL"][3] == "<u>0.308</u>"
    assert rows["SDPG-URKL"][4] == "**0.863**" and rows["SDPG-UFKL"][4] == "<u>0.858</u>"
    assert rows["SDPG-UFKL"][5] == "**0.870**" and rows["SDPG-URKL"][5] == "<u>0.863</u>"
    assert all("**" not in c and "<u>" not in c for c in rows["GRPO"])
    tex = report.render_table(variants, cols, cells, "latex")
    assert "\\toprule" in tex and "\\textbf{0.408}" in tex and "\\underline{0.401}" in tex and "\\bottomrule" in tex


def test_one_seed_per_variant_marks_no_best():
    """0.559 against 0.539 over one seed each is not a ranking: no bold, no underline; at two seeds both marks."""
    one = [[(0.559, float("nan"), float("nan"), 1)], [(0.539, float("nan"), float("nan"), 1)]]
    two = [[(0.559, 0.52, 0.60, 2)], [(0.539, 0.50, 0.58, 2)]]
    mixed = [[(0.559, 0.52, 0.60, 2)], [(0.539, float("nan"), float("nan"), 1)]]
    for cells, marked in ((one, False), (two, True), (mixed, False)):
        for fmt, bold in (("markdown", "**"), ("latex", "\\textbf")):
            text = report.render_table(["sdpg", "grpo"], [("aime24", "Last")], cells, fmt)
            assert (bold in text) is marked, (fmt, text)
    assert "**0.559 ± 0.040**" in report.render_table(["sdpg", "grpo"], [("aime24", "Last")], two)


def test_stability_by_hand():
    rows = []
    ent = [1.0, 0.8, 0.3, 0.2, 0.1]
    length = [100, 90, 60, 40, 45]
    reward = [0.1, 0.5, 0.2, 0.6, 0.3]
    acc = [0.1, 0.2, 0.3, 0.5]
    for s, (e, ln, r) in enumerate(zip(ent, length, reward), start=1):
        rows += [
            ("r", "r", "v", "m", 0, "train/entropy", s, e),
            ("r", "r", "v", "m", 0, "train/response_length", s, ln),
            ("r", "r", "v", "m", 0, "train/reward", s, r),
        ]
    rows += [("r", "r", "v", "m", 0, "eval/b/mean@4", s, a) for s, a in zip((0, 2, 4, 6), acc)]
    df = pd.DataFrame(rows, columns=report.COLUMNS)
    per_run, summary = report.stability(df, "eval/b/mean@4", threshold=0.3)
    r = per_run.iloc[0]
    assert r.entropy_collapse_step == 4  # first below 0.25 x 1.0
    assert r.length_collapse_step == 4  # first below 0.5 x 100
    assert r.max_reward_drawdown == pytest.approx(0.3)  # 0.6 -> 0.3 (and 0.5 -> 0.2)
    assert r.late_variance == 0.0  # last quarter of 4 evaluations: one value
    assert r.steps_to_threshold == 4


def test_iqm_and_probability_of_improvement_by_hand():
    x = np.array([[0.2, 0.6], [0.4, 0.8]])  # [seeds, benchmarks]
    y = np.array([[0.1, 0.7], [0.3, 0.7]])
    # benchmark 0: x beats y in 3 of 4 pairs (0.2 > 0.1; 0.4 > 0.1, 0.3); benchmark 1: 2 of 4 (0.8 > both)
    assert report._prob_improvement(x, y) == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert report.iqm(np.arange(8.0)) == pytest.approx(np.mean([2, 3, 4, 5]))
    imp = report.improvement({"y": y, "x": x}, "y", n_boot=200)
    row = imp[imp.variant == "x"].iloc[0]
    assert row.p_improve == pytest.approx(0.625) and row.p_lo <= row.p_improve <= row.p_hi
    assert row.iqm_lo <= row.iqm <= row.iqm_hi


# --------------------------------------------------------------------------------------------
# The page as a browser shows it, sample sizes, read-only loading
# --------------------------------------------------------------------------------------------


def _chromium():
    from sdpg.reporting import browser

    if browser.find_chromium() is None:
        pytest.fail("no Chromium on this machine: scripts/test.sh installs Debian's chromium (apt-get install chromium)")
    return browser


def _improvement_rows(index: str) -> dict[str, list[str]]:
    block = index.split("IQM and probability of improvement", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in block.splitlines() if ln.startswith("| ") and not ln.startswith("| Variant")]
    return {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in rows}


@pytest.mark.slow
def test_index_html_is_a_real_page_in_headless_chromium(report_of_two_seeds, tmp_path):
    """The page opened in Chromium: tables are tables, every figure loads once, links reach files, the
    underlines are underlines; the screenshot shows something."""
    browser = _chromium()
    from matplotlib.image import imread

    out = report_of_two_seeds
    index_md = (out / "index.md").read_text()
    dom = browser.inspect_page(out / "index.html")

    # every Markdown table is an HTML table with its header and one row per variant (never a <pre> of pipes)
    md_tables = index_md.count("\n|---")
    assert md_tables >= 4 and len(dom["tables"]) == md_tables and dom["pre"] == 0
    last_best = next(t for t in dom["tables"] if t["header"][:2] == ["Method", "Seeds"])
    assert [r[0] for r in last_best["cells"][1:]] == VARIANTS and last_best["rows"] == 1 + len(VARIANTS)
    assert all(r[1] == "2" for r in last_best["cells"][1:])
    assert "|" not in " ".join(c for t in dom["tables"] for r in t["cells"] for c in r)
    # <u> and ** became underline and bold, as many as the Markdown has; nothing escaped
    assert len(dom["underlined"]) == index_md.count("<u>") and "<u>" not in dom["text"]
    assert len(dom["bold"]) >= 1 and "**" not in dom["text"]
    # figures: each once, each decoded by the browser at a real size
    srcs = [i["src"] for i in dom["images"]]
    assert sorted(srcs) == ["figures/curves.png", "figures/training.png"]
    for img in dom["images"]:
        assert img["complete"] and img["naturalWidth"] > 500 and img["naturalHeight"] > 100 and img["width"] > 200, img
    # links: every one points at a file of the report (PDFs, LaTeX, CSVs)
    hrefs = {a["href"] for a in dom["links"]}
    for need in (
        "figures/curves.pdf",
        "figures/training.pdf",
        "tables/last_best.tex",
        "tables/last_best.csv",
        "tables/stability_runs.csv",
    ):
        assert need in hrefs, need
    for h in hrefs:
        assert (out / h).is_file(), h

    shot = browser.screenshot(out / "index.html", tmp_path / "screenshot.png")
    assert shot == (tmp_path / "screenshot.png").resolve()
    px = imread(shot)[..., :3]  # [H, W, 3] in [0, 1]
    assert px.shape[1] == 1280 and px.shape[0] >= dom["height"]
    assert px.std() > 0.05  # not a blank page
    ink = (px.mean(axis=2) < 0.6).mean()  # text, lines, table borders
    assert 0.005 < ink < 0.5
    # the figures are in the picture: many distinct colours (the variants' lines), not just black on white
    colours = {tuple(c) for c in (px[::4, ::4].reshape(-1, 3) * 255).astype(int) // 32}
    assert len(colours) > 20


@pytest.mark.slow
def test_one_seed_has_no_intervals_and_says_why_two_seeds_have_both(experiment, report_of_two_seeds, tmp_path):
    from sdpg.commands import report_main

    spec, _ = experiment
    assert report_main([str(spec), "--out", str(tmp_path / "one"), "--order", *VARIANTS, "--tag", "seed=0"]) == 0
    one, two = (tmp_path / "one" / "index.md").read_text(), (report_of_two_seeds / "index.md").read_text()

    # one seed: IQM point values only, no interval, no P(improve), and the page says why
    rows = _improvement_rows(one)
    assert set(rows) == set(VARIANTS)
    for v, cells in rows.items():
        assert cells[0] == "1"  # the sample size, stated
        # cells: IQM, its CI, ΔIQM vs grpo (a point value, like the IQM), its CI, P(improve), its CI
        assert float(cells[1]) >= 0 and cells[2] == "–" and cells[4] == "–" and cells[5] == "–" and cells[6] == "–", (v, cells)
        assert (
            cells[3] == "–"
            if v == "grpo"
            else float(cells[3]) == pytest.approx(float(cells[1]) - float(rows["grpo"][1]), abs=2e-3)
        )
    assert "No intervals and no probability of improvement where a variant has fewer than 2 seeds" in one
    assert "grpo has 1" in one
    lb_rows = [ln for ln in one.split("## Last and Best", 1)[1].split("## ", 1)[0].splitlines() if ln.startswith("| ")]
    assert len(lb_rows) == 1 + len(VARIANTS) and not any("±" in ln for ln in lb_rows)  # header + one row each
    assert "one seed gives no interval" in one
    # nor a best: one seed cannot order the variants, so nothing is bold or underlined, and differences say so
    assert not any("**" in ln or "<u>" in ln for ln in lb_rows) and "no best marked" in one
    assert "does not say which method is better" in one.split("## Differences to grpo", 1)[1].split("## ", 1)[0]

    # two seeds: both, with their intervals around the point values
    rows = _improvement_rows(two)
    for v, cells in rows.items():
        assert cells[0] == "2"
        iqm, (lo, hi) = float(cells[1]), map(float, cells[2].strip("[]").split(","))
        assert lo <= iqm <= hi
        if v == "grpo":
            assert cells[3] == cells[5] == "–"
        else:
            d, (dlo, dhi) = float(cells[3]), map(float, cells[4].strip("[]").split(","))
            assert dlo <= d + 1e-3 and d - 1e-3 <= dhi
            p, (plo, phi) = float(cells[5]), map(float, cells[6].strip("[]").split(","))
            assert 0 <= plo <= p <= phi <= 1
    assert "fewer than 2 seeds" not in two and "one seed gives no interval" not in two
    lb_rows = [ln for ln in two.split("## Last and Best", 1)[1].split("## ", 1)[0].splitlines() if ln.startswith("| ")]
    assert len(lb_rows) == 1 + len(VARIANTS) and all(ln.count("±") == 2 for ln in lb_rows[1:])  # Last, Best
    assert any("**" in ln for ln in lb_rows[1:]) and "best per column bold" in two and "does not say which" not in two

    # the same rule in the functions: one value is no interval; one seed per side is no probability
    assert all(np.isnan(report.bootstrap_ci([0.5])))
    imp = report.improvement({"a": np.array([[0.2, 0.4]]), "b": np.array([[0.3, 0.1]])}, "a")
    assert imp.seeds.tolist() == [1, 1] and imp.p_improve.isna().all() and imp.iqm_lo.isna().all()
    # and no band in the curves for a single seed
    uri, exp = report.resolve_source(str(spec))
    df = report.load_runs(uri, exp, tags={"seed": "0"})
    _, fig = report.paper_grid(df, tmp_path / "g1", order=VARIANTS, keep_figure=True)
    assert not any(ax.collections for ax in fig.axes)
    _, fig = report.paper_grid(report.load_runs(uri, exp), tmp_path / "g2", order=VARIANTS, keep_figure=True)
    assert sum(len(ax.collections) for ax in fig.axes) == 4 * len(VARIANTS)


@pytest.mark.slow
def test_curves_have_no_empty_panel_and_zero_series_are_named(experiment, tmp_path):
    spec, _ = experiment
    uri, exp = report.resolve_source(str(spec))
    df = report.load_runs(uri, exp)
    # one benchmark: one row of four panels, none blank
    _, fig = report.paper_grid(df, tmp_path / "grid", order=VARIANTS, keep_figure=True)
    assert len(fig.axes) == 4 and all(ax.axison and ax.get_lines() for ax in fig.axes)
    # GRPO's opd_kl is 0 at every step (or not logged): named in the panel, drawn if logged
    notes = {}
    _, fig = report.plot_curves(
        df, ["train/opd_kl", "train/beta"], tmp_path / "tr", order=VARIANTS, keep_figure=True, notes=notes
    )
    for ax in fig.axes:
        text = " ".join(t.get_text() for t in ax.texts)
        assert "grpo" in text, ax.get_title()
        drawn = {ln.get_label().split(" ")[0] for ln in ax.get_lines()}
        grpo = df[(df.variant == "grpo") & (df.metric == ax.get_title())]
        assert ("grpo" in drawn) == (len(grpo) > 0)
        assert {"sdpg_urkl", "sdpg_ufkl"} <= drawn
    assert set(notes) == {"train/opd_kl", "train/beta"}
    # the legend never covers a panel or its x labels
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    leg = fig.legends[0].get_window_extent(r)
    for ax in fig.axes:
        assert not leg.overlaps(ax.get_tightbbox(r))


@pytest.mark.slow
def test_steps_to_threshold_only_with_a_threshold(experiment, report_of_two_seeds, tmp_path):
    from sdpg.commands import report_main

    spec, _ = experiment
    assert report_main([str(spec), "--out", str(tmp_path / "b"), "--threshold", "0.0"]) == 0
    a, b = (report_of_two_seeds / "index.md").read_text(), (tmp_path / "b" / "index.md").read_text()
    assert "Steps to threshold" not in a and "not computed; give `--threshold X`" in a
    assert "steps_to_threshold" not in (report_of_two_seeds / "tables" / "stability_runs.csv").read_text()
    assert "Steps to threshold (0)" in b and "not computed" not in b
    runs = pd.read_csv(tmp_path / "b" / "tables" / "stability_runs.csv")
    assert (runs.steps_to_threshold == runs.steps_to_threshold.min()).all()  # every run reaches 0 at its first eval


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): ((p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0))
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.slow
def test_report_on_missing_experiment_creates_nothing(experiment, tmp_path):
    """A read-only command: refused with exit 2, and the disk is as it was (no mlflow.db, no folders)."""
    import subprocess
    import sys

    spec, _ = experiment
    d = tmp_path / "proj"
    (d / "ablations").mkdir(parents=True)
    never = {"name": "never_ran", "base": "embedded", "variants": {"a": {}}, "seeds": [0], "executor": "local"}
    (d / "ablations" / "never_ran.yaml").write_text(yaml.safe_dump(never))
    store = Path(report.resolve_source(str(spec))[0][len("sqlite:///") :])
    cases = [
        ["ablations/never_ran.yaml", "--out", "reports/never"],  # spec whose runs never started
        ["outputs/never_ran", "--out", "reports/never"],  # output folder not there
        [f"sqlite:///{d}/outputs/x/mlflow.db#x", "--out", "reports/x"],  # store not there
        [f"sqlite:///{store}#no_such_experiment", "--out", "reports/y"],
    ]  # store there, experiment not
    before, store_before = _tree(d), _tree(store.parent)
    for args in cases:
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from sdpg.commands import report_main; sys.exit(report_main(sys.argv[1:]))",
                *args,
            ],
            cwd=d,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2, (args, r.stderr)
        err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
        assert _tree(d) == before, args
        assert _tree(store.parent) == store_before, args
    assert not (d / "outputs").exists() and not (d / "reports").exists() and not (d / "mlruns").exists()


def test_rlvr_baselines_are_the_presets_without_teacher_or_distillation():
    """The presets' declared RLVR baselines (the report's default comparison) are exactly the methods whose
    settings have a verifier term and neither a distillation term nor a teacher-dependent advantage."""
    import sdpg.objective.terms  # noqa: F401  (registers the advantage estimators)
    from sdpg.objective.registry import ADVANTAGE_ESTIMATORS
    from sdpg.training.methods import METHOD_PRESETS, RLVR_BASELINES

    derived = {
        name
        for name, s in METHOD_PRESETS.items()
        if s["beta"] == 0 and s["pg_coef"] > 0 and not ADVANTAGE_ESTIMATORS[s["advantage"]].needs_teacher
    }
    assert RLVR_BASELINES == derived == {"grpo", "grpo_k3", "dapo", "dr_grpo"}


def test_many_variants_get_distinct_colours_and_styles():
    names = [f"t{i}" for i in range(45)]
    colours, styles = report.colours_for(names), report.styles_for(names)
    assert len({(colours[n], str(styles[n])) for n in names}) == 45
    assert len({colours[n] for n in names[:20]}) == 20  # the first twenty differ in colour alone
    assert report.colours_for(VARIANTS) == dict(zip(VARIANTS, report.PALETTE))  # few variants: Okabe-Ito


def test_axes_have_units_and_an_inert_gate_is_not_drawn(tmp_path):
    """Every panel's y-axis says what it measures (timing in s); GRPO's gate fraction, computed at beta = 0
    where it gates nothing, is named in the panel instead of drawn as a curve."""
    import pandas as pd

    rows = []
    for variant, beta in (("sdpg", 0.1), ("grpo", 0.0)):
        for step in (1, 2, 3):
            for metric, value in (("train/beta", beta), ("train/gate_fraction", 0.5 + step / 10), ("timing/step", 2.0)):
                rows.append({"variant": variant, "seed": 0, "step": step, "metric": metric, "value": value, "run_id": variant})
    df = pd.DataFrame(rows)
    _, fig = report.plot_curves(df, ["train/gate_fraction", "timing/step"], tmp_path / "f", keep_figure=True)
    gate, timing = fig.axes[:2]
    assert gate.get_ylabel() == "fraction of tokens" and timing.get_ylabel() == "s" and gate.get_xlabel() == "step"
    assert [ln.get_label() for ln in gate.get_lines()] == ["sdpg (n=1)"]  # grpo's curve not drawn...
    assert any("inert at \u03b2 = 0, not drawn: grpo" in t.get_text() for t in gate.texts)  # ...but named
    assert len(timing.get_lines()) == 2  # timing is not inert
    assert report.y_label("eval/aime24/mean@32") == "accuracy (mean@32)"
