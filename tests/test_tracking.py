"""MLflow tracking: concurrent writers, idempotent runs, no secrets."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from sdpg.orchestration import tracking

STEPS, KEYS = 25, ("train/reward", "train/entropy", "train/opd_kl", "eval/aime24/mean@32", "timing/step", "train/beta")


def _writer(uri: str, run_id: str, seed: int) -> None:
    sink = tracking.MlflowSink(uri, run_id)
    for step in range(1, STEPS + 1):
        sink.log({k: float(seed * 1000 + step + i) for i, k in enumerate(KEYS)}, step)
    sink.finish("FINISHED")


@pytest.mark.slow
def test_sixteen_concurrent_writers_lose_no_metric(tmp_path):
    uri = tracking.default_uri(tmp_path)
    c = tracking.client(uri)
    exp = tracking.get_or_create_experiment(c, "concurrency", (tmp_path / "artifacts").as_uri())
    parent = tracking.ensure_parent_run(c, exp, "concurrency", "ablation", {})
    run_ids = [
        tracking.ensure_child_run(c, exp, parent, f"h{i}", f"r{i}", {"seed": i}, {"a.b": i}, "x: 1\n")[0] for i in range(16)
    ]
    # fresh processes forked from a server that imported MLflow once: the 16 writers start together (more overlap
    # than 16 spawned interpreters, each 2 s into its imports) and no engine or connection is inherited
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["sdpg.orchestration.tracking", "mlflow"])
    procs = [ctx.Process(target=_writer, args=(uri, rid, i)) for i, rid in enumerate(run_ids)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    total = 0
    for i, rid in enumerate(run_ids):
        for j, k in enumerate(KEYS):
            hist = c.get_metric_history(rid, tracking.to_mlflow_key(k))
            assert sorted(m.step for m in hist) == list(range(1, STEPS + 1)), (i, k)
            assert {m.value for m in hist} == {float(i * 1000 + s + j) for s in range(1, STEPS + 1)}
            total += len(hist)
        assert c.get_run(rid).info.status == "FINISHED"
    assert total == 16 * STEPS * len(KEYS)


def test_child_run_is_found_again_by_hash(tmp_path):
    uri = tracking.default_uri(tmp_path)
    c = tracking.client(uri)
    exp = tracking.get_or_create_experiment(c, "e", (tmp_path / "artifacts").as_uri())
    parent = tracking.ensure_parent_run(c, exp, "e", "ablation", {})
    assert tracking.ensure_parent_run(c, exp, "e", "ablation", {}) == parent
    a, created_a = tracking.ensure_child_run(c, exp, parent, "abc", "r", {}, {}, "")
    b, created_b = tracking.ensure_child_run(c, exp, parent, "abc", "r", {}, {}, "")
    assert a == b and created_a and not created_b


def test_sink_skips_steps_already_logged(tmp_path):
    uri = tracking.default_uri(tmp_path)
    c = tracking.client(uri)
    exp = tracking.get_or_create_experiment(c, "e", (tmp_path / "artifacts").as_uri())
    rid = tracking.ensure_child_run(c, exp, tracking.ensure_parent_run(c, exp, "e", "a", {}), "h", "r", {}, {}, "")[0]
    s = tracking.MlflowSink(uri, rid)
    for step in (1, 2, 3):
        s.log({"train/reward": float(step)}, step)
    s2 = tracking.MlflowSink(uri, rid)  # a requeued job replays steps 2..3 after a checkpoint at 1
    for step in (2, 3, 4):
        s2.log({"train/reward": 10.0 + step}, step)
    hist = c.get_metric_history(rid, "train/reward")
    assert sorted((m.step, m.value) for m in hist) == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0)]


def test_sink_dedupes_every_key_not_only_the_reward(tmp_path):
    """A run that died after its step-0 evaluation and before its first checkpoint evaluates step 0 again:
    no key gets a second value at step 0, whether or not ``train/reward`` was logged."""
    uri = tracking.default_uri(tmp_path)
    c = tracking.client(uri)
    exp = tracking.get_or_create_experiment(c, "e", (tmp_path / "artifacts").as_uri())
    rid = tracking.ensure_child_run(c, exp, tracking.ensure_parent_run(c, exp, "e", "a", {}), "h", "r", {}, {}, "")[0]
    tracking.MlflowSink(uri, rid).log({"eval/b/mean@2": 0.5, "timing/eval": 1.0}, 0)
    again = tracking.MlflowSink(uri, rid)
    again.log({"eval/b/mean@2": 0.5, "timing/eval": 2.0}, 0)
    again.log({"train/reward": 1.0, "eval/b/mean@2": 0.75}, 1)
    history = {
        k: sorted((m.step, m.value) for m in c.get_metric_history(rid, k))
        for k in ("eval/b/mean_at_2", "timing/eval", "train/reward")
    }
    assert history == {"eval/b/mean_at_2": [(0, 0.5), (1, 0.75)], "timing/eval": [(0, 1.0)], "train/reward": [(1, 1.0)]}


def test_redact_credentials_and_secret_env(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijkl")
    assert tracking.redact("postgresql://user:pw@db.example:5432/optuna") == "postgresql://***@db.example:5432/optuna"
    assert tracking.redact("token is hf_abcdefghijkl") == "token is ***"
    assert tracking.redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_metric_names_round_trip():
    assert tracking.to_mlflow_key("eval/aime24/mean@32") == "eval/aime24/mean_at_32"
    assert tracking.from_mlflow_key("eval/aime24/mean_at_32") == "eval/aime24/mean@32"


def test_redact_survives_an_environment_changed_by_another_thread(monkeypatch):
    # MLflow's telemetry thread sets and pops variables while runs are logged (issue 13:
    # KeyError('_MLFLOW_TELEMETRY_SESSION_ID')); redaction reads a snapshot of the environment
    import os
    import threading

    monkeypatch.setenv("MY_API_KEY", "sk-secret-123456")
    stop = threading.Event()

    def churn():
        i = 0
        while not stop.is_set():
            os.environ[f"_SDPG_CHURN_{i % 50}"] = "x"
            os.environ.pop(f"_SDPG_CHURN_{(i + 25) % 50}", None)
            i += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(3000):
            assert tracking.redact("key sk-secret-123456 at http://u:p@h/x") == "key *** at http://***@h/x"
    finally:
        stop.set()
        t.join()
        for i in range(50):
            os.environ.pop(f"_SDPG_CHURN_{i}", None)


@pytest.mark.slow
def test_failed_run_has_error_tag_traceback_artifact_and_ends_its_parent(tmp_path, monkeypatch):
    """A job that raises: its run FAILED with the error as a tag and the traceback as an artifact
    (stored beside mlflow.db, not in ./mlruns); the parent ends with it."""
    from sdpg.orchestration.core import Experiment
    from sdpg.orchestration.launch import TrainJob
    from sdpg.training.config import load_config

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: e\n")
    exp = Experiment(tracking.default_uri(out), "e", out, "ablation", "e", spec).open()
    cfg = load_config(None, [f"run.output_dir={out / 'runs' / 'r'}"])
    (out / "runs").mkdir()
    (out / "runs" / "r").write_text("a file where the run's folder should be\n")
    rid = exp.child(cfg.effective().config_hash(), "r", cfg, {"variant": "v"})
    job = TrainJob(cfg.resolved(), exp.uri, rid, exp.parent_id)
    from sdpg.fsio import WriteRefused

    try:
        job()
    except WriteRefused:  # the file where the run's folder should be, refused in one sentence
        pass
    else:
        raise AssertionError("the job should have raised")
    c = exp.client
    run = c.get_run(rid)
    assert run.info.status == "FAILED"
    assert run.data.tags["sdpg.error"].startswith("WriteRefused")
    art = Path(run.info.artifact_uri.removeprefix("file://"))
    assert art.is_relative_to(out), art  # beside the spec's mlflow.db
    text = (art / "error.txt").read_text()
    assert "Traceback" in text and "WriteRefused" in text
    assert (art / "config.yaml").is_file() and not (tmp_path / "mlruns").exists()
    assert c.get_run(exp.parent_id).info.status == "FAILED"
    assert c.get_run(exp.parent_id).info.end_time is not None


def test_paths_under_the_working_directory_are_not_masked(monkeypatch, tmp_path):
    # the shell's PWD is the current folder, not a password: runs logged from a project folder
    # must keep their output paths
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.setenv("OLDPWD", str(tmp_path / "before"))
    text = f"output_dir {tmp_path}/outputs/quickstart/runs/a and {tmp_path}/before/x"
    assert tracking.redact(text) == text


@pytest.mark.parametrize(
    "line,literal",
    [
        ("module load cuda/12.1", False),
        ("export HF_TOKEN=$HF_TOKEN", False),
        ("export HF_TOKEN=${HF_TOKEN}", False),
        ('export WANDB_API_KEY="$(cat ~/.wandb_key)"', False),
        ("export PASSWORD=`cat ~/.pw`", False),
        ("export MLFLOW_TRACKING_URI=postgresql://$DB_USER:$DB_PASS@db/ml", False),
        ("export WANDB_API_KEY=abc123def456", True),
        ("export HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz1234", True),
        ("export MLFLOW_TRACKING_URI=postgresql://me:pw4321@db/ml", True),
        ("echo s3cr3t-value-42", True),  # the value of a secret-named variable, written out
    ],
)
def test_setup_lines_refuse_literal_secrets_not_references(line, literal):
    from sdpg.orchestration.specs import SlurmProfile
    from sdpg.training.redact import holds_literal_secret

    env = {"MY_SERVICE_TOKEN": "s3cr3t-value-42", "PATH": "/usr/bin"}
    assert holds_literal_secret(line, env) is literal
    if not literal:
        assert SlurmProfile(setup=[line]).setup == [line]
