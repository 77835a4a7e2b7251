"""Every question about a submitted job goes through sdpg.orchestration.scheduler: ``sdpg-ablate status`` and
``cancel`` say in one line when SLURM cannot be asked and exit non-zero, instead of showing states from nothing.

The fast tests plant ``squeue`` / ``scancel`` scripts first on PATH (a controller that does not answer, one
that knows none of the jobs, one that does); the slow ones run the real commands against the dev cluster."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_overrides_dict

from sdpg.commands import ablate as ablate_command
from sdpg.orchestration import ablate, scheduler
from sdpg.orchestration.core import active_jobs

DOWN = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"


def plant(bin_dir: Path, name: str, stdout: str = "", stderr: str = "", code: int = 0) -> Path:
    """An executable ``name`` in ``bin_dir`` that prints ``stdout`` / ``stderr`` and exits ``code``; it
    records its arguments beside itself."""
    bin_dir.mkdir(exist_ok=True)
    p = bin_dir / name
    p.write_text(
        f"#!/bin/sh\necho \"$@\" >> \"{bin_dir}/{name}.args\"\nprintf '%s' '{stdout}'\nprintf '%s' '{stderr}' >&2\nexit {code}\n"
    )
    p.chmod(0o755)
    return p


@pytest.fixture
def plan_with_slurm_jobs(tmp_path, monkeypatch):
    """A two-run spec whose jobs.json records SLURM jobs 4242_0 and 4242_1."""
    monkeypatch.chdir(tmp_path)
    spec = {
        "name": "sch",
        "base": "embedded",
        "overrides": tiny_overrides_dict(),
        "variants": {"a": {}, "b": {"algo.beta": 0.2}},
        "seeds": [0],
        "executor": "local",
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    plan = ablate.load_plan(path)
    plan.output_dir.mkdir(parents=True)
    jobs = {}
    for i, r in enumerate(plan.distinct):
        job = {"job_id": f"4242_{i}", "executor": "slurm", "host": "x", "submitted_at": 0}
        jobs[r.hash] = {**job, "jobs": [job]}
    (plan.output_dir / "jobs.json").write_text(json.dumps(jobs))
    return path, plan


def _path_with(monkeypatch, bin_dir: Path) -> None:
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_status_with_a_scheduler_that_cannot_be_asked_fails_in_one_line(tmp_path, monkeypatch, capsys, plan_with_slurm_jobs):
    spec, _ = plan_with_slurm_jobs
    plant(tmp_path / "bin", "squeue", stderr=DOWN, code=1)
    _path_with(monkeypatch, tmp_path / "bin")
    assert ablate_command.main(["status", str(spec)]) == 1
    out, err = capsys.readouterr()
    assert out == ""  # no table of states made up from an empty answer
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    expected = r"error: cannot ask SLURM \(squeue\) about jobs 4242_0, 4242_1: .*Unable to contact slurm controller.*"
    assert re.fullmatch(expected, lines[0]), lines[0]


def test_status_without_squeue_fails_in_one_line(tmp_path, monkeypatch, capsys, plan_with_slurm_jobs):
    spec, _ = plan_with_slurm_jobs
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert ablate_command.main(["status", str(spec)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("error: cannot ask SLURM (squeue) about jobs 4242_0, 4242_1: no squeue command"), err


def test_status_shows_the_states_the_scheduler_gives(tmp_path, monkeypatch, capsys, plan_with_slurm_jobs):
    spec, _ = plan_with_slurm_jobs
    plant(tmp_path / "bin", "squeue", stdout="4242_0 RUNNING\n4242_1 PENDING\n")
    _path_with(monkeypatch, tmp_path / "bin")
    assert ablate_command.main(["status", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "running (4242_0)" in out and "pending (4242_1)" in out
    args = (tmp_path / "bin" / "squeue.args").read_text().split()
    assert "-r" in args and "4242_0,4242_1" in args  # one line per array task, both jobs asked at once


def test_jobs_the_scheduler_no_longer_knows_are_an_answer(tmp_path, monkeypatch, capsys, plan_with_slurm_jobs):
    spec, _ = plan_with_slurm_jobs
    plant(tmp_path / "bin", "squeue", stderr="slurm_load_jobs error: Invalid job id specified", code=1)
    _path_with(monkeypatch, tmp_path / "bin")
    assert ablate_command.main(["status", str(spec)]) == 0
    out = capsys.readouterr().out
    assert out.count(" new ") == 2 and "running" not in out  # nothing ran: no run claimed running
    assert scheduler.slurm_active(["4242_0"]) == set()


def test_cancel_refused_by_the_scheduler_marks_nothing(tmp_path, monkeypatch, capsys, plan_with_slurm_jobs):
    spec, plan = plan_with_slurm_jobs
    plant(tmp_path / "bin", "scancel", stderr="scancel: error: Unable to contact slurm controller", code=1)
    _path_with(monkeypatch, tmp_path / "bin")
    assert ablate_command.main(["cancel", str(spec)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: cannot cancel SLURM jobs 4242_0, 4242_1 (scancel)")
    assert not (plan.output_dir / "mlflow.db").exists()  # no MLflow run was marked KILLED


def test_resubmission_check_raises_when_the_scheduler_cannot_be_asked(tmp_path, monkeypatch, plan_with_slurm_jobs):
    _, plan = plan_with_slurm_jobs
    plant(tmp_path / "bin", "squeue", stderr=DOWN, code=1)
    _path_with(monkeypatch, tmp_path / "bin")
    jobs = json.loads((plan.output_dir / "jobs.json").read_text())
    with pytest.raises(scheduler.SchedulerUnavailable, match="Unable to contact"):
        active_jobs(jobs, list(jobs))
    # a local job is asked of the process table: this test's own process is no submitit worker
    assert not scheduler.is_running("local", str(os.getpid()), None)
    assert not scheduler.is_running("local", "1", "another-host")


# --------------------------------------------------------------------------------------------
# The real commands on the dev cluster
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_status_and_cancel_on_the_dev_cluster(dev_cluster, tmp_path, monkeypatch, capsys, plan_with_slurm_jobs):
    spec, plan = plan_with_slurm_jobs
    sub = subprocess.run(
        ["sbatch", "--parsable", "--array=0-1", "-o", str(tmp_path / "j%a.out"), "--wrap", "sleep 120"],
        capture_output=True,
        text=True,
        check=True,
    )
    job = sub.stdout.strip().split(";")[0]
    jobs = json.loads((plan.output_dir / "jobs.json").read_text())
    for i, h in enumerate(jobs):
        entry = {**jobs[h]["jobs"][0], "job_id": f"{job}_{i}"}
        jobs[h] = {**entry, "jobs": [entry]}
    (plan.output_dir / "jobs.json").write_text(json.dumps(jobs))
    deadline = time.time() + 60
    while len(scheduler.slurm_states([f"{job}_0", f"{job}_1"])) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert ablate_command.main(["status", str(spec)]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"(running|pending) \({job}_0\)", out) and re.search(rf"(running|pending) \({job}_1\)", out), out
    assert set(active_jobs(jobs, list(jobs)).values()) == {f"{job}_0", f"{job}_1"}

    # the same cluster, asked through a configuration whose controller port nobody listens on
    conf = Path(dev_cluster["SLURM_CONF"]).read_text()
    broken = tmp_path / "slurm.conf"
    broken.write_text(re.sub(r"(?m)^SlurmctldPort=.*$", "", conf) + "\nSlurmctldPort=1\n")
    monkeypatch.setenv("SLURM_CONF", str(broken))
    assert ablate_command.main(["status", str(spec)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: cannot ask SLURM (squeue) about jobs"), err

    monkeypatch.setenv("SLURM_CONF", dev_cluster["SLURM_CONF"])
    assert ablate_command.main(["cancel", str(spec)]) == 0
    deadline = time.time() + 60
    while scheduler.slurm_active([f"{job}_0", f"{job}_1"]) and time.time() < deadline:
        time.sleep(0.5)
    assert not scheduler.slurm_active([f"{job}_0", f"{job}_1"])
