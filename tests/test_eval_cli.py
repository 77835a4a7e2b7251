"""sdpg-eval: the built-in model, a run folder and an exported run on the three built-in benchmarks, logged to
MLflow; the numbers equal those the training run logged at the same step; hostile input is refused."""

from __future__ import annotations

import json
import os

import pytest
from conftest import TINY

from sdpg.commands import eval_main
from sdpg.orchestration import tracking
from sdpg.training.config import load_config
from sdpg.training.trainer import train

SETS = (
    "{in_distribution: 'embedded:in_distribution', more_terms: 'embedded:more_terms', larger_numbers: 'embedded:larger_numbers'}"
)
RUN = [
    "run.total_steps=2",
    "run.checkpoint_every=1",
    "run.keep_checkpoints=2",
    "eval.every=2",
    "eval.pass_k=[1,2]",
    "eval.max_new_tokens=40",
    "data.eval_limit=4",
    "rollout.seed_per_prompt=true",
    f"data.eval={SETS}",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_built):
    out = tmp_path_factory.mktemp("evalcli") / "run"
    train(load_config(None, TINY + RUN + [f"run.output_dir={out}"]))
    logged = {}
    for line in open(out / "metrics.jsonl"):
        row = json.loads(line)
        logged[row["step"]] = {k: v for k, v in row.items() if k.startswith("eval/")}
    assert set(logged[0]) and set(logged[2])
    return out, logged


def eval_json(capsys, args):
    assert eval_main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


@pytest.mark.slow
def test_builtin_model_run_folder_and_export_equal_the_training_runs_numbers(trained, tmp_path, capsys):
    out, logged = trained
    into = tmp_path / "store"
    # the base model with the run's config: the run's step-0 evaluation
    base = eval_json(capsys, ["embedded", str(out / "config.yaml"), "--into", str(into)])
    assert base["step"] == 0
    assert base["metrics"] == pytest.approx(logged[0], rel=0, abs=0)
    assert {k.split("/")[1] for k in base["metrics"]} >= {"in_distribution", "more_terms", "larger_numbers"}
    # the run folder (newest checkpoint) and its exported folder: the run's step-2 evaluation
    run = eval_json(capsys, [str(out), "--into", str(into)])
    assert run["step"] == 2 and run["metrics"] == logged[2]
    exported = eval_json(capsys, [str(out / "hf"), "--into", str(into)])
    assert exported["step"] == 2 and exported["metrics"] == logged[2]
    assert logged[0] != logged[2]

    c = tracking.client(tracking.default_uri(into))
    exp = c.get_experiment_by_name("sdpg-eval")
    runs = c.search_runs([exp.experiment_id])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    by_variant = {r.data.tags["variant"]: r for r in runs}
    assert by_variant["base"].data.tags["sdpg.kind"] == "eval" and by_variant["base"].data.tags["sdpg.eval.step"] == "0"
    assert by_variant["run@2"].data.tags["sdpg.eval.step"] == "2"
    history = c.get_metric_history(by_variant["base"].info.run_id, tracking.to_mlflow_key("eval/more_terms/mean@2"))
    assert [(m.step, m.value) for m in history] == [(0, logged[0]["eval/more_terms/mean@2"])]


@pytest.mark.slow
def test_rerun_resumes_per_benchmark_and_a_new_benchmark_extends_the_run(trained, tmp_path, capsys):
    out, logged = trained
    into = tmp_path / "store"
    first = eval_json(capsys, ["embedded", str(out / "config.yaml"), "--into", str(into), "--benchmarks", "embedded:more_terms"])
    assert set(k.split("/")[1] for k in first["metrics"]) == {"more_terms"}
    assert eval_main(["embedded", str(out / "config.yaml"), "--into", str(into)]) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out.strip().splitlines()[-1])
    assert "3 benchmarks to run, 1 already done" in captured.err
    assert "[sdpg-eval] more_terms:" not in captured.err  # not evaluated again
    assert again["run_id"] == first["run_id"]
    assert again["metrics"] == pytest.approx(logged[0], rel=0, abs=0)
    c = tracking.client(tracking.default_uri(into))
    assert len(c.search_runs([c.get_experiment_by_name("sdpg-eval").experiment_id])) == 1


