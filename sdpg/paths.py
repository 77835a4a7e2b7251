"""Where built-in files live and where the cache goes: one place for every module that needs a path."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).parent
DEFAULT_CONFIG_PATH = PACKAGE_ROOT / "training" / "configs" / "embedded.yaml"
BUILTIN_CONFIGS = {
    "embedded": DEFAULT_CONFIG_PATH,
    "embedded_chain": PACKAGE_ROOT / "training" / "configs" / "embedded_chain.yaml",
}
"""Base configs a spec can name instead of a path: ``embedded`` (the ``sum`` task, the default) and
``embedded_chain`` (the ``chain`` task)."""


def cache_root() -> Path:
    """The cache for the built-in model (copied from the package or built) and vLLM's files: ``$SDPG_CACHE`` or
    ``~/.cache/sdpg``."""
    return Path(os.environ.get("SDPG_CACHE", Path.home() / ".cache" / "sdpg"))
