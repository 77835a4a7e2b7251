"""Sharded checkpoints (torch.distributed.checkpoint) of FSDP2 runs on gloo: every rank writes its shards; a
resume on as many ranks is exact, on another number of ranks it reshards and says so; a folder without its
completion mark is never loaded; a run killed during a save resumes from the last complete checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY

from sdpg.training.checkpoint import COMPLETE, checkpoints, load_checkpoint

DP = [
    "rollout.seed_per_prompt=true",
    "run.total_steps=4",
    "algo.beta=1.0",
    "model.fsdp=true",
    "eval.every=2",
    "run.keep_checkpoints=3",
    "run.checkpoint_every=1",
]

DRIVER = """
import sys
from sdpg.training.config import load_config
from sdpg.training.trainer import train
stop = int(sys.argv[1])
train(load_config(None, sys.argv[2:]), stop_after_step=stop or None)
"""


def launch(tmp_path: Path, out: Path, ranks: int, stop: int = 0, *extra: str, wait: bool = True):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    cmd += [str(driver), str(stop), *TINY, *DP, f"run.output_dir={out}", *extra]
    if ranks == 1:
        cmd = [sys.executable, str(driver), str(stop), *TINY, *DP, f"run.output_dir={out}", *extra]
    if not wait:  # output to a file: a pipe nobody reads would block the run once full
        log = open(tmp_path / f"{out.name}.log", "w")
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid:
                found.append(int(d.name))
    return found


def metrics(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if not k.startswith("timing/")} for x in open(out / "metrics.jsonl")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_built):
    d = tmp_path_factory.mktemp("sharded")
    r = launch(d, d / "full", 2)
    return d / "full", r.stderr


@pytest.mark.slow
def test_sharded_checkpoints_are_folders_every_rank_wrote(uninterrupted):
    out, log = uninterrupted
    found = checkpoints(out)
    assert [p.name for p in found] == ["step_0000002", "step_0000003", "step_0000004"]  # run.keep_checkpoints=3
    last = found[-1]
    assert last.is_dir() and (last / COMPLETE).is_file() and (last / ".metadata").is_file()
    assert len(list(last.glob("*.distcp"))) == 2  # one file of shards per rank
    state = load_checkpoint(last)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 4
    assert "sharded checkpoint of step 4 by 2 ranks" in log and "MiB" in log


@pytest.mark.slow
def test_resume_on_two_ranks_is_exact_and_on_one_rank_reshards(uninterrupted, tmp_path):
    full, _ = uninterrupted
    part = tmp_path / "part"
    launch(tmp_path, part, 2, 2)
    assert [p.name for p in checkpoints(part)] == ["step_0000001", "step_0000002"]
    one = tmp_path / "one"
    shutil.copytree(part, one)
    r = launch(tmp_path, part, 2)
    assert metrics(part) == metrics(full)  # bitwise: every float of every step, eval included
    assert "resharded" not in r.stderr
    r1 = launch(tmp_path, one, 1)
    assert "resharded step_0000002 from 2 ranks to 1" in r1.stderr and "not bitwise exact" in r1.stderr
    m = metrics(one)
    assert [x["step"] for x in m] == [0, 1, 2, 3, 4]
    assert m[:3] == metrics(full)[:3]
    assert all(v == v and abs(v) != float("inf") for x in m for v in x.values() if isinstance(v, float))


@pytest.mark.slow
def test_a_folder_without_its_mark_is_never_loaded(uninterrupted, tmp_path):
    full, _ = uninterrupted
    out = tmp_path / "run"
    shutil.copytree(full, out)
    newest = checkpoints(out)[-1]
    (newest / COMPLETE).unlink()  # as a save killed between its shards and its mark leaves it
    assert newest not in checkpoints(out)
    (out / "result.json").unlink()
    r = launch(tmp_path, out, 2)
    assert f"resumed from {out / 'checkpoints' / 'step_0000003'} at step 3" in r.stderr
    assert metrics(out) == metrics(full)  # step 4 once, as the uninterrupted run computed it


@pytest.mark.slow
@pytest.mark.parametrize("point", ["folder_created", "shards_written", "renamed"])
def test_sigkill_during_a_save_resumes_from_the_last_complete_checkpoint(uninterrupted, tmp_path, point):
    """SIGKILL of every rank while step 2 is being saved: right after its temporary folder appears, after the
    shards' metadata is written (before the mark), or right after the rename (retention still to run)."""
    full, _ = uninterrupted
    out = tmp_path / "run"
    proc = launch(tmp_path, out, 2, 0, wait=False)
    tmp, final = out / "checkpoints" / "step_0000002.tmp", out / "checkpoints" / "step_0000002"
    seen = {
        "folder_created": lambda: tmp.is_dir(),
        "shards_written": lambda: (tmp / ".metadata").is_file(),
        "renamed": final.is_dir,
    }
    deadline = time.monotonic() + 600
    try:
        while not seen[point]():
            assert proc.poll() is None, "the run ended before the save of step 2"
            assert time.monotonic() < deadline
            time.sleep(0.001)
    finally:  # torchrun's workers run in process groups of their own: each one killed, then torchrun
        for child in children(proc.pid):
            os.kill(child, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    complete = [p.name for p in checkpoints(out)]
    assert complete[-1] == ("step_0000002" if point == "renamed" else "step_0000001"), complete
    r = launch(tmp_path, out, 2)
    assert f"at step {int(complete[-1][5:])}" in r.stderr
    m = metrics(out)
    assert [x["step"] for x in m] == [0, 1, 2, 3, 4]  # no step twice
    assert m == metrics(full)
    assert not (out / "checkpoints" / "step_0000002.tmp").exists()


@pytest.mark.slow
def test_export_of_a_sharded_run_reads_its_shards(uninterrupted, tmp_path, capsys):
    """``sdpg-train export`` of the sharded checkpoint gives the weights the run exported at its end."""
    import torch
    from safetensors.torch import load_file

    from sdpg.commands import train_main

    full, _ = uninterrupted
    assert train_main(["export", str(full), "--out", str(tmp_path / "x")]) == 0
    a, b = load_file(str(tmp_path / "x" / "model.safetensors")), load_file(str(full / "hf" / "model.safetensors"))
    assert set(b) <= set(a)
    for k in b:
        assert torch.equal(a[k], b[k]), k