@pytest.mark.slow
def test_progress_lines_with_eta(trained, tmp_path, capsys):
    out, _ = trained
    assert (
        eval_main(["embedded", str(out / "config.yaml"), "--into", str(tmp_path / "s"), "--benchmarks", "embedded:more_terms"])
        == 0
    )
    err = capsys.readouterr().err
    assert "more_terms: 4/4 problems" in err and "ETA" in err and "1 benchmarks to run" in err


@pytest.mark.parametrize(
    "case",
    ["run_without_checkpoints", "half_written_checkpoint", "not_a_model", "garbled_model", "unknown_benchmark", "missing_path"],
)
def test_hostile_eval_one_line_exit_2_nothing_created(tmp_path, capsys, case, tiny_model_built):
    import yaml

    work = tmp_path / "work"
    work.mkdir()
    args = []
    if case in ("run_without_checkpoints", "half_written_checkpoint"):
        model = work / "run"
        (model / "checkpoints").mkdir(parents=True)
        cfg = load_config(None, TINY + RUN + [f"run.output_dir={model}"])
        (model / "config.yaml").write_text(yaml.safe_dump(cfg.resolved(), sort_keys=False))
        if case == "half_written_checkpoint":  # an interrupted save: its temporary file, no step_*.pt
            (model / "checkpoints" / "step_0000002.tmp").write_bytes(os.urandom(4096))
    elif case == "not_a_model":
        model = work / "folder"
        model.mkdir()
        (model / "README.md").write_text("not weights")
    elif case == "garbled_model":
        model = work / "garbled"
        model.mkdir()
        (model / "config.json").write_bytes(os.urandom(200))
        (model / "model.safetensors").write_bytes(os.urandom(200))
    elif case == "unknown_benchmark":
        model, args = "embedded", ["--benchmarks", "embedded:no_such_set"]
    else:
        model = work / "nothing" / "here"
    into = tmp_path / "store"
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert eval_main([str(model), *args, "--into", str(into)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert not into.exists()


@pytest.mark.slow
def test_report_shows_eval_runs_as_rows_with_include_evals(tmp_path, capsys, tiny_model_built):
    """An ablation's MLflow experiment plus sdpg-eval of its base model: a row of its own in the report's
    tables with --include-evals (or a sdpg.kind=eval tag filter), absent without; its step-0 numbers are the
    training run's."""
    import pandas as pd
    import yaml
    from conftest import tiny_overrides_dict

    from sdpg.commands import report_main
    from sdpg.orchestration.ablate import load_plan, submit

    overrides = {
        **tiny_overrides_dict(),
        "run.total_steps": 2,
        "eval.every": 2,
        "rollout.seed_per_prompt": True,
        "data.eval_limit": 4,
    }
    spec = {"name": "rep", "base": "embedded", "overrides": overrides, "variants": {"sdpg": {}}, "seeds": [0]}
    spec.update({"executor": "local", "output_dir": str(tmp_path / "rep")})
    (tmp_path / "rep.yaml").write_text(yaml.safe_dump(spec))
    plan = load_plan(tmp_path / "rep.yaml")
    submit(plan, wait=True, log=lambda m: None)
    run_dir = plan.runs[0].config.run.output_dir
    assert eval_main(["embedded", f"{run_dir}/config.yaml", "--into", str(tmp_path / "rep")]) == 0
    capsys.readouterr()

    assert report_main([str(tmp_path / "rep.yaml"), "--out", str(tmp_path / "with"), "--include-evals"]) == 0
    assert report_main([str(tmp_path / "rep.yaml"), "--out", str(tmp_path / "without")]) == 0
    md_with, md_without = (tmp_path / "with" / "index.md").read_text(), (tmp_path / "without" / "index.md").read_text()
    assert "| base" in md_with and "| base" not in md_without
    first = {json.loads(x)["step"]: json.loads(x) for x in open(f"{run_dir}/metrics.jsonl")}[0]
    table = pd.read_csv(tmp_path / "with" / "tables" / "last_best.csv").set_index("variant")
    assert table.loc["base", "embedded Last"] == pytest.approx(first["eval/embedded/mean@2"], abs=1e-6)
    assert "base" not in set(pd.read_csv(tmp_path / "without" / "tables" / "last_best.csv").variant)
