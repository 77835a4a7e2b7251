"""sdpg-sweep: spec validation, shared storage under concurrency, SLURM workers with pruning and a
killed worker, MLflow child runs per trial."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from sdpg.training.config import ConfigError
from sdpg.orchestration.sweep import Sweep, export, finished_count, launch, load_study, main, status

from conftest import tiny_overrides_dict

GOOD = {
    "name": "sw",
    "base": "embedded",
    "overrides": {"run.total_steps": 4},
    "space": {"algo.beta": {"type": "float", "low": 0.001, "high": 1.0, "log": True},
              "algo.kl_mode": {"type": "categorical", "choices": ["urkl", "ufkl"]}},
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
    ("log range through 0", {**GOOD, "space": {"algo.beta": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}},
     "a log range must be positive"),
    ("unknown metric", {**GOOD, "objective": {"metric": "eval/aime24/mean@32"}}, "key 'objective.metric' has bad value 'eval/aime24/mean@32'"),
    ("unknown sampler", {**GOOD, "sampler": {"type": "bayes"}}, "key 'sampler.type' has bad value 'bayes'"),
    ("unknown pruner", {**GOOD, "pruner": {"type": "asha"}}, "key 'pruner.type' has bad value 'asha'"),
    ("unknown trainer key in space", {**GOOD, "space": {"algo.betta": {"type": "float", "low": 0.1, "high": 1.0}}},
     "unknown key 'algo.betta'"),
    ("space reaching a bad value", {**GOOD, "space": {"algo.beta": {"type": "float", "low": -1.0, "high": 1.0}}},
     "key 'algo.beta' has bad value -1.0"),
    ("categorical without choices", {**GOOD, "space": {"algo.kl_mode": {"type": "categorical"}}}, "needs a non-empty 'choices'"),
    ("enqueue outside the space", {**GOOD, "enqueue": [{"algo.alpha": 0.1}]}, "enqueue[0]: keys ['algo.alpha'] are not in 'space'"),
    ("grid without step", {**GOOD, "sampler": {"type": "grid"}}, "grid sampler needs 'step'"),
    ("zero trials", {**GOOD, "n_trials": 0}, "key 'n_trials' has bad value 0"),
    ("unknown key", {**GOOD, "budget": 3}, "unknown key 'budget'"),
    ("unknown profile", {**GOOD, "executor": "slurm", "profile": "moon"}, "unknown SLURM profile 'moon'"),
    ("bad storage", {**GOOD, "storage": "redis"}, "key 'storage' has bad value 'redis'"),
    ("ablation without variant", {**GOOD, "ablation": "../ablations/quickstart.yaml"}, "'ablation' needs 'variant'"),
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
        "name": name, "base": "embedded",
        "overrides": {**tiny_overrides_dict(), "run.total_steps": 6, "eval.every": 2, "eval.n_samples": 2,
                      "data.eval_limit": 16, "optim.warmup_steps": 0},
        "space": {"optim.lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True}},
        "objective": {"metric": "eval/embedded/mean@2", "reduce": "last"},
        "pruner": {"type": "threshold", "lower": 0.05, "n_warmup_steps": 1},
        "sampler": {"type": "random", "seed": 0},
        "n_trials": n_trials, "workers": workers, "storage": "journal", "heartbeat_s": 1.0,
        "executor": "slurm", "profile": "dev", "output_dir": str(tmp_path / name),
        **(extra or {}),
    }
    return write(tmp_path, spec, f"{name}.yaml")


def mlflow_trial_runs(sweep):
    from sdpg.orchestration import tracking

    c = tracking.client(sweep.tracking_uri)
    exp = c.get_experiment_by_name(sweep.experiment)
    return [r for r in c.search_runs([exp.experiment_id]) if "sdpg.trial" in r.data.tags]


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


def test_killed_worker_and_rerun_complete_the_study(tmp_path, dev_cluster, tiny_model_built):
    p = slurm_spec(tmp_path, "swk", n_trials=3, workers=1,
                   extra={"overrides": {**tiny_overrides_dict(), "run.total_steps": 40, "eval.every": 0,
                                        "optim.warmup_steps": 0, "run.checkpoint_every": 2},
                          "objective": {"metric": "train/accuracy", "reduce": "auc"}, "pruner": {"type": "none"},
                          "enqueue": [{"optim.lr": 1e-4}]})
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
    assert len(finished) == 3
    log = "\n".join(x.read_text() for x in (sweep.output_dir / "submitit").glob("*_log.err"))
    assert "resumed from" in log  # the retry continued the dead trial's checkpoint
