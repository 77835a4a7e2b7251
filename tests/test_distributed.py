"""Data-parallel training on torch.distributed (gloo on CPU): N ranks give the update of one process
with the same global batch, replicated or sharded with FSDP2, launched by torchrun and as a 2-task SLURM job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY, tiny_overrides_dict

from sdpg.orchestration.ablate import load_plan, submit
from sdpg.training.trainer import train

DP = ["rollout.seed_per_prompt=true", "run.total_steps=3", "algo.beta=1.0", "run.checkpoint_every=0"]


def metrics(out):
    return [{k: v for k, v in json.loads(x).items() if not k.startswith("timing/")} for x in open(Path(out) / "metrics.jsonl")]


def final_weights(out):
    """The newest checkpoint's model state: a ``.pt`` file, or the shards of an FSDP2 run's sharded folder."""
    from sdpg.training.checkpoint import checkpoints, sharded_model_state

    last = checkpoints(Path(out))[-1]
    return sharded_model_state(last) if last.is_dir() else torch.load(last, weights_only=False)["model"]


def assert_same_run(a, b):
    ma, mb = metrics(a), metrics(b)
    assert [r["step"] for r in ma] == [r["step"] for r in mb] == [0, 1, 2, 3]
    for ra, rb in zip(ma, mb):
        assert set(ra) == set(rb)
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), (ra["step"], k)
    wa, wb = final_weights(a), final_weights(b)
    shared = wa.keys() & wb.keys()  # a tied head may be stored under one name only
    assert len(shared) >= len(wa) - 1 and len(shared) >= len(wb) - 1, (sorted(wa), sorted(wb))
    for k in shared:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_built):
    from sdpg.training.config import load_config

    out = tmp_path_factory.mktemp("dp") / "one"
    train(load_config(None, TINY + DP + [f"run.output_dir={out}"]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", ["false", "true"], ids=["replicated", "fsdp2"])
def test_torchrun_two_ranks_match_one_process(one_process, tmp_path, fsdp):
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "sdpg",
        "train",
        *TINY,
        *DP,
        f"model.fsdp={fsdp}",
        f"run.output_dir={out}",
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "result.json").read_text())["world_size"] == 2
    assert_same_run(one_process, out)


@pytest.mark.slow
def test_two_task_slurm_job_matches_one_process(one_process, tmp_path, dev_cluster):
    spec = {
        "name": "dp2",
        "base": "embedded",
        "variants": {"sdpg": {}},
        "seeds": [0],
        "overrides": {**tiny_overrides_dict(), **{k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in DP)}},
        "executor": "slurm",
        "profile": "dev2",
        "output_dir": str(tmp_path / "dp2"),
    }
    p = tmp_path / "dp2.yaml"
    p.write_text(yaml.safe_dump(spec))
    plan = load_plan(p)
    res = submit(plan, wait=True, log=lambda m: None)
    out = Path(plan.runs[0].config.run.output_dir)
    assert json.loads((out / "result.json").read_text())["world_size"] == 2
    assert res["jobs"][0].results()[0]["world_size"] == 2
    assert_same_run(one_process, out)
