"""Console entry points. Each one parses its arguments and hands over to its module."""

from __future__ import annotations

import sys


def _not_yet(name: str) -> int:
    print(f"{name}: not yet available in this version of sdpg", file=sys.stderr)
    return 2


def train_main(argv: list[str] | None = None) -> int:
    return _not_yet("sdpg-train")


def ablate_main(argv: list[str] | None = None) -> int:
    return _not_yet("sdpg-ablate")


def sweep_main(argv: list[str] | None = None) -> int:
    return _not_yet("sdpg-sweep")


def report_main(argv: list[str] | None = None) -> int:
    return _not_yet("sdpg-report")
