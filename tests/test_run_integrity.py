"""Run integrity (issue 12): a run that dies anywhere resumes to the same metrics, every step once; a corrupt
newest checkpoint falls back to the older one; a non-finite update is never applied and ends the run as failed."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY

from sdpg.training.checkpoint import checkpoints, load_checkpoint
from sdpg.training.sinks import default_sinks
from sdpg.training.trainer import TrainingFailed, train

RUN = ["run.total_steps=4", "eval.every=2", "run.checkpoint_every=2", "run.keep_checkpoints=2", "algo.method=sdpg_ufkl"]


class Crash(Exception):
    pass


class CrashAt:
    """A sink after the JSONL sink that raises once step ``step`` is logged: the run dies there, as a killed
    process would, with the step in ``metrics.jsonl`` and no checkpoint of it."""

    def __init__(self, step: int):
        self.step = step

    def log(self, metrics, step):
        if step == self.step:
            raise Crash(step)

    def close(self):
        pass


def rows(out) -> list[dict]:
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if not k.startswith("timing/")} for x in lines]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_built):
    from sdpg.training.config import load_config

    out = tmp_path_factory.mktemp("integrity") / "full"
    train(load_config(None, TINY + RUN + [f"run.output_dir={out}"]))
    return rows(out)


def _assert_same(reference, out):
    got = rows(out)
    assert [r["step"] for r in got] == [0, 1, 2, 3, 4]  # every step exactly once
    assert got == reference


@pytest.mark.slow
@pytest.mark.parametrize("crash_step", [0, 1, 3], ids=["after-step0-eval", "before-first-checkpoint", "between-checkpoints"])
def test_a_run_that_dies_resumes_without_duplicates(tiny_config, uninterrupted, crash_step):
    cfg = tiny_config(*RUN, out=f"crash{crash_step}")
    with pytest.raises(Crash):
        train(cfg, sinks=default_sinks(Path(cfg.run.output_dir), 0, 4) + [CrashAt(crash_step)])
    assert rows(cfg.run.output_dir)[-1]["step"] == crash_step  # the dead run logged the step
    assert train(cfg)["status"] == "finished"
    _assert_same(uninterrupted, cfg.run.output_dir)


@pytest.mark.slow
def test_a_truncated_newest_checkpoint_falls_back_to_the_older_one(tiny_config, uninterrupted, capfd):
    cfg = tiny_config(*RUN, out="truncated")
    assert train(cfg, stop_after_step=3)["status"] == "interrupted"
    older, newest = checkpoints(cfg.run.output_dir)
    assert newest.name == "step_0000003.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    capfd.readouterr()
    assert train(cfg)["status"] == "finished"
    err = capfd.readouterr().err
    assert f"skipped checkpoint {newest} cannot be read" in err
    assert f"resumed from {older} at step 2" in err
    assert newest.with_name(newest.name + ".corrupt").exists()
    _assert_same(uninterrupted, cfg.run.output_dir)


@pytest.mark.slow
def test_a_killed_process_resumes_without_duplicates(tmp_path, uninterrupted):
    """A real SIGKILL of ``sdpg-train`` right after its step-0 evaluation was logged (before any checkpoint)."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sdpg", "train", *TINY, *RUN, f"run.output_dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        metrics = out / "metrics.jsonl"
        while proc.poll() is None and not (metrics.exists() and metrics.read_text().strip()):
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not checkpoints(out)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same(uninterrupted, out)


@pytest.mark.slow
def test_non_finite_updates_are_skipped_and_end_the_run(tiny_config, tmp_path, monkeypatch):
    """lr = 1e6 on the embedded task, run as an orchestrated job: the stated sentence, result.json status failed
    with it, the MLflow run FAILED with it as its error, and a last-good checkpoint whose weights are finite."""
    from sdpg.orchestration import tracking
    from sdpg.orchestration.core import Experiment
    from sdpg.orchestration.launch import TrainJob

    monkeypatch.chdir(tmp_path)
    cfg = tiny_config("optim.lr=1e6", "optim.warmup_steps=0", "run.total_steps=8", "eval.every=0", out="nan")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: e\n")
    exp = Experiment(tracking.default_uri(tmp_path / "store"), "e", tmp_path / "store", "ablation", "e", spec).open()
    rid = exp.child(cfg.effective().config_hash(), "nan", cfg, {"variant": "nan"})
    with pytest.raises(TrainingFailed) as failed:
        TrainJob(cfg.resolved(), exp.uri, rid, exp.parent_id)()
    reason = failed.value.reason
    assert reason.startswith("training stopped at step ")
    assert "not finite in 3 optimizer steps in a row (optim.max_nonfinite_steps=3), none of them applied" in reason
    result = json.loads((Path(cfg.run.output_dir) / "result.json").read_text())
    assert result["status"] == "failed" and result["reason"] == reason
    run = exp.client.get_run(rid)
    assert run.info.status == "FAILED" and reason in run.data.tags["sdpg.error"]
    logged = rows(cfg.run.output_dir)
    assert sum(r["train/nonfinite_skipped"] for r in logged) == 3
    assert not all(math.isfinite(r["train/grad_norm"]) for r in logged)
    (last_good,) = checkpoints(cfg.run.output_dir)
    assert str(last_good) in reason and f"step_{result['step']:07d}" in last_good.name
    state = load_checkpoint(last_good)
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values())
