"""sdpg-ablate on a real SLURM dev cluster, tracked in a real MLflow store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_overrides_dict

from sdpg.orchestration import tracking
from sdpg.orchestration.ablate import load_plan, run_state, submit


def spec_file(tmp_path: Path, name: str, variants: dict, seeds: list[int], steps: int, extra: dict | None = None) -> Path:
    spec = {
        "name": name,
        "base": "embedded",
        # 256 training rows are plenty for these runs; all 20,000 were tokenized in every job (2 s of CPU each)
        "overrides": {
            **tiny_overrides_dict(),
            "run.total_steps": steps,
            "eval.every": 0,
            "data.train_limit": 256,
            **(extra or {}),
        },
        "variants": variants,
        "seeds": seeds,
        "executor": "slurm",
        "profile": "dev",
        "max_parallel": 4,
        "output_dir": str(tmp_path / name),
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def child_runs(plan):
    c = tracking.client(plan.tracking_uri)
    exp = c.get_experiment_by_name(plan.experiment)
    return [r for r in c.search_runs([exp.experiment_id]) if "sdpg.run_hash" in r.data.tags]


@pytest.mark.slow
def test_grid_runs_as_a_slurm_array_and_resubmission_adds_nothing(tmp_path, dev_cluster, tiny_model_built, capsys):
    p = spec_file(tmp_path, "grid4", {"sdpg": {}, "grpo": {"algo.method": "grpo"}}, [0, 1], steps=2)
    plan = load_plan(p)
    assert len(plan.runs) == 4
    res = submit(plan, wait=True)
    ids = {j.job_id.split("_")[0] for j in res["jobs"]}
    assert len(ids) == 1, "one job array"
    assert all(run_state(r)[0] == "finished" for r in plan.runs)
    runs = child_runs(plan)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    one = runs[0]
    assert {"variant", "seed", "method", "run_hash", "git_commit"} <= set(one.data.tags)
    assert one.data.params["algo.method"] in ("sdpg_urkl", "grpo")
    hist = tracking.client(plan.tracking_uri).get_metric_history(one.info.run_id, "train/reward")
    assert sorted(m.step for m in hist) == [1, 2]
    # resubmitting: nothing to do, no new MLflow run
    again = submit(load_plan(p), wait=True)
    assert again["submitted"] == []
    assert len(child_runs(plan)) == 4


@pytest.mark.slow
def test_preempted_run_resumes_into_the_same_mlflow_run(tmp_path, dev_cluster, tiny_model_built):
    p = spec_file(tmp_path, "preempt", {"sdpg": {}}, [0], steps=8, extra={"run.checkpoint_every": 0})
    plan = load_plan(p)
    res = submit(plan, wait=False)
    (job,) = res["jobs"]
    metrics = Path(plan.runs[0].config.run.output_dir) / "metrics.jsonl"
    t0 = time.time()
    while time.time() - t0 < 240:
        if metrics.is_file() and any(json.loads(x)["step"] >= 3 for x in metrics.read_text().splitlines() if x.strip()):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the run never reached step 3")
    job._interrupt()  # SIGTERM then SIGUSR2, as SLURM does on preemption
    t0 = time.time()
    while not job.done() and time.time() - t0 < 300:
        time.sleep(1)
    result = job.result()
    assert result["status"] == "finished" and result["step"] == 8
    runs = child_runs(plan)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].info.run_id == json.loads((plan.output_dir / "jobs.json").read_text())[plan.runs[0].hash]["mlflow_run_id"]
    c = tracking.client(plan.tracking_uri)
    for key in ("train/reward", "train/entropy", "timing/step"):
        steps = [m.step for m in c.get_metric_history(runs[0].info.run_id, key)]
        assert sorted(steps) == list(range(1, 9)), (key, sorted(steps))  # every step exactly once
    log = "\n".join(x.read_text() for x in (plan.output_dir / "submitit").glob("*_log.err"))
    assert "resumed from" in log  # the requeued job continued from the checkpoint
