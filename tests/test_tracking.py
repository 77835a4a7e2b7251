"""MLflow tracking: concurrent writers, idempotent runs, no secrets."""

from __future__ import annotations

import multiprocessing as mp


from sdpg.orchestration import tracking

STEPS, KEYS = 25, ("train/reward", "train/entropy", "train/opd_kl", "eval/aime24/mean@32", "timing/step", "train/beta")


def _writer(uri: str, run_id: str, seed: int) -> None:
    sink = tracking.MlflowSink(uri, run_id)
    for step in range(1, STEPS + 1):
        sink.log({k: float(seed * 1000 + step + i) for i, k in enumerate(KEYS)}, step)
    sink.finish("FINISHED")


def test_sixteen_concurrent_writers_lose_no_metric(tmp_path):
    uri = tracking.default_uri(tmp_path)
    c = tracking.client(uri)
    exp = tracking.get_or_create_experiment(c, "concurrency")
    parent = tracking.ensure_parent_run(c, exp, "concurrency", "ablation", {})
    run_ids = [tracking.ensure_child_run(c, exp, parent, f"h{i}", f"r{i}", {"seed": i}, {"a.b": i}, "x: 1\n")[0]
               for i in range(16)]
    ctx = mp.get_context("spawn")
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
    exp = tracking.get_or_create_experiment(c, "e")
    parent = tracking.ensure_parent_run(c, exp, "e", "ablation", {})
    assert tracking.ensure_parent_run(c, exp, "e", "ablation", {}) == parent
    a, created_a = tracking.ensure_child_run(c, exp, parent, "abc", "r", {}, {}, "")
    b, created_b = tracking.ensure_child_run(c, exp, parent, "abc", "r", {}, {}, "")
    assert a == b and created_a and not created_b


def test_sink_skips_steps_already_logged(tmp_path):
    uri = tracking.default_uri(tmp_path)
    c = tracking.client(uri)
    exp = tracking.get_or_create_experiment(c, "e")
    rid = tracking.ensure_child_run(c, exp, tracking.ensure_parent_run(c, exp, "e", "a", {}), "h", "r", {}, {}, "")[0]
    s = tracking.MlflowSink(uri, rid)
    for step in (1, 2, 3):
        s.log({"train/reward": float(step)}, step)
    s2 = tracking.MlflowSink(uri, rid)  # a requeued job replays steps 2..3 after a checkpoint at 1
    for step in (2, 3, 4):
        s2.log({"train/reward": 10.0 + step}, step)
    hist = c.get_metric_history(rid, "train/reward")
    assert sorted((m.step, m.value) for m in hist) == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0)]


def test_redact_credentials_and_secret_env(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijkl")
    assert tracking.redact("postgresql://user:pw@db.example:5432/optuna") == "postgresql://***@db.example:5432/optuna"
    assert tracking.redact("token is hf_abcdefghijkl") == "token is ***"
    assert tracking.redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_metric_names_round_trip():
    assert tracking.to_mlflow_key("eval/aime24/mean@32") == "eval/aime24/mean_at_32"
    assert tracking.from_mlflow_key("eval/aime24/mean_at_32") == "eval/aime24/mean@32"
