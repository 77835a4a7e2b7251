"""sdpg-ablate end to end with local processes, as the README's main job runs it: MLflow parent and
child runs ended, artifacts beside the spec's mlflow.db, progress lines whole, a quiet exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_overrides_dict

from sdpg.orchestration import tracking
from sdpg.orchestration.ablate import load_plan, run_state

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_shaped_grid_ends_its_parent_and_keeps_artifacts_in_its_folder(tmp_path, tiny_model_built):
    quick = yaml.safe_load((ROOT / "ablations" / "quickstart.yaml").read_text())
    spec = {
        **quick,
        "name": "qs",
        "output_dir": str(tmp_path / "proj" / "outputs" / "qs"),
        "overrides": {**quick["overrides"], **tiny_overrides_dict(), "run.total_steps": 2, "eval.every": 0},
    }
    p = tmp_path / "proj" / "qs.yaml"
    p.parent.mkdir()
    p.write_text(yaml.safe_dump(spec))
    elsewhere = tmp_path / "elsewhere"  # the command runs from another folder: nothing may land there
    elsewhere.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "sdpg", "ablate", str(p)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=elsewhere,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Exception ignored" not in r.stderr, r.stderr[-3000:]
    # the console: timestamped lines, none said twice in a row about a run, and the next command at the end
    progress = [ln for ln in r.stderr.splitlines() if ln.startswith("[sdpg-ablate ")]
    assert progress and all(re.match(r"\[sdpg-ablate \d\d:\d\d:\d\d\] ", ln) for ln in progress), progress
    bodies = [ln.split("] ", 1)[1] for ln in progress]
    assert len(bodies) == len(set(bodies)), bodies
    assert any(b.startswith("grpo-s0: finished at step 2") for b in bodies), bodies
    assert any(ln.endswith(f"sdpg-report {p} --out reports/qs") for ln in r.stderr.rstrip().splitlines()[-2:]), r.stderr[-800:]
    plan = load_plan(p)
    assert {r.variant for r in plan.runs} == {"sdpg_urkl", "grpo"}
    assert all(run_state(x)[0] == "finished" for x in plan.runs)
    c = tracking.client(plan.tracking_uri)
    exp = c.get_experiment_by_name(plan.experiment)
    runs = c.search_runs([exp.experiment_id])
    (parent,) = [x for x in runs if x.data.tags.get("sdpg.parent") == "ablation"]
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(x.info.status == "FINISHED" for x in children)
    assert parent.info.status == "FINISHED" and parent.info.end_time >= max(x.info.end_time for x in children)
    # artifacts (the spec on the parent, config.yaml on each child) beside mlflow.db, not in ./mlruns
    folder = plan.output_dir
    assert (folder / "mlflow.db").is_file()
    for run, name in [(parent, "ablation_spec.yaml")] + [(x, "config.yaml") for x in children]:
        art = Path(run.info.artifact_uri.removeprefix("file://"))
        assert art.is_relative_to(folder) and (art / name).is_file(), (run.info.artifact_uri, name)
    assert not list(elsewhere.iterdir()) and not (p.parent / "mlruns").exists()
    # resubmitting: nothing to train, the parent stays FINISHED
    r2 = subprocess.run(
        [sys.executable, "-m", "sdpg", "ablate", str(p)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=elsewhere,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r2.returncode == 0 and "nothing submitted" in r2.stderr, r2.stderr[-2000:]
    assert c.get_run(parent.info.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_a_run_that_fails_is_failed_in_mlflow_and_so_is_its_parent(tmp_path):
    """Its job raises before training: its model folder passes every check made at submission (it exists
    and holds a config.json) but is not a model, so loading it fails in the job. No base model needed.
    (A run folder taken by a file, this test's former trigger, is now refused before anything exists.)"""
    model = tmp_path / "not_a_model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "no_such_architecture"}\n')
    spec = {
        "name": "bad",
        "base": "embedded",
        "variants": {"a": {}},
        "seeds": [0],
        "executor": "local",
        "overrides": {"run.total_steps": 1, "model.path": str(model)},
        "output_dir": str(tmp_path / "bad"),
    }
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(spec))
    plan = load_plan(p)
    r = subprocess.run(
        [sys.executable, "-m", "sdpg", "ablate", str(p)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 1 and "some runs failed" in r.stderr, r.stderr[-2000:]
    c = tracking.client(plan.tracking_uri)
    exp = c.get_experiment_by_name(plan.experiment)
    runs = c.search_runs([exp.experiment_id])
    (parent,) = [x for x in runs if x.data.tags.get("sdpg.parent") == "ablation"]
    (child,) = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    error = child.data.tags["sdpg.error"]
    assert child.info.status == "FAILED" and error.startswith("ValueError"), error
    assert "Traceback" in (Path(child.info.artifact_uri.removeprefix("file://")) / "error.txt").read_text()
    assert parent.info.status == "FAILED" and parent.info.end_time


def test_progress_says_each_change_once_with_the_time_and_the_time_left(tmp_path):
    """The console of a local run: the counts when they change, a run's line when its step changes (the time
    left alone is no change), the time of day on every line, and how each run ended."""
    import json

    from sdpg.orchestration.ablate import Progress, Run
    from sdpg.training.config import load_config

    cfg = load_config(None, [f"run.output_dir={tmp_path / 'a'}", "run.total_steps=10"])
    run = Run(name="a-s0", variant="a", grid={}, seed=0, config=cfg, hash="h", diff={})
    (tmp_path / "a").mkdir()

    class Job:
        finished = False
        paths = type("P", (), {"stderr": tmp_path / "none.err"})

        def done(self):
            return self.finished

    now, said = [36000.0], []
    progress, job = Progress([run], said.append, clock=lambda: now[0]), Job()

    def step(n, acc):
        with open(tmp_path / "a" / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": n, "train/accuracy": acc}) + "\n")

    progress.update([job])  # started, no step yet
    step(1, 0.5)
    progress.update([job])
    now[0] += 10
    progress.update([job])  # nothing new: nothing said
    step(2, 0.5)
    progress.update([job])  # one step in 10 s, 8 to go
    now[0] += 5
    progress.update([job])  # only the time left would change: nothing said
    job.finished = True
    progress.update([job])
    bodies = [ln.split("] ", 1)[1] for ln in said]
    assert all(re.match(r"\[sdpg-ablate \d\d:\d\d:\d\d\] ", ln) for ln in said), said
    assert bodies == [
        "0/1 runs done, 1 running, 0 queued",
        "a-s0: queued",
        "a-s0: step 1/10 acc 0.50",
        "a-s0: step 2/10 acc 0.50, ~80 s left",
        "1/1 runs done, 0 running, 0 queued",
        "a-s0: stopped unfinished at step 2 acc 0.50",  # no result.json: it did not finish
    ], bodies
