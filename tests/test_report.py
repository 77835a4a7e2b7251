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
    """3 variants x 2 seeds of the embedded task, 4 steps each, through sdpg-ablate and MLflow."""
    d = tmp_path_factory.mktemp("report")
    spec = {
        "name": "rep",
        "base": "embedded",
        "overrides": {**tiny_overrides_dict(), "run.total_steps": 4, "eval.every": 2},
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


def test_sdpg_report_command_writes_index_figures_tables(experiment, tmp_path):
    spec, _ = experiment
    from sdpg.cli import report_main

    assert report_main([str(spec), "--out", str(tmp_path / "out"), "--order", *VARIANTS]) == 0
    out = tmp_path / "out"
    index = (out / "index.md").read_text()
    for f in (
        "figures/curves.png",
        "figures/curves.pdf",
        "figures/training.png",
        "tables/last_best.tex",
        "tables/last_best.csv",
        "tables/stability_runs.csv",
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
    assert report._iqm(np.arange(8.0)) == pytest.approx(np.mean([2, 3, 4, 5]))
    imp = report.improvement({"y": y, "x": x}, "y", n_boot=200)
    row = imp[imp.variant == "x"].iloc[0]
    assert row.p_improve == pytest.approx(0.625) and row.p_lo <= row.p_improve <= row.p_hi
    assert row.iqm_lo <= row.iqm <= row.iqm_hi
