"""One writer per run, nothing leaked: two ``sdpg-ablate`` of one spec started at the same moment (with no
MLflow store yet, and with one), on local processes and on the real SLURM dev cluster, train each run once;
secrets planted in the environment, in config values and in URIs appear nowhere in the store, its artifacts,
the job logs or the console.

What "once" means here, checked on what the tool wrote:
* one MLflow child run per configuration, and zero duplicated (run, key, step) rows in the sqlite store;
* one job per run in ``jobs.json`` (the second command attached to the first one's jobs);
* each run folder's ``metrics.jsonl`` steps strictly increasing (one process wrote it).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_overrides_dict

REPO = Path(__file__).resolve().parents[1]
# A very small built-in model: these tests check bookkeeping, not learning, and must not wait for the
# default model's build (its own cache entry, built once by the fixture below).
SMALL_MODEL = {
    "model.embedded.hidden_size": 64,
    "model.embedded.num_layers": 1,
    "model.embedded.num_heads": 4,
    "model.embedded.pretrain_steps": 20,
    "model.embedded.pretrain_batch": 16,
}


@pytest.fixture(scope="module")
def small_model():
    from sdpg.training.config import load_config
    from sdpg.training.embedded import ensure_embedded_model

    return ensure_embedded_model(load_config(None, [f"{k}={v}" for k, v in SMALL_MODEL.items()]).model.embedded)


def _env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _spec(tmp_path: Path, name: str, executor: str = "local", **extra) -> Path:
    spec = {
        "name": name,
        "base": "embedded",
        "overrides": {**tiny_overrides_dict(), **SMALL_MODEL, "run.total_steps": 2, "eval.every": 0, "run.checkpoint_every": 1},
        "variants": {"a": {}, "b": {"algo.beta": 0.2}},
        "seeds": [0],
        "executor": executor,
        "max_parallel": 2,
        **extra,
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p


def _create_store(out: Path) -> None:
    """An MLflow store with its schema created, as an earlier submission leaves it."""
    code = "import sys; from mlflow.tracking import MlflowClient; MlflowClient(sys.argv[1]).search_experiments()"
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{out / 'mlflow.db'}"], check=True, capture_output=True, env=_env())


def _start(p: Path, cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sdpg", "ablate", str(p), *args],
        cwd=cwd,
        env=env or _env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _check_once(out: Path, n_runs: int) -> None:
    """One child run per config, no duplicated (run, key, step) row, one job per run, one writer per folder."""
    db = sqlite3.connect(out / "mlflow.db")
    try:
        parents = db.execute("select count(*) from tags where key = 'sdpg.parent'").fetchone()[0]
        children = db.execute("select count(distinct run_uuid) from tags where key = 'sdpg.run_hash'").fetchone()[0]
        dup = db.execute(
            "select run_uuid, key, step, count(*) from metrics group by run_uuid, key, step having count(*) > 1"
        ).fetchall()
        n_rows = db.execute("select count(*) from metrics").fetchone()[0]
    finally:
        db.close()
    assert parents == 1, parents
    assert children == n_runs, children
    assert n_rows > 0 and dup == [], dup[:10]
    jobs = json.loads((out / "jobs.json").read_text())
    assert len(jobs) == n_runs, jobs
    for h, v in jobs.items():
        assert len(v["jobs"]) == 1, (h, v["jobs"])  # submitted once: the other command attached to it
    folders = sorted((out / "runs").iterdir())
    assert len(folders) == n_runs, folders
    for f in folders:
        steps = [json.loads(ln)["step"] for ln in (f / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        assert steps == sorted(set(steps)) and steps[-1] == 2, (f.name, steps)
        assert json.loads((f / "result.json").read_text())["status"] == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("store", ["absent", "present"])
def test_two_local_submissions_at_once_train_each_run_once(tmp_path, small_model, store):
    p = _spec(tmp_path, f"twice_{store}")
    out = tmp_path / "outputs" / f"twice_{store}"
    if store == "present":  # an existing store (its schema created), as after an earlier submission
        out.mkdir(parents=True)
        _create_store(out)
    first, second = _start(p, tmp_path), _start(p, tmp_path)
    outs = [proc.communicate(timeout=900) for proc in (first, second)]
    for proc, (_, se) in zip((first, second), outs):
        assert proc.returncode == 0, se[-3000:]
        assert "Traceback" not in se, se[-3000:]
    console = "".join(so + se for so, se in outs)
    assert "attached" in console or "being submitted by another" in console, console[-3000:]
    assert not (out / "_alembic_tmp_runs").exists()
    _check_once(out, 2)


SECRETS = {
    "env_token": "ghp_" + "Q7xZ" * 9,  # a GitHub token shape, in a variable without a secret-looking name
    "env_plain": "plainvalue-8841-secret",  # only its variable's name says it is a secret
    "uri_password": "Pg5ecretW0rd",
    "s3_secret": "s3SecretKey/abc+123",
    "query_secret": "qs-hunter2-77",
    "hf_token": "hf_" + "AbCd" * 8,
}


@pytest.mark.slow
def test_secrets_appear_nowhere(tmp_path, small_model):
    """Secrets in the environment, in config values and in URIs written in the spec: the MLflow store
    (sqlite file), the artifacts beside it, the job logs and the console hold none of them."""
    s = SECRETS
    spec = {
        "name": "secrets",
        "base": "embedded",
        # a URI with credentials and a query-string secret, as a user may leave them in a spec comment
        "overrides": {
            **tiny_overrides_dict(),
            **SMALL_MODEL,
            "run.total_steps": 1,
            "eval.every": 0,
            # config values holding secrets: a token shape, an environment secret's value
            "data.student_template": f"Q:{{problem}} {s['hf_token']} {s['env_plain']}\nA:",
            "data.max_prompt_tokens": 256,  # the secrets lengthen the prompt; student prompts are never cut
        },
        "variants": {"a": {}},
        "seeds": [0],
        "executor": "local",
    }
    text = (
        f"# mirror: postgresql://alice:{s['uri_password']}@db.example:5432/mlflow\n"
        f"# bucket: s3://AKIAIOSFODNN7EXAMPLE:{s['s3_secret']}@bucket/x\n"
        f"# api: https://api.example/v1?password={s['query_secret']}&x=1\n"
        f"# github: {s['env_token']}\n"
    ) + yaml.safe_dump(spec, sort_keys=False)
    p = tmp_path / "secrets.yaml"
    p.write_text(text)
    env = _env(GITHUB_PAT=s["env_token"], DEPLOY_PASSWORD=s["env_plain"], HF_TOKEN=s["hf_token"])
    r = subprocess.run(
        [sys.executable, "-m", "sdpg", "ablate", str(p)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "outputs" / "secrets"
    places = [
        out / "mlflow.db",
        *(f for f in (out / "mlartifacts").rglob("*") if f.is_file()),
        *(f for f in (out / "submitit").rglob("*") if f.suffix in (".out", ".err", ".log")),
    ]
    assert (out / "mlflow.db").is_file() and any(f.name == "ablation_spec.yaml" for f in places), places
    leaks = []
    for f in places:
        data = f.read_bytes()
        leaks += [(f.name, k) for k, v in s.items() if v.encode() in data]
    leaks += [("console", k) for k, v in s.items() if v in r.stdout + r.stderr]
    assert not leaks, leaks
    # what was logged is still useful: the spec artifact keeps its keys, params keep the template's shape
    spec_art = next(f for f in places if f.name == "ablation_spec.yaml").read_text()
    assert "postgresql://***@db.example" in spec_art and "variants:" in spec_art


def _squeue_empty(job_ids: list[str]) -> bool:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i", "--jobs", ",".join(job_ids)], capture_output=True, text=True, check=False
    )
    return not out.stdout.strip()


@pytest.mark.slow
@pytest.mark.parametrize("store", ["absent", "present"])
def test_two_slurm_submissions_at_once_train_each_run_once(tmp_path, small_model, dev_cluster, store):
    p = _spec(tmp_path, f"slurm_{store}", executor="slurm", profile="dev")
    out = tmp_path / "outputs" / f"slurm_{store}"
    if store == "present":
        out.mkdir(parents=True)
        _create_store(out)
    env = _env(**dev_cluster)
    first, second = _start(p, tmp_path, env=env), _start(p, tmp_path, env=env)
    outs = [proc.communicate(timeout=300) for proc in (first, second)]
    for proc, (_, se) in zip((first, second), outs):
        assert proc.returncode == 0, se[-3000:]
    console = "".join(so + se for so, se in outs)
    assert "attached" in console, console[-3000:]
    jobs = json.loads((out / "jobs.json").read_text())
    ids = sorted({j["job_id"] for v in jobs.values() for j in v["jobs"]})
    deadline = time.time() + 900
    while not _squeue_empty(ids):
        assert time.time() < deadline, f"jobs {ids} still queued or running"
        time.sleep(3)
    _check_once(out, 2)


@pytest.mark.slow
def test_lr_1e6_ends_with_a_failed_mlflow_run_that_says_why(tmp_path, tiny_model_built):
    """optim.lr=1e6 under sdpg-ablate: the trainer's non-finite guard stops the run; its MLflow run is FAILED
    with the guard's sentence as ``sdpg.error``, the parent is FAILED, and the console says why. (The default
    built-in model: it has learnt enough for the update to carry a signal, which the tiny untrained one has not.)"""
    spec = {
        "name": "blowup",
        "base": "embedded",
        "overrides": {
            **tiny_overrides_dict(),
            "optim.lr": 1.0e6,
            "optim.warmup_steps": 0,
            "run.total_steps": 8,
            "eval.every": 0,
        },
        "variants": {"a": {}},
        "seeds": [0],
        "executor": "local",
    }
    p = tmp_path / "blowup.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    r = subprocess.run(
        [sys.executable, "-m", "sdpg", "ablate", str(p)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert r.returncode == 1 and "not finite" in r.stderr, r.stderr[-3000:]
    db = sqlite3.connect(tmp_path / "outputs" / "blowup" / "mlflow.db")
    try:
        rows = db.execute(
            "select r.status, t.value from runs r join tags t on t.run_uuid = r.run_uuid where t.key = 'sdpg.error'"
        ).fetchall()
        parent = db.execute(
            "select r.status from runs r join tags t on t.run_uuid = r.run_uuid where t.key = 'sdpg.parent'"
        ).fetchall()
    finally:
        db.close()
    assert len(rows) == 1, rows
    status, error = rows[0]
    assert status == "FAILED" and error.startswith("TrainingFailed: training stopped at step "), error
    assert "not finite in 3 optimizer steps in a row" in error, error
    assert parent == [("FAILED",)], parent
