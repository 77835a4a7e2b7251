"""sdpg-report on a real sweep: trials named, their parameters in a table, pruned trials marked and kept
out of Last/Best, Optuna's optimisation history and parameter importances, the page in headless Chromium."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import tiny_overrides_dict

from sdpg.reporting import report

# train/beta is algo.beta once the warm-up is off: an objective fixed by the parameters, so which trial
# is pruned (beta below the threshold pruner's 0.1) and which is best is known before the sweep runs.
TRIALS = [
    {"algo.beta": 0.5, "algo.alpha": 0.001},
    {"algo.beta": 0.05, "algo.alpha": 0.01},
    {"algo.beta": 0.2, "algo.alpha": 0.0001},
    {"algo.beta": 0.8, "algo.alpha": 0.003},
]


@pytest.fixture(scope="module")
def sweep_spec(tmp_path_factory, tiny_model_built):
    from sdpg.orchestration.sweep import Sweep, launch

    d = tmp_path_factory.mktemp("sweep_report")
    spec = {
        "name": "repsweep",
        "base": "embedded",
        "overrides": {**tiny_overrides_dict(), "run.total_steps": 4, "eval.every": 2, "algo.beta_warmup_steps": 0},
        "space": {
            "algo.beta": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
            "algo.alpha": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
        },
        "objective": {"metric": "train/beta", "reduce": "last", "direction": "maximize"},
        "sampler": {"type": "random", "seed": 0},
        "pruner": {"type": "threshold", "lower": 0.1, "n_warmup_steps": 0},
        "n_trials": len(TRIALS),
        "enqueue": TRIALS,
        "storage": "journal",
        "workers": 1,
        "executor": "local",
        "output_dir": str(d / "out"),
    }
    p = d / "repsweep.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))  # the space's order is the table's
    launch(Sweep(p), wait=True, log=lambda m: None)
    return p


@pytest.mark.slow
def test_sweep_report_names_trials_marks_pruned_and_plots_the_study(sweep_spec, tmp_path):
    from sdpg.commands import report_main
    from sdpg.reporting import browser

    out = tmp_path / "rep"
    assert report_main([str(sweep_spec), "--out", str(out)]) == 0
    index = (out / "index.md").read_text()

    # the trial table: every trial, its state, its parameters; the pruned one with the step it stopped at
    block = index.split("## Trials", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in block.splitlines() if ln.startswith("| ") and not ln.startswith("| Trial")]
    assert len(rows) == len(TRIALS)
    head = [c.strip() for c in block.split("| Trial", 1)[1].splitlines()[0].split("|")[:-1]]
    assert head[-2:] == ["beta", "alpha"]
    by_trial = {}
    for r in rows:
        cells = [c.strip().strip("*") for c in r.split("|")[1:-1]]
        by_trial[int(cells[0].lstrip("t").split()[0])] = cells
    for number, params in enumerate(TRIALS):
        cells = by_trial[number]
        assert float(cells[-2]) == pytest.approx(params["algo.beta"], rel=1e-3)
        assert float(cells[-1]) == pytest.approx(params["algo.alpha"], rel=1e-3)
        if params["algo.beta"] < 0.1:
            assert cells[1] == "pruned" and cells[2] == "–" and re.match(r"pruned at step \d+ \(value 0\.0500\)", cells[3])
        else:
            assert cells[1] == "complete" and float(cells[2]) == pytest.approx(params["algo.beta"], rel=1e-4)
    best = next(r for r in rows if r.startswith("| **"))
    assert best.startswith("| **t3**")  # beta 0.8, the largest objective
    assert "1 pruned" in block and "3 complete" in block
    assert (out / "tables" / "trials.csv").read_text().count("\n") == 1 + len(TRIALS)

    # trials are named by number and parameters; the pruned one is marked and kept out of Last/Best
    names = {n: f"t{n} beta={p['algo.beta']:.3g} alpha={p['algo.alpha']:.3g}" for n, p in enumerate(TRIALS)}
    lb = index.split("## Last and Best", 1)[1].split("\n## ", 1)[0]
    assert [ln.split("|")[1].strip() for ln in lb.splitlines() if ln.startswith("| t")] == [names[0], names[2], names[3]]
    assert "Completed trials only" in lb
    assert "Dashed: pruned trials" in index

    # Optuna's figures, on the page
    for f in ("optimization_history", "param_importances"):
        assert (out / "figures" / f"{f}.png").is_file() and (out / "figures" / f"{f}.pdf").is_file()
        assert f"figures/{f}.png" in index

    # curves: one distinct colour per trial, the pruned trial dashed and labelled, legend clear of the axes
    uri, exp = report.resolve_source(str(sweep_spec))
    df = report.load_runs(uri, exp)
    runs = report.run_table(uri, exp)
    df = df.assign(variant=df.run_id.map({r.run_id: names[int(r.trial)] for r in runs.itertuples()}))
    order = [names[n] for n in range(len(TRIALS))]
    _, fig = report.paper_grid(
        df, tmp_path / "g", order=order, keep_figure=True, dashed=[names[1]], labels={names[1]: names[1] + " (pruned)"}
    )
    lines = fig.axes[1].get_lines()  # reward
    assert len({ln.get_color() for ln in lines}) == len(TRIALS)
    pruned = next(ln for ln in lines if "(pruned)" in ln.get_label())
    assert pruned.get_linestyle() != "-" and pruned.get_label().startswith(names[1])
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    leg = fig.legends[0].get_window_extent(r)
    assert all(not leg.overlaps(ax.get_tightbbox(r)) for ax in fig.axes)

    # the page in a real browser: the trial table is a table, all four figures load
    if browser.find_chromium() is None:
        pytest.fail("no Chromium on this machine: scripts/test.sh installs Debian's chromium")
    dom = browser.inspect_page(out / "index.html")
    trials = next(t for t in dom["tables"] if t["header"][:2] == ["Trial", "State"])
    assert trials["rows"] == 1 + len(TRIALS)
    assert sorted(i["src"] for i in dom["images"]) == [
        "figures/curves.png",
        "figures/optimization_history.png",
        "figures/param_importances.png",
        "figures/training.png",
    ]
    assert all(i["complete"] and i["naturalWidth"] > 300 for i in dom["images"])
    browser.screenshot(out / "index.html", out / "screenshot.png")
