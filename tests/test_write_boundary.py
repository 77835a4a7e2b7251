"""Writes never follow a symbolic link: one case per writer, each with a link planted at the path it writes.

A link where sdpg writes is what a careless shared outputs folder (or another user on a shared cluster
filesystem) leaves behind: following it overwrites whatever file the link points to. Every case plants a
link to a victim file (or folder) outside the output folder and checks that the victim is byte-for-byte
unchanged, that the link is still there, and (for the console scripts) that the command said so in one line
with exit code 2. The cases were written from the issue's list of writers, before the code that refuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
import types
from pathlib import Path

import pytest
import yaml
from test_hostile_input import run_in_process, snapshot

from sdpg import fsio

VICTIM_TEXT = "precious: do not overwrite\n"


def _victim(tmp_path: Path, name: str = "victim.txt") -> Path:
    v = tmp_path / "elsewhere" / name
    v.parent.mkdir(parents=True, exist_ok=True)
    v.write_text(VICTIM_TEXT)
    return v


def _plant(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    return link


def _intact(victim: Path, link: Path) -> None:
    assert victim.read_text() == VICTIM_TEXT, f"{victim} was overwritten through {link}"
    assert link.is_symlink(), f"{link} was replaced"


def _one_line_exit_2(r, needle: str) -> None:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1, r.stderr[-3000:]
    assert needle in lines[0] and "link" in lines[0], lines[0]
    assert "Traceback" not in r.stderr


# --------------------------------------------------------------------------------------------- fsio itself
@pytest.mark.parametrize("how", ["write_text", "write_bytes", "atomic_open", "open_append", "open_lock"])
def test_every_way_to_write_refuses_a_link_at_the_file(tmp_path, how):
    victim = _victim(tmp_path)
    link = _plant(tmp_path / "out" / "f.txt", victim)
    calls = {
        "write_text": lambda: fsio.write_text(link, "x"),
        "write_bytes": lambda: fsio.write_bytes(link, b"x"),
        "atomic_open": lambda: fsio.atomic_open(link, "wb").__enter__(),
        "open_append": lambda: fsio.open_append(link),
        "open_lock": lambda: fsio.open_lock(link),
    }
    with pytest.raises(fsio.LinkRefused, match="f.txt"):
        calls[how]()
    _intact(victim, link)
    assert sorted(os.listdir(link.parent)) == ["f.txt"], "a temporary file was left behind"


def test_a_dangling_link_is_not_followed_to_create_its_target(tmp_path):
    target = tmp_path / "elsewhere" / "created-through-link"
    link = _plant(tmp_path / "out" / "f.txt", target)
    for call in (lambda: fsio.write_text(link, "x"), lambda: fsio.open_append(link), lambda: fsio.open_lock(link)):
        with pytest.raises(fsio.LinkRefused):
            call()
    assert not target.exists() and not target.parent.exists()


def test_folders_below_the_root_are_never_links_above_it_they_may_be(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "outputs"
    _plant(root / "spec" / "runs", elsewhere)
    with pytest.raises(fsio.LinkRefused, match="runs"):
        fsio.ensure_dir(root / "spec" / "runs" / "r1", root=root)
    with pytest.raises(fsio.LinkRefused):
        fsio.write_text(root / "spec" / "runs" / "r1" / "x.txt", "x", root=root)
    assert list(elsewhere.iterdir()) == []
    # a root the user named may itself be a link (a scratch mount): followed
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    _plant(tmp_path / "mine", scratch)
    fsio.write_text(tmp_path / "mine" / "a" / "b.txt", "ok", root=tmp_path / "mine")
    assert (scratch / "a" / "b.txt").read_text() == "ok"


def test_whole_file_writes_are_atomic_and_redacted(tmp_path):
    p = tmp_path / "f.json"
    fsio.write_text(p, "old")
    with pytest.raises(RuntimeError), fsio.atomic_open(p) as f:
        f.write("half")
        raise RuntimeError("killed mid-write")
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]
    fsio.write_json(p, {"uri": "postgresql://u:pa#ss@db/x", "t": "hf_" + "a" * 30})
    text = p.read_text()
    assert "pa#ss" not in text and "hf_" + "a" * 30 not in text


def test_special_files_and_system_folders_are_refused(tmp_path):
    with pytest.raises(fsio.LinkRefused, match="/dev/full"):
        fsio.check_writable_target("/dev/full")
    with pytest.raises(fsio.WriteRefused, match="/proc"):
        fsio.check_writable_target("/proc/x")
    fsio.check_writable_target("/dev/shm/sdpg-never-made")  # a scratch place some clusters use


def test_home_and_variables_in_paths_are_expanded_or_refused(monkeypatch):
    monkeypatch.setenv("SDPG_TEST_SCRATCH", "/scratch/me")
    monkeypatch.delenv("SDPG_TEST_UNSET", raising=False)
    assert fsio.expand_path("~/x") == Path.home() / "x"
    assert fsio.expand_path("$SDPG_TEST_SCRATCH/runs") == Path("/scratch/me/runs")
    assert fsio.expand_path("${SDPG_TEST_SCRATCH}/runs") == Path("/scratch/me/runs")
    with pytest.raises(fsio.WriteRefused, match=r"SDPG_TEST_UNSET is not set"):
        fsio.expand_path("$SDPG_TEST_UNSET/runs", "run.output_dir")


# --------------------------------------------------------------------------------------------- the trainer's files
RUN_FILES = ["config.yaml", "result.json", "metrics.jsonl", ".sdpg-run.lock", "checkpoints/step_0000001.pt"]


@pytest.mark.parametrize("name", RUN_FILES)
def test_sdpg_train_refuses_a_link_in_its_run_folder_and_changes_nothing(tmp_path, capfd, name):
    victim = _victim(tmp_path)
    run = tmp_path / "work" / "r"
    link = _plant(run / name, victim)
    before = snapshot(tmp_path)
    r = run_in_process(capfd, "sdpg-train", [f"run.output_dir={run}", "run.total_steps=1"], tmp_path / "work")
    _one_line_exit_2(r, name.split("/")[-1])
    _intact(victim, link)
    assert snapshot(tmp_path) == before, "the refused command changed the folder"


def test_sdpg_train_refuses_a_checkpoints_folder_that_is_a_link(tmp_path, capfd):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = tmp_path / "work" / "r"
    _plant(run / "checkpoints", elsewhere)
    r = run_in_process(capfd, "sdpg-train", [f"run.output_dir={run}"], tmp_path / "work")
    _one_line_exit_2(r, "checkpoints")
    assert list(elsewhere.iterdir()) == []


def _fake_run(out: Path):
    return types.SimpleNamespace(out=out, main_rank=True, rank=0, world=1)


def test_result_json_written_during_a_run_refuses_a_link(tmp_path):
    from sdpg.training.trainer import write_result

    victim = _victim(tmp_path)
    link = _plant(tmp_path / "r" / "result.json", victim)
    with pytest.raises(fsio.LinkRefused, match="result.json"):
        write_result(_fake_run(tmp_path / "r"), "finished", 1, {})
    _intact(victim, link)


def test_checkpoint_save_refuses_a_link_at_the_checkpoint_and_at_its_folder(tmp_path):
    from sdpg.training.checkpoint import save_checkpoint

    victim = _victim(tmp_path)
    link = _plant(tmp_path / "r" / "checkpoints" / "step_0000003.pt", victim)
    with pytest.raises(fsio.LinkRefused, match="step_0000003.pt"):
        save_checkpoint(tmp_path / "r", 3, {"step": 3}, keep=1)
    _intact(victim, link)
    assert sorted(os.listdir(link.parent)) == ["step_0000003.pt"], "a temporary checkpoint was left behind"
    elsewhere = tmp_path / "elsewhere-dir"
    elsewhere.mkdir()
    _plant(tmp_path / "r2" / "checkpoints", elsewhere)
    with pytest.raises(fsio.LinkRefused, match="checkpoints"):
        save_checkpoint(tmp_path / "r2", 3, {"step": 3}, keep=1)
    assert list(elsewhere.iterdir()) == []


def test_metrics_jsonl_refuses_a_link(tmp_path):
    from sdpg.training.sinks import JsonlSink

    victim = _victim(tmp_path)
    link = _plant(tmp_path / "r" / "metrics.jsonl", victim)
    with pytest.raises(fsio.LinkRefused, match="metrics.jsonl"):
        JsonlSink(link, resume_step=None)
    with pytest.raises(fsio.LinkRefused, match="metrics.jsonl"):
        JsonlSink(link, resume_step=0)  # the rewind rewrites the file
    _intact(victim, link)


@pytest.mark.parametrize("lock", [".sdpg-run.lock", ".sdpg-submit.lock", ".sdpg-store.lock"])
def test_lock_files_refuse_a_link(tmp_path, lock):
    from sdpg.training.locks import file_lock

    victim = _victim(tmp_path)
    link = _plant(tmp_path / "o" / lock, victim)
    with pytest.raises(fsio.LinkRefused, match=lock), file_lock(link, wait=False):
        pass
    _intact(victim, link)


def test_jobs_json_refuses_a_link(tmp_path):
    from sdpg.orchestration.core import write_jobs

    victim = _victim(tmp_path)
    link = _plant(tmp_path / "o" / "jobs.json", victim)
    with pytest.raises(fsio.LinkRefused, match="jobs.json"):
        write_jobs(link, {"abc": {"jobs": []}})
    _intact(victim, link)


def test_embedded_cache_lock_refuses_a_link(tmp_path, monkeypatch):
    from sdpg.training import embedded

    victim = _victim(tmp_path)
    link = _plant(tmp_path / "cache" / ".embedded-x.lock", victim)
    with pytest.raises(fsio.LinkRefused), embedded._file_lock(link):
        pass
    _intact(victim, link)


# --------------------------------------------------------------------------------------------- sdpg-ablate
def _ablate_spec(tmp_path: Path, **extra) -> Path:
    spec = {
        "name": "lk",
        "base": "embedded",
        "overrides": {"run.total_steps": 1},
        "variants": {"a": {}},
        "seeds": [0],
        "executor": "local",
        "output_dir": str(tmp_path / "outputs" / "lk"),
        **extra,
    }
    p = tmp_path / "lk.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


@pytest.mark.parametrize("name", [".sdpg-submit.lock", ".sdpg-store.lock", "jobs.json"])
def test_sdpg_ablate_refuses_a_link_in_the_spec_folder(tmp_path, capfd, name):
    spec = _ablate_spec(tmp_path)
    victim = _victim(tmp_path)
    link = _plant(tmp_path / "outputs" / "lk" / name, victim)
    r = run_in_process(capfd, "sdpg-ablate", [spec, "--no-wait"], tmp_path)
    _one_line_exit_2(r, name)
    _intact(victim, link)


def test_sdpg_ablate_refuses_a_run_folder_that_is_a_link(tmp_path, capfd):
    from sdpg.orchestration.ablate import load_plan

    spec = _ablate_spec(tmp_path)
    plan = load_plan(spec)
    elsewhere = tmp_path / "elsewhere-run"
    elsewhere.mkdir()
    link = _plant(Path(plan.runs[0].config.run.output_dir), elsewhere)
    r = run_in_process(capfd, "sdpg-ablate", [spec, "--no-wait"], tmp_path)
    _one_line_exit_2(r, link.name)
    assert list(elsewhere.iterdir()) == [] and link.is_symlink()
    assert not (tmp_path / "outputs" / "lk" / "jobs.json").exists(), "a job was submitted"


# --------------------------------------------------------------------------------------------- sdpg-sweep
SWEEP = {
    "name": "sk",
    "base": "embedded",
    "overrides": {"run.total_steps": 1},
    "space": {"algo.beta": {"type": "float", "low": 0.001, "high": 1.0, "log": True}},
    "objective": {"metric": "eval/embedded/mean@4"},
    "n_trials": 2,
}


def _sweep_with_a_study(tmp_path: Path) -> tuple[Path, Path]:
    """A sweep spec and its journal holding one complete trial, made with Optuna directly (no training)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    out = tmp_path / "outputs" / "sk"
    out.mkdir(parents=True)
    p = tmp_path / "sk.yaml"
    p.write_text(yaml.safe_dump({**SWEEP, "output_dir": str(out)}))
    journal = out / "optuna.journal"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.create_study(study_name="sk", storage=JournalStorage(JournalFileBackend(str(journal))), direction="maximize")
    st.optimize(lambda t: t.suggest_float("algo.beta", 0.001, 1.0, log=True), n_trials=1)
    return p, journal


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_sweep_export_refuses_a_link_and_a_device_at_out(tmp_path, capfd):
    spec, journal = _sweep_with_a_study(tmp_path)
    victim = _victim(tmp_path)
    link = _plant(tmp_path / "best.yaml", victim)
    before = _digest(journal)
    r = run_in_process(capfd, "sdpg-sweep", ["export", spec, "--out", link], tmp_path)
    _one_line_exit_2(r, "best.yaml")
    _intact(victim, link)
    r = run_in_process(capfd, "sdpg-sweep", ["export", spec, "--out", "/dev/full"], tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "/dev/full" in r.stderr, r.stderr
    assert _digest(journal) == before


def test_sweep_status_and_export_do_not_write_the_journal(tmp_path, capfd):
    spec, journal = _sweep_with_a_study(tmp_path)
    before = snapshot(tmp_path / "outputs")
    r = run_in_process(capfd, "sdpg-sweep", ["status", spec], tmp_path)
    assert r.returncode == 0, r.stderr
    assert snapshot(tmp_path / "outputs") == before, "status wrote to the study's folder"
    r = run_in_process(capfd, "sdpg-sweep", ["export", spec, "--out", tmp_path / "best.yaml"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load((tmp_path / "best.yaml").read_text())["variants"]["best"]
    assert snapshot(tmp_path / "outputs") == before, "export wrote to the study's folder"


def test_sweep_ask_lock_refuses_a_link(tmp_path):
    from sdpg.orchestration.sweep.study import _ask_lock

    victim = _victim(tmp_path)
    link = _plant(tmp_path / "o" / ".ask.lock", victim)
    with pytest.raises(fsio.LinkRefused), _ask_lock(link.parent):
        pass
    _intact(victim, link)


# --------------------------------------------------------------------------------------------- reports
def test_report_tables_and_index_refuse_links(tmp_path):
    from sdpg.reporting import build

    victim = _victim(tmp_path)
    out = tmp_path / "rep"
    link = _plant(out / "index.md", victim)
    with pytest.raises(fsio.LinkRefused, match="index.md"):
        fsio.write_text(out / "index.md", "# report")
    elsewhere = tmp_path / "elsewhere-tables"
    elsewhere.mkdir()
    _plant(out / "tables", elsewhere)
    with pytest.raises(fsio.LinkRefused, match="tables"):
        fsio.ensure_dir(out / "tables", root=out)
    _intact(victim, link)
    assert list(elsewhere.iterdir()) == []
    # render_folder rewrites index.html from index.md: a link there is refused too
    page_victim = _victim(tmp_path, "page.html")
    ok = tmp_path / "rep2"
    ok.mkdir()
    (ok / "index.md").write_text("# r\n")
    plink = _plant(ok / "index.html", page_victim)
    with pytest.raises(fsio.LinkRefused, match="index.html"):
        build.render_folder(ok)
    _intact(page_victim, plink)


def test_figures_refuse_a_link(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    victim = _victim(tmp_path)
    link = _plant(tmp_path / "figures" / "curve.png", victim)
    fig = plt.figure()
    try:
        with pytest.raises(fsio.LinkRefused, match="curve.png"):
            fsio.save_figure(fig, tmp_path / "figures" / "curve")
    finally:
        plt.close(fig)
    _intact(victim, link)


def test_rehearsal_report_refuses_a_link(tmp_path):
    from sdpg.orchestration.rehearse import prepare_folder

    elsewhere = tmp_path / "elsewhere-reh"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    link = _plant(tmp_path / "rehearsals" / "x", elsewhere)
    with pytest.raises(fsio.LinkRefused):
        prepare_folder(link)
    assert (elsewhere / "keep.txt").read_text() == "mine" and link.is_symlink()
    folder = prepare_folder(tmp_path / "rehearsals" / "y")
    victim = _victim(tmp_path, "report.md")
    rl = _plant(folder / "report.md", victim)
    with pytest.raises(fsio.LinkRefused, match="report.md"):
        fsio.write_text(folder / "report.md", "x", root=folder)
    _intact(victim, rl)


def test_output_dir_with_home_or_unset_variable(tmp_path, capfd, monkeypatch):
    """``run.output_dir=$SDPG_TEST_UNSET/x`` is one line and exit 2, never a folder named ``$SDPG_TEST_UNSET``."""
    work = tmp_path / "work"
    work.mkdir()
    r = run_in_process(capfd, "sdpg-train", ["run.output_dir=$SDPG_TEST_UNSET_X/x", "--print-config"], work)
    assert r.returncode == 2 and "SDPG_TEST_UNSET_X" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert list(work.iterdir()) == []
    r = run_in_process(
        capfd, "sdpg-train", ["run.output_dir=$SDPG_TEST_SET_X/x", "--print-config"], work, env={"SDPG_TEST_SET_X": str(tmp_path)}
    )
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["run"]["output_dir"] == str(tmp_path / "x")
    r = run_in_process(capfd, "sdpg-train", ["run.output_dir=/proc/x"], work)
    assert r.returncode == 2 and "/proc" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert list(work.iterdir()) == []
    json.dumps(r.stderr)


# --------------------------------------------------------------------------------------------- servers
@pytest.mark.parametrize("tool", ["sdpg-ablate", "sdpg-sweep"])
def test_a_tracking_server_that_does_not_answer_is_one_line_within_seconds(tmp_path, capfd, tool):
    import time

    if tool == "sdpg-ablate":
        spec = _ablate_spec(tmp_path, tracking={"uri": "http://user:pa#ss@127.0.0.1:9/"})
    else:
        spec = tmp_path / "sk.yaml"
        spec.write_text(yaml.safe_dump({**SWEEP, "tracking": {"uri": "http://user:pa#ss@127.0.0.1:9/"}}))
    before = snapshot(tmp_path)
    t0 = time.monotonic()
    r = run_in_process(capfd, tool, [spec], tmp_path)
    took = time.monotonic() - t0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert "does not answer" in lines[0] and "tracking.uri" in lines[0] and "pa#ss" not in r.stderr + r.stdout
    assert took < 60, took
    assert snapshot(tmp_path) == before, "the refused command created something"


@pytest.mark.parametrize("name", ["index.md", "index.html", "tables/last_best.md", "figures/curves.png"])
def test_sdpg_report_refuses_a_link_in_its_out_folder_before_writing(tmp_path, capfd, name):
    spec = _ablate_spec(tmp_path)
    victim = _victim(tmp_path)
    link = _plant(tmp_path / "rep" / name, victim)
    before = snapshot(tmp_path)
    r = run_in_process(capfd, "sdpg-report", [spec, "--out", tmp_path / "rep"], tmp_path)
    _one_line_exit_2(r, name.split("/")[-1])
    _intact(victim, link)
    assert snapshot(tmp_path) == before
