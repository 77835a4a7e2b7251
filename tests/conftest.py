"""Shared fixtures: the built-in model at small batch sizes, and the SLURM dev cluster.

Nothing one-time runs inside a test's time limit (pytest-timeout counts fixture set-up): the built-in
model is put into the cache in ``pytest_sessionstart``, before any test starts (a copy of the model
shipped with the package; a build only if the default recipe was changed without shipping it), and
scripts/test.sh installs SLURM and imports vLLM once before pytest.

The suite runs on two pytest-xdist workers (``-n 2 --dist loadgroup`` in scripts/test.sh): each module is one
group, so a module-scoped fixture is built once, and every test that uses the SLURM dev cluster is in one group,
since the cluster (its daemons, ports and job list) is one per machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sdpg.orchestration.standins import QWEN3_STYLE_CHAT_TEMPLATE

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The benchmark files (AIME24/25, AMC23, MATH-500 as JSONL) live in shared/ beside the repository, as in CI's clone.
BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"

# ChatML turns and a thinking switch, as Qwen3's chat template (the rehearsal's built-in stand-in uses it too)
QWEN3_CHAT_TEMPLATE = QWEN3_STYLE_CHAT_TEMPLATE


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """One xdist group per module, and one for every test on the SLURM dev cluster (before xdist reads the marks),
    the groups with the most slow tests first."""
    groups = {}
    for item in items:
        groups[item] = "slurm-dev-cluster" if "dev_cluster" in item.fixturenames else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    # Groups with the most end-to-end tests first (scripts/test.sh passes --no-loadscope-reorder), so that the long
    # ones do not end the run on one worker while the other waits; within a group the order is the file's.
    slow: dict[str, int] = {}
    for item in items:
        slow[groups[item]] = slow.get(groups[item], 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda it: -slow[groups[it]])


@pytest.fixture(scope="module")
def math_verifier():
    """math-verify in its worker process, shared by a module's tests."""
    from sdpg.training.rewards import MathVerifier

    v = MathVerifier(timeout_s=5.0)
    yield v
    v.close()


# The built-in model (shipped with the package), at small batch sizes.
TINY = [
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=24",
    "eval.n_samples=2",
    "eval.every=2",
    "data.eval_limit=6",
    "data.train_limit=256",  # a run tokenizes its training rows up front: 256, not all 20,000 (2 s of each run)
    "optim.micro_batch_size=8",
    "run.threads=1",
    "run.checkpoint_every=0",
    "run.log_samples=0",
]


@pytest.fixture
def tiny_config(tmp_path):
    from sdpg.training.config import load_config

    def make(*overrides: str, out: str = "run"):
        return load_config(None, TINY + [f"run.output_dir={tmp_path / out}"] + list(overrides))

    return make


def tiny_overrides_dict() -> dict:
    from sdpg.training.config import parse_value

    return {k: parse_value(v) for k, v in (x.split("=", 1) for x in TINY)}


def _tiny_model():
    from sdpg.training.config import load_config
    from sdpg.training.embedded import ensure_embedded_model

    return ensure_embedded_model(load_config(None, TINY).model.embedded)


def pytest_sessionstart(session):
    """The built-in model in the cache before the first test (outside every test's time limit)."""
    _tiny_model()


@pytest.fixture(scope="session")
def tiny_model_built():
    """The folder of the built-in model, in the cache before jobs on several processes need it."""
    return _tiny_model()


@pytest.fixture(scope="session")
def dev_cluster():
    """A real single-node SLURM (Debian's slurmctld + slurmd), started for the session."""
    from sdpg.orchestration import devcluster

    env = devcluster.start()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    devcluster.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
