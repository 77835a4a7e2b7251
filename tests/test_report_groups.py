"""sdpg-report on an ablation with named grid groups (one part per task) and step-over-previous comparisons.

The runs are real: created by sdpg-ablate's own planning and MLflow bookkeeping (tags ``variant``, ``seed``,
``grid.task``) in a real SQLite store; only their metric values are written by hand, so that every number of the
report can be checked by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sdpg.reporting import report

VARIANTS = ["a", "b", "c"]
BENCHES = ["eval/embedded/mean@4", "eval/more_terms/mean@4"]
# Last scores per (task, variant, benchmark): one value per seed 0, 1, 2
LAST = {
    ("sum", "a"): ([0.2, 0.2, 0.2], [0.0, 0.0, 0.0]),
    ("sum", "b"): ([0.5, 0.5, 0.5], [0.1, 0.1, 0.1]),
    ("sum", "c"): ([0.4, 0.5, 0.6], [0.1, 0.1, 0.1]),
    ("hard", "a"): ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
    ("hard", "b"): ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
    ("hard", "c"): ([0.3, 0.3, 0.3], [0.0, 0.0, 0.0]),
}
FIRST = 0.05  # every run's evaluation at step 0; Best = max(FIRST, Last) = Last except where Last is 0


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    from sdpg.orchestration.ablate import load_plan
    from sdpg.orchestration.ablate.submission import _child_runs, _experiment

    d = tmp_path_factory.mktemp("groups")
    spec = {
        "name": "grp",
        "base": "embedded",
        "overrides": {"run.total_steps": 8},
        "variants": {"a": {"algo.method": "grpo"}, "b": {"algo.method": "grpo", "algo.clip_high": 0.28}, "c": {}},
        "grid": {"task": {"sum": {}, "hard": {"rollout.max_new_tokens": 40, "eval.max_new_tokens": 40}}},
        "seeds": [0, 1, 2],
        "output_dir": str(d / "out"),
        "report": {"compare": "previous"},
    }
    p = d / "grp.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    plan = load_plan(p)
    exp = _experiment(plan).open()
    ids = _child_runs(plan, exp)
    c = MlflowClient(plan.tracking_uri)
    for r in plan.distinct:
        rid, task = ids[r.hash], r.grid["task"]
        for bench, values in zip(BENCHES, LAST[(task, r.variant)]):
            key = report.tracking.to_mlflow_key(bench)
            c.log_metric(rid, key, FIRST, step=0)
            c.log_metric(rid, key, values[r.seed], step=8)
        for step in range(1, 9):
            c.log_metric(rid, "train/reward", 0.1 * step + 0.01 * r.seed, step=step)
            c.log_metric(rid, "train/entropy", 1.0 - 0.05 * step, step=step)
            c.log_metric(rid, "train/response_length", 25.0, step=step)
            c.log_metric(rid, "train/accuracy", 0.1 * step, step=step)
        c.set_terminated(rid, "FINISHED")
    return p, plan


def _plain(cell: str) -> str:
    return cell.replace("**", "").replace("<u>", "").replace("</u>", "")


def _table(index: str, title: str) -> dict[str, list[str]]:
    block = index.split(title, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    rows = [ln for ln in block.splitlines() if ln.startswith("| ") and not ln.startswith(("| Variant", "| Method"))]
    return {r.split("|")[1].strip(): [x.strip() for x in r.split("|")[2:-1]] for r in rows}


@pytest.mark.slow  # two full reports with their figures: ~20 s of CPU
def test_each_group_gets_its_tables_and_each_step_is_compared_with_the_previous(ablation, tmp_path):
    from sdpg.commands import report_main

    spec, _ = ablation
    out = tmp_path / "rep"
    assert report_main([str(spec), "--out", str(out)]) == 0  # compare: previous, from the spec
    index = (out / "index.md").read_text()
    # one part per task, in the spec's order, each with its own figures and tables
    assert index.index("\n## task=sum\n") < index.index("\n## task=hard\n")
    assert "Runs of the grid group `task=sum`: 9 runs · 3 variants, 3 seeds each" in index
    for tag in ("task-sum", "task-hard"):
        for f in (f"figures/curves_{tag}.png", f"figures/training_{tag}.png", f"tables/last_best_{tag}.csv"):
            assert (out / f).is_file() and f in index, f
        assert (out / f"tables/improvement_{tag}.md").is_file()

    # Last and Best per task: mean over seeds (no runs of the other task mixed in)
    lb = _table(index, "### Last and Best (task=sum)")
    assert list(lb) == VARIANTS
    assert lb["c"][0] == "3" and lb["c"][1] == "**0.500 ± 0.100**"  # best of its column: bold
    assert _plain(lb["a"][4]) == "0.050 ± 0.000"  # a's Best on more_terms: its step-0 value
    lb = _table(index, "### Last and Best (task=hard)")
    assert lb["c"][1] == "**0.300 ± 0.000**" and _plain(lb["a"][1]) == "0.000 ± 0.000"

    # sum, by hand. IQM of [3 seeds x 2 benchmarks] = mean of the middle four of six values.
    #   a: 0,0,0,.2,.2,.2 -> 0.1;  b: .1,.1,.1,.5,.5,.5 -> 0.3;  c: .1,.1,.1,.4,.5,.6 -> (.1+.1+.4+.5)/4 = 0.275
    #   b vs a: every seed of b beats every seed of a on both benchmarks: P = 1; seeds do not vary: intervals
    #   are points. c vs b: benchmark 1, c's 0.4 / 0.5 / 0.6 against b's 0.5: 0, 1/2, 1 -> 1/2; benchmark 2 ties: 1/2.
    imp = _table(index, "### Each step against the previous one")
    assert imp["a"] == ["3", "0.100", "[0.100, 0.100]", "(first)", "–", "–", "–", "–", "–"]
    assert imp["b"] == ["3", "0.300", "[0.300, 0.300]", "a", "+0.200", "[0.200, 0.200]", "1.00", "[1.00, 1.00]", "yes: better"]
    c = imp["c"]
    assert c[:5] == ["3", "0.275", c[2], "b", "-0.025"] and c[6] == "0.50" and c[8] == "no"
    lo, hi = map(float, c[5].strip("[]").split(","))
    assert lo < -0.025 < hi and lo < 0 < hi  # the interval holds the point and 0: no effect
    # hard: a and b never score (b vs a: a tie everywhere, P = 1/2, no effect); c scores 0.3 on benchmark 1:
    #   IQM 0,0,0,.3,.3,.3 -> 0.15; P(c > b) = (1 + 1/2) / 2 = 0.75
    part = index.split("\n## task=hard\n", 1)[1]
    imp = _table(part, "### Each step against the previous one")
    assert imp["b"][3:] == ["a", "+0.000", "[0.000, 0.000]", "0.50", "[0.50, 0.50]", "no"]
    assert imp["c"][3:] == ["b", "+0.150", "[0.150, 0.150]", "0.75", "[0.75, 0.75]", "yes: better"]
    assert "An effect is called one only when the intervals separate" in index

    # --compare baseline on the command line overrides the spec: each variant against a (the first)
    assert report_main([str(spec), "--out", str(tmp_path / "base"), "--compare", "baseline"]) == 0
    base = (tmp_path / "base" / "index.md").read_text()
    assert "### Against a: IQM and probability of improvement (task=sum)" in base
    rows = _table(base, "### Against a: IQM and probability of improvement (task=sum)")
    assert rows["c"][3] == "+0.175"  # 0.275 - 0.1
    assert report_main([str(spec), "--out", str(tmp_path / "x"), "--compare", "previous", "--baseline", "a"]) == 2
    with pytest.raises(SystemExit) as refused:  # the parser's choices: one line, exit 2 (as every console script)
        report_main([str(spec), "--out", str(tmp_path / "y"), "--compare", "next"])
    assert refused.value.code == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_step_over_previous_by_hand():
    # one benchmark, two seeds: x = (0, 1) against prev = (0, 0). A resample of x is (0,0), (0,1) or (1,1)
    # (probabilities 1/4, 1/2, 1/4), so IQM(x*) - IQM(prev*) is 0, 0.5 or 1 and P(x* > prev*) is 1/2, 3/4 or 1:
    # with 2,000 resamples the 2.5% and 97.5% quantiles are the extremes.
    prev, x = np.array([[0.0], [0.0]]), np.array([[0.0], [1.0]])
    imp = report.improvement({"prev": prev, "x": x}, compare="previous").set_index("variant")
    r = imp.loc["x"]
    assert r.against == "prev" and r.d_iqm == pytest.approx(0.5) and r.p_improve == pytest.approx(0.75)
    assert (r.d_lo, r.d_hi) == (0.0, 1.0) and (r.p_lo, r.p_hi) == (0.5, 1.0)
    assert pd.isna(imp.loc["prev"].against) and np.isnan(imp.loc["prev"].d_iqm)
    # a chain: each against the one before it, not the first
    y = np.array([[1.0], [1.0]])
    imp = report.improvement({"prev": prev, "x": x, "y": y}, compare="previous").set_index("variant")
    assert imp.loc["y"].against == "x" and imp.loc["y"].d_iqm == pytest.approx(0.5)
    assert imp.loc["y"].p_improve == pytest.approx(0.75)  # y's 1s beat x's 0 and tie its 1
    # against a baseline the rows are as before, with the IQM difference added
    imp = report.improvement({"prev": prev, "x": x, "y": y}, "prev").set_index("variant")
    assert imp.loc["y"].against == "prev" and imp.loc["y"].d_iqm == pytest.approx(1.0) and imp.loc["y"].p_improve == 1.0
    with pytest.raises(ValueError, match="compare 'next'"):
        report.improvement({"prev": prev}, compare="next")


@pytest.mark.slow
def test_grouped_report_in_headless_chromium(ablation, tmp_path):
    from matplotlib.image import imread

    from sdpg.commands import report_main
    from sdpg.reporting import browser

    if browser.find_chromium() is None:
        pytest.fail("no Chromium on this machine: scripts/test.sh installs Debian's chromium (apt-get install chromium)")
    spec, _ = ablation
    out = tmp_path / "rep"
    assert report_main([str(spec), "--out", str(out), "--screenshot"]) == 0
    dom = browser.inspect_page(out / "index.html")
    srcs = sorted(i["src"] for i in dom["images"])
    assert srcs == sorted(f"figures/{f}_task-{t}.png" for f in ("curves", "training") for t in ("sum", "hard"))
    for img in dom["images"]:
        assert img["complete"] and img["naturalWidth"] > 300 and img["naturalHeight"] > 200, img
    steps = [t for t in dom["tables"] if "Against" in t["header"]]
    assert len(steps) == 2 and all([r[0] for r in t["cells"][1:]] == VARIANTS for t in steps)
    assert dom["pre"] == 0 and "|" not in " ".join(c for t in dom["tables"] for r in t["cells"] for c in r)
    for h in {a["href"] for a in dom["links"]}:
        assert (out / h).is_file(), h
    px = imread(out / "screenshot.png")[..., :3]
    assert px.std() > 0.05


def test_benchmark_panels_follow_the_spec_order():
    rows = [("r", "r", "v", "m", 0, f"eval/{b}/mean@4", 0, 0.1) for b in ("embedded", "larger_numbers", "more_terms", "zzz")]
    df = pd.DataFrame(rows, columns=report.COLUMNS)
    names = [m.split("/")[1] for m in report.benchmark_metrics(df, ["embedded", "more_terms", "larger_numbers"])]
    assert names == ["embedded", "more_terms", "larger_numbers", "zzz"]  # graded difficulty, unknown ones last
    assert [m.split("/")[1] for m in report.benchmark_metrics(df)] == ["embedded", "larger_numbers", "more_terms", "zzz"]
    src = report.resolve(str(Path(__file__).resolve().parents[1] / "ablations" / "decompose.yaml"))
    assert src.benchmarks == ["embedded", "more_terms", "larger_numbers"] and src.compare == "previous"
    assert src.variants[0] == "grpo" and src.variants[-1] == "opd_no_gate"


@pytest.mark.slow  # its fixture trains real runs
def test_default_baseline_is_the_first_variant_named_after_an_rlvr_preset(ablation, tmp_path):
    """Which variant the comparisons are taken against comes from the method presets: the first variant named
    after a method declared an RLVR baseline, else the first variant; ``--baseline`` overrides. The real
    report's loading and comparison section, on the grouped ablation's runs (variants a, b, c)."""
    from sdpg.reporting import build, sections
    from sdpg.training.methods import METHOD_PRESETS, register_method, unregister_method

    spec, _ = ablation
    src = report.resolve(str(spec))
    runs, df = build.load(str(spec), src, tmp_path, None, False, lambda m: None)
    part, trials = build.whole(src, runs, df, None)
    assert trials is None and part.variants == VARIANTS
    (tmp_path / "tables").mkdir()
    lb = report.last_best(part.df, part.benches)

    def against(**options) -> str:
        ctx = sections.Context(tmp_path, src.benchmarks, sections.Options(**options))
        found = sections.comparison_section(ctx, part, lb)
        assert found is not None
        return found.title.split(":")[0]

    assert against() == "Against a"  # no variant is named after a baseline method: the first
    register_method("b", METHOD_PRESETS["grpo"], rlvr_baseline=True)
    try:
        assert against() == "Against b"
        assert against(baseline="c") == "Against c"
        register_method("b", METHOD_PRESETS["grpo"], replace=True)  # the same settings, not declared a baseline
        assert against() == "Against a"
    finally:
        unregister_method("b")
    assert sections.default_baseline(["sdpg_urkl", "dr_grpo", "grpo"], sweep=False) == "dr_grpo"
    assert sections.default_baseline(["t0 beta=0.1", "t1 beta=0.2"], sweep=True) is None  # trials have no baseline
