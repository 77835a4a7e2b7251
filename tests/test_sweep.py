"""sdpg-sweep: spec validation, shared storage under concurrency, SLURM workers with pruning and a
killed worker, MLflow child runs per trial."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_overrides_dict

from sdpg.commands.sweep import main
from sdpg.orchestration.sweep import Sweep, export, finished_count, launch, load_study, status
from sdpg.training.config import ConfigError

GOOD = {
    "name": "sw",
    "base": "embedded",
    "overrides": {"run.total_steps": 4},
    "space": {
        "algo.beta": {"type": "float", "low": 0.001, "high": 1.0, "log": True},
        "algo.kl_mode": {"type": "categorical", "choices": ["urkl", "ufkl"]},
    },
    "objective": {"metric": "eval/embedded/mean@4"},
    "n_trials": 4,
}


def write(tmp_path, spec, name="sweep.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(spec) if isinstance(spec, dict) else spec)
    return p


BAD = [
    ("empty space", {**GOOD, "space": {}}, "key 'space'"),
    ("low above high", {**GOOD, "space": {"algo.beta": {"type": "float", "low": 1.0, "high": 0.1}}}, "low 1.0 > high 0.1"),
    (
        "log range through 0",
        {**GOOD, "space": {"algo.beta": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}},
        "a log range must be positive",
    ),
    (
        "unknown metric",
        {**GOOD, "objective": {"metric": "eval/aime24/mean@32"}},
        "key 'objective.metric' has bad value 'eval/aime24/mean@32'",
    ),
    ("unknown sampler", {**GOOD, "sampler": {"type": "bayes"}}, "key 'sampler.type' has bad value 'bayes'"),
    ("unknown pruner", {**GOOD, "pruner": {"type": "asha"}}, "key 'pruner.type' has bad value 'asha'"),
    (
        "unknown trainer key in space",
        {**GOOD, "space": {"algo.betta": {"type": "float", "low": 0.1, "high": 1.0}}},
        "unknown key 'algo.betta'",
    ),
    (
        "space reaching a bad value",
        {**GOOD, "space": {"algo.beta": {"type": "float", "low": -1.0, "high": 1.0}}},
        "key 'algo.beta' has bad value -1.0",
    ),
    ("categorical without choices", {**GOOD, "space": {"algo.kl_mode": {"type": "categorical"}}}, "needs a non-empty 'choices'"),
    (
        "enqueue outside the space",
        {**GOOD, "enqueue": [{"algo.alpha": 0.1}]},
        "key 'enqueue[0].algo.alpha' has bad value 0.1: algo.alpha is not in 'space'",
    ),
    ("grid without step", {**GOOD, "sampler": {"type": "grid"}}, "grid sampler needs 'step'"),
    ("zero trials", {**GOOD, "n_trials": 0}, "key 'n_trials' has bad value 0"),
    ("unknown key", {**GOOD, "budget": 3}, "unknown key 'budget'"),
    ("unknown profile", {**GOOD, "executor": "slurm", "profile": "moon"}, "unknown SLURM profile 'moon'"),
    ("bad storage", {**GOOD, "storage": "redis"}, "key 'storage' has bad value 'redis'"),
    ("ablation without variant", {**GOOD, "ablation": "../ablations/quickstart.yaml"}, "'ablation' needs 'variant'"),
    ("grid point without ablation", {**GOOD, "grid": {"task": "sum"}}, "this spec has no 'ablation'"),
]


@pytest.mark.parametrize("what,spec,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_sweep_spec_is_refused(tmp_path, monkeypatch, capsys, what, spec, needle):
    monkeypatch.chdir(tmp_path)
    p = write(tmp_path, spec)
    with pytest.raises(ConfigError) as e:
        Sweep(p)
    assert needle in str(e.value) and str(p) in str(e.value), str(e.value)
    assert main([str(p)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "outputs").exists()


def test_sweep_starts_from_a_grid_point_of_an_ablation_variant(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    abl = {
        "name": "abl",
        "base": "embedded",
        "variants": {"full": {}, "grpo": {"algo.method": "grpo"}},
        "grid": {"task": {"short": {}, "long": {"rollout.max_new_tokens": 40, "eval.max_new_tokens": 40}}},
    }
    (tmp_path / "abl.yaml").write_text(yaml.safe_dump(abl, sort_keys=False))
    spec = {k: v for k, v in GOOD.items() if k != "base"}
    first = Sweep(write(tmp_path, {**spec, "ablation": "abl.yaml", "variant": "full"}))
    assert first.base["rollout"]["max_new_tokens"] == 32  # no grid named: the first point
    long = Sweep(write(tmp_path, {**spec, "ablation": "abl.yaml", "variant": "full", "grid": {"task": "long"}}))
    assert long.base["rollout"]["max_new_tokens"] == 40 and long.base["algo"]["method"] == "sdpg_urkl"
    p = write(tmp_path, {**spec, "ablation": "abl.yaml", "variant": "full", "grid": {"task": "huge"}})
    with pytest.raises(ConfigError, match="key 'grid' has bad value .*'huge'.* no run of variant 'full'"):
        Sweep(p)
    assert not (tmp_path / "outputs").exists()


def test_shipped_sweeps_resolve():
    root = Path(__file__).resolve().parents[1]
    for p in sorted((root / "sweeps").glob("*.yaml")):
        Sweep(p)


def _storage_worker(spec_path: str, n_trials: int, out: str) -> None:
    sweep = Sweep(spec_path)
    study = load_study(sweep)
    mine = []
    while finished_count(study) < n_trials:
        t = study.ask()
        x = t.suggest_float("algo.beta", 0.001, 1.0, log=True)
        study.tell(t, x)
        mine.append(t.number)
    Path(out).write_text(json.dumps(mine))


@pytest.mark.slow
def test_eight_concurrent_workers_lose_no_trial(tmp_path):
    p = write(tmp_path, {**GOOD, "n_trials": 40, "output_dir": str(tmp_path / "out")})
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_storage_worker, args=(str(p), 40, str(tmp_path / f"w{i}.json"))) for i in range(8)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(300)
        assert pr.exitcode == 0
    told = [n for i in range(8) for n in json.loads((tmp_path / f"w{i}.json").read_text())]
    study = load_study(Sweep(p))
    trials = study.get_trials()
    assert len(told) == len(set(told)), "a trial handed to two workers"
    assert sorted(told) == sorted(t.number for t in trials), "a told trial is missing from the storage"
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert 40 <= len(trials) <= 40 + 7  # each worker may finish one trial past the budget


def slurm_spec(tmp_path, name, n_trials, workers, extra=None):
    spec = {
        "name": name,
        "base": "embedded",
        "overrides": {
            **tiny_overrides_dict(),
            "run.total_steps": 4,  # evaluations at steps 0, 2 and 4: a report to prune at, and one after it
            "eval.every": 2,
            "data.train_limit": 256,  # plenty for these trials; all 20,000 rows were tokenized in every trial
            "eval.n_samples": 2,
            "data.eval_limit": 16,
            "optim.warmup_steps": 0,
        },
        "space": {"optim.lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True}},
        "objective": {"metric": "eval/embedded/mean@2", "reduce": "last"},
        "pruner": {"type": "threshold", "lower": 0.05, "n_warmup_steps": 1},
        "sampler": {"type": "random", "seed": 0},
        "n_trials": n_trials,
        "workers": workers,
        "storage": "journal",
        "heartbeat_s": 1.0,
        "executor": "slurm",
        "profile": "dev",
        "output_dir": str(tmp_path / name),
        **(extra or {}),
    }
    return write(tmp_path, spec, f"{name}.yaml")


def mlflow_trial_runs(sweep):
    from sdpg.orchestration import tracking

    c = tracking.client(sweep.tracking_uri)
    exp = c.get_experiment_by_name(sweep.experiment)
    return [r for r in c.search_runs([exp.experiment_id]) if "sdpg.trial" in r.data.tags]


@pytest.mark.slow
def test_two_slurm_workers_share_a_journal_and_prune(tmp_path, dev_cluster, tiny_model_built):
    # lr = 1 wrecks the model at once: its accuracy falls under the threshold and it is pruned
    p = slurm_spec(tmp_path, "sw2", n_trials=4, workers=2, extra={"enqueue": [{"optim.lr": 1e-4}, {"optim.lr": 1.0}]})
    sweep = Sweep(p)
    res = launch(sweep, wait=False)
    assert len({j.job_id.split("_")[0] for j in res["jobs"]}) == 1  # one SLURM array
    for j in res["jobs"]:
        j.result()
    study = load_study(sweep)
    states = [t.state.name for t in study.get_trials()]
    assert finished_count(study) >= 4
    assert "PRUNED" in states and "COMPLETE" in states
    by_lr = {t.params["optim.lr"]: t.state.name for t in study.get_trials()}
    assert by_lr[1.0] == "PRUNED" and by_lr[1e-4] == "COMPLETE"
    runs = mlflow_trial_runs(sweep)
    assert sorted(int(r.data.tags["sdpg.trial"]) for r in runs) == sorted(t.number for t in study.get_trials())
    assert {r.data.tags["sdpg.trial_state"] for r in runs} == {"pruned", "complete"}
    assert "best: trial" in status(sweep)
    out = export(sweep, tmp_path / "best.yaml")
    from sdpg.orchestration.ablate import load_plan

    plan = load_plan(out)
    best = study.best_trial.params
    assert {r.variant for r in plan.runs} <= {"base", "best"} and "best" in {r.variant for r in plan.runs}
    assert next(r for r in plan.runs if r.variant == "best").config.optim.lr == best["optim.lr"]


@pytest.mark.slow
def test_killed_worker_and_rerun_complete_the_study(tmp_path, dev_cluster, tiny_model_built):
    p = slurm_spec(
        tmp_path,
        "swk",
        n_trials=2,  # the killed trial's retry and one more: the budget met with the retry counted once
        workers=1,
        extra={
            "overrides": {
                **tiny_overrides_dict(),
                "run.total_steps": 24,  # still running when killed: the kill follows its step-2 checkpoint at once
                "data.train_limit": 256,
                "eval.every": 0,
                "optim.warmup_steps": 0,
                "run.checkpoint_every": 2,
            },
            "objective": {"metric": "train/accuracy", "reduce": "auc"},
            "pruner": {"type": "none"},
            "enqueue": [{"optim.lr": 1e-4}],
        },
    )
    sweep = Sweep(p)
    (job,) = launch(sweep, wait=False)["jobs"]
    study = load_study(sweep)
    t0 = time.time()
    while time.time() - t0 < 240:  # wait for the first trial to train a few steps and checkpoint
        if list((sweep.output_dir / "trials").glob("trial_0000-s0/checkpoints/*.pt")):
            break
        time.sleep(0.5)
    else:
        pytest.fail("the first trial never checkpointed")
    # the worker dies hard: SIGKILL to the process that holds the trial (recorded as host:pid:job)
    running = [t for t in load_study(sweep).get_trials() if t.state.name == "RUNNING"]
    pid = int(running[0].user_attrs["sdpg.worker"].split(":")[1])
    os.kill(pid, signal.SIGKILL)
    subprocess.run(["scancel", job.job_id], check=False)
    time.sleep(4)  # its trial's heartbeat goes stale (3 x 1 s)
    for _ in range(60):  # a relaunch attaches to a job SLURM still holds: wait until it lets go of it
        q = subprocess.run(["squeue", "-h", "--jobs", str(job.job_id)], capture_output=True, text=True, check=False)
        if not q.stdout.strip():
            break
        time.sleep(1)
    assert [t.state.name for t in load_study(sweep).get_trials()] == ["RUNNING"]
    res = launch(Sweep(p), wait=False)  # rerun the sweep: reaps, re-enqueues, continues
    for j in res["jobs"]:
        j.result()
    study = load_study(sweep)
    trials = study.get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert trials[0].state.name == "FAIL"
    retries = [t for t in finished if t.user_attrs.get("sdpg.retry_of") == 0]
    assert len(retries) == 1 and retries[0].params == trials[0].params  # re-run once, not lost
    assert len(finished) == 2
    log = "\n".join(x.read_text() for x in (sweep.output_dir / "submitit").glob("*_log.err"))
    assert "resumed from" in log  # the retry continued the dead trial's checkpoint


@pytest.mark.slow
def test_a_second_launch_attaches_to_running_workers(tmp_path, tiny_model_built):
    """A second sdpg-sweep of a spec whose workers are still running follows them: no new worker, the
    budget met once, every run ended (it used to start workers of its own beside them)."""
    p = write(
        tmp_path,
        {
            **GOOD,
            "name": "swa",
            "overrides": {**tiny_overrides_dict(), "run.total_steps": 6, "eval.every": 0, "optim.warmup_steps": 0},
            "objective": {"metric": "train/accuracy", "reduce": "last"},
            "pruner": {"type": "none"},
            "n_trials": 2,
            "workers": 1,
            "storage": "journal",
            "executor": "local",
            "output_dir": str(tmp_path / "swa"),
        },
        "swa.yaml",
    )
    sweep = Sweep(p)
    (job,) = launch(sweep, wait=False)["jobs"]
    lines: list[str] = []
    second = launch(Sweep(p), wait=True, log=lines.append)
    assert second["jobs"] == [] and list(second["attached"].values()) == [str(job.job_id)]
    assert "1 workers of an earlier launch are still queued or running" in lines[0]
    job.result()
    state = json.loads((sweep.output_dir / "jobs.json").read_text())
    assert list(state) == ["worker-0"] and len(state["worker-0"]["jobs"]) == 1  # nothing submitted twice
    trials = load_study(sweep).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(r.info.status == "FINISHED" for r in mlflow_trial_runs(sweep))
    # once they have ended, a launch no longer attaches: the budget is spent, nothing to do
    assert launch(Sweep(p), wait=True, log=lines.append) == {"jobs": []}


def _runs_by_trial(sweep):
    runs = mlflow_trial_runs(sweep)
    return {int(r.data.tags["sdpg.trial"]): r for r in runs}


def _parent(sweep):
    from sdpg.orchestration import tracking

    c = tracking.client(sweep.tracking_uri)
    exp = c.get_experiment_by_name(sweep.experiment)
    (parent,) = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("sdpg.parent") == "sweep"]
    return parent


@pytest.mark.slow
def test_two_local_workers_eight_distinct_trials_every_run_ended(tmp_path, tiny_model_built):
    """2 workers, 8 trials (--n-trials) on a journal store: no point twice (the spec even enqueues one
    twice), every MLflow run ended with its trial's state, a trial that raises has its traceback on
    its run and in the worker log, the parent run FINISHED, pruned trials marked with their step."""
    out = tmp_path / "sw8"
    p = write(
        tmp_path,
        {
            "name": "sw8",
            "base": "embedded",
            "overrides": {
                **tiny_overrides_dict(),
                "run.total_steps": 2,  # evaluations at steps 0 and 2: the pruner's one report after its warm-up
                "eval.every": 2,
                "data.train_limit": 256,
                "eval.n_samples": 2,
                "data.eval_limit": 16,
                "optim.warmup_steps": 0,
            },
            "space": {"optim.lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True}},
            "objective": {"metric": "eval/embedded/mean@2", "reduce": "last"},
            "pruner": {"type": "threshold", "lower": 0.05, "n_warmup_steps": 1},
            "sampler": {"type": "random", "seed": 0},
            "n_trials": 3,
            "workers": 2,
            "storage": "journal",
            "executor": "local",
            "output_dir": str(out),
            # trial 0 trains, trial 1 (lr = 1 wrecks the model) is pruned, trial 2 repeats trial 0's point
            "enqueue": [{"optim.lr": 1e-4}, {"optim.lr": 1.0}, {"optim.lr": 1e-4}],
        },
        "sw8.yaml",
    )
    (out / "trials").mkdir(parents=True)
    (out / "trials" / "trial_0003-s0").write_text("a file where trial 3's folder should be: it fails\n")
    r = subprocess.run(
        [sys.executable, "-m", "sdpg", "sweep", str(p), "--n-trials", "8"],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Exception ignored" not in r.stderr, r.stderr[-3000:]
    progress = [ln for ln in r.stderr.splitlines() if "trials finished (" in ln]
    assert progress and all(int(ln.split("/")[0].split()[-1]) <= 8 for ln in progress), progress
    assert "8/8 trials finished" in progress[-1] and " pruned" in progress[-1]
    sweep = Sweep(p, n_trials=8)
    trials = load_study(sweep).get_trials()
    by_number = {t.number: t for t in trials}
    # no point twice: the repeated enqueued point was dropped before it trained
    assert by_number[2].state.name == "FAIL" and by_number[2].user_attrs["sdpg.duplicate_of"] == 0
    trained = [t for t in trials if "sdpg.duplicate_of" not in t.user_attrs]
    finished = [t for t in trained if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) >= 8
    assert len({t.params["optim.lr"] for t in trained}) == len(trained), [t.params for t in trained]
    assert by_number[1].state.name == "PRUNED" and by_number[3].state.name == "FAIL"
    # MLflow: one run per trained trial, none left RUNNING, each ended with its trial's state
    runs = _runs_by_trial(sweep)
    assert sorted(runs) == sorted(t.number for t in trained)
    want = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    assert {n: runs[n].info.status for n in runs} == {t.number: want[t.state.name] for t in trained}
    assert all(runs[n].info.end_time for n in runs)
    assert runs[1].data.tags["sdpg.trial_state"] == "pruned" and runs[1].data.tags["sdpg.pruned_at_step"] == "2"
    # the failed trial: error as a tag, traceback as an artifact beside mlflow.db, and in the worker log
    failed = runs[3]
    assert failed.data.tags["sdpg.error"].startswith("WriteRefused")  # a file planted where the trial writes its folder
    art = Path(failed.info.artifact_uri.removeprefix("file://"))
    assert art.is_relative_to(out) and "Traceback" in (art / "error.txt").read_text()
    logs = "\n".join(x.read_text() for x in (out / "submitit").glob("*_log.err"))
    assert "trial 3 failed: WriteRefused" in logs and "Traceback (most recent call last)" in logs
    assert by_number[3].user_attrs["sdpg.error"].startswith("WriteRefused")
    # the sweep's parent run is ended; no stray ./mlruns
    parent = _parent(sweep)
    assert parent.info.status == "FINISHED" and parent.info.end_time
    assert not (tmp_path / "mlruns").exists()
    # the table marks pruned trials with their step; the best is a complete trial
    table = status(sweep)
    assert "pruned@2" in table and "duplicate proposals skipped" in table
    best = int(table.split("best: trial ")[1].split()[0])
    assert by_number[best].state.name == "COMPLETE"


@pytest.mark.slow
def test_sweep_on_a_two_task_slurm_profile_trains_each_trial_in_one_process_group(tmp_path, dev_cluster, tiny_model_built):
    """A worker job with 2 tasks: rank 0 runs the study and the other task joins every trial's
    training, so each trial trains on world size 2 (recorded by the trainer and on the MLflow run)."""
    p = slurm_spec(
        tmp_path,
        "swdp",
        n_trials=2,
        workers=1,
        extra={"profile": "dev2", "pruner": {"type": "none"}, "enqueue": [{"optim.lr": 1e-4}, {"optim.lr": 3e-4}]},
    )
    sweep = Sweep(p)
    (job,) = launch(sweep, wait=False)["jobs"]
    results = job.results()
    assert len(results) == 2
    assert results[0]["trials_run"] == 2 and results[1] == {"worker": 0, "rank": 1, "runs": 2}
    study = load_study(sweep)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "COMPLETE"]
    for n in (0, 1):
        res = json.loads((sweep.output_dir / "trials" / f"trial_{n:04d}-s0" / "result.json").read_text())
        assert res["world_size"] == 2 and res["status"] == "finished"
    runs = _runs_by_trial(sweep)
    assert {n: (r.info.status, r.data.tags["sdpg.world_size"]) for n, r in runs.items()} == {
        0: ("FINISHED", "2"),
        1: ("FINISHED", "2"),
    }
    assert _parent(sweep).info.status == "FINISHED"
