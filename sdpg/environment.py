"""``python -m sdpg.environment [--fix]``: what this Python lacks or carries that sdpg's runs trip over.

The ``rehearse`` extra installs vLLM's CPU build, which pulls PyPI's torchvision, torchaudio and torchcodec:
builds for CUDA or another torch release (``sdpg._media``). sdpg hides them in its own processes, but vLLM
checks a model's architecture in a child process of its own, where they stop the import. ``--fix``
uninstalls the ones that cannot match the installed torch (sdpg uses none of them); without it, the
command only says what it would do. The README's rehearsal install runs it after pip.
"""

from __future__ import annotations

import subprocess
import sys

from sdpg._media import MEDIA_PACKAGES, mismatch


def fix(dry_run: bool = False) -> int:
    """Uninstall (or, ``dry_run``, name) each media package that cannot match the installed torch."""
    found = {n: why for n in MEDIA_PACKAGES if (why := mismatch(n))}
    for why in found.values():
        print(f"sdpg: {why}: {'would uninstall it' if dry_run else 'uninstalling it'} (sdpg uses none of them)")
    if found and not dry_run:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", *found], check=True)
    if not found:
        print("sdpg: " + ", ".join(MEDIA_PACKAGES) + " are absent or match the installed torch: nothing to do")
    elif dry_run:
        print("sdpg: python -m sdpg.environment --fix uninstalls them")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m sdpg.environment", description=__doc__.split("\n\n")[0])
    p.add_argument("--fix", action="store_true", help="uninstall the media packages built for another torch")
    return fix(dry_run=not p.parse_args(argv).fix)


if __name__ == "__main__":
    sys.exit(main())
