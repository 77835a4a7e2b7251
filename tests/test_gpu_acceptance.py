"""bench/gpu_acceptance.py: the script a lent GPU runs once, known to work at toy size before a GPU is spent
on it, and the training path importable with only the GPU machine's packages plus the wheels it names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_acceptance.py"


def _load():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_print_wheels_names_what_the_training_path_needs_beyond_the_machine():
    out = subprocess.run([sys.executable, str(SCRIPT), "--print-wheels"], capture_output=True, text=True, check=True)
    wheels = out.stdout.split()
    # sdpg's own dependencies that the GPU image lacks, with their requirements; nothing the image has
    assert {"pydantic", "pydantic-core", "math-verify", "latex2sympy2-extended", "antlr4-python3-runtime"} <= set(wheels)
    machine = {n.lower() for n in _load().MACHINE_HAS}
    assert not machine & set(wheels)
    assert "torch" not in wheels and "transformers" not in wheels and "pyyaml" not in wheels
    assert "pip download --only-binary=:all:" in out.stderr


# An interpreter in which only the GPU image's distributions and the named wheels can be imported: a meta-path
# finder refuses any top-level module that belongs to another installed distribution (sdpg itself allowed).
BLOCKER = r"""
import importlib.abc, importlib.metadata as md, re, sys
allowed = {re.sub(r"[-_.]+", "-", n).lower() for n in sys.argv[1].split()} | {"sdpg"}
owners = md.packages_distributions()
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in owners.get(top, [])}
        if dists and not dists & allowed:
            raise ImportError(f"{top} (from {sorted(dists)}) is not on the GPU machine")
        return None
sys.meta_path.insert(0, Block())
import sdpg.training.trainer, sdpg.training.config, sdpg.objective
from sdpg.training.config import load_config
load_config(None, ["algo.method=grpo"])
blocked = [m for m in ("mlflow", "submitit", "optuna")]
for m in blocked:
    try:
        __import__(m)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{m} imported: the blocker does not work")
print("ok")
"""


def test_training_path_imports_with_only_the_machine_packages_and_the_wheels():
    mod = _load()
    allowed = " ".join(list(mod.MACHINE_HAS) + mod.wheels_needed())
    out = subprocess.run([sys.executable, "-c", BLOCKER, allowed], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
    # and without the wheels it does not: the wheel list is needed, not decoration
    bare = " ".join(mod.MACHINE_HAS)
    out = subprocess.run([sys.executable, "-c", BLOCKER, bare], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and "not on the GPU machine" in out.stderr


def test_unknown_part_is_one_line_exit_2(tmp_path):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--parts", "fused,warp", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "gpu_acceptance: --parts: unknown part 'warp' (parts: facts, fused, train, fsdp, resume)"
    ]
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_tiny_cpu_run_reports_every_part(tmp_path):
    out = tmp_path / "acc"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--dtype", "float32", "--out", str(out), "--budget-s", "600"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    res = json.loads((out / "acceptance.json").read_text())
    md = (out / "acceptance.md").read_text()
    parts = res["parts"]
    assert set(parts) == {"facts", "fused", "train", "fsdp", "resume"}
    for name, p in parts.items():  # a number, or a stated reason
        assert p["status"] == "ok" or p.get("reason"), (name, p)
        assert f"| {name} |" in md
    assert proc.returncode == 0, proc.stderr[-3000:]
    fused = parts["fused"]["result"]["rows"]
    assert {(r["loss"], r["impl"]) for r in fused} == {(a, b) for a in ("grpo", "sdpg") for b in ("materialised", "fused")}
    for r in fused:
        assert r["time_s"] > 0
        if r["impl"] == "fused":  # same loss and gradients as materialised
            assert r["loss_rel"] < 1e-5 and r["grad_hidden_rel"] < 1e-4 and r["grad_head_rel"] < 1e-4
    train = parts["train"]["result"]
    assert train["grpo"]["steps"] == 2 and train["sdpg_urkl"]["steps"] == 2
    assert train["sdpg_over_grpo"]["step_time"] > 0 and train["sdpg_urkl"]["loss_finite"]
    assert parts["fsdp"]["result"]["world_size"] == 1 and parts["fsdp"]["result"]["status"] == "finished"
    resume = parts["resume"]["result"]
    assert resume["steps_resumed"] == [1, 2, 3, 4] and resume["every_step_once"]
    assert resume["steps_3_4_bitwise_equal"] is True
