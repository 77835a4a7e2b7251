"""Console entry points. Each one parses its arguments and hands over to its module."""

from __future__ import annotations

import sys


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def train_main(argv: list[str] | None = None) -> int:
    """sdpg-train [CONFIG.yaml] [key.path=value ...]: one training run."""
    import argparse

    from sdpg.training.config import ConfigError, load_config

    p = argparse.ArgumentParser(
        prog="sdpg-train",
        description="Train one SDPG / baseline run from a YAML config "
        "(default: the built-in embedded task) with dotted overrides.",
    )
    p.add_argument("args", nargs="*", help="CONFIG.yaml first (optional), then key.path=value overrides")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    a = p.parse_args(argv)
    path = a.args[0] if a.args and "=" not in a.args[0] else None
    overrides = [x for x in a.args if x is not path]
    try:
        cfg = load_config(path, overrides)
    except ConfigError as e:
        return _fail(str(e))
    if a.print_config:
        import yaml

        print(yaml.safe_dump(cfg.resolved(), sort_keys=False))
        return 0
    from sdpg.training.trainer import TrainingFailed, train

    try:
        result = train(cfg)
    except TrainingFailed as e:
        print(f"error: {e.reason}", file=sys.stderr)
        return 1
    if result.get("rank", 0) == 0:
        print(f"[sdpg] {result['status']} at step {result['step']}; outputs in {result['output_dir']}", file=sys.stderr)
    return 0 if result["status"] in ("finished", "interrupted") else 1


def ablate_main(argv: list[str] | None = None) -> int:
    from sdpg.orchestration.ablate import main

    return main(argv)


def sweep_main(argv: list[str] | None = None) -> int:
    from sdpg.orchestration.sweep import main

    return main(argv)


def report_main(argv: list[str] | None = None) -> int:
    from sdpg.reporting.build import main

    return main(argv)
