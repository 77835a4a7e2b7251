"""The console scripts: argument parsing and dispatch, one module per command, above everything else in the
package. The work happens in the libraries below (``sdpg.training``, ``sdpg.orchestration``, ``sdpg.reporting``).

Every entry point answers bad input the same way: one line on stderr naming the file, the key and the value
(secrets redacted), exit code 2, and nothing created. argparse's own errors are cut to one line too.
"""

from __future__ import annotations

from sdpg.commands.common import guarded


def train_main(argv: list[str] | None = None) -> int:
    """sdpg-train [CONFIG.yaml] [key.path=value ...]: one training run.
    sdpg-train export RUN_DIR [--step k] --out DIR: a checkpoint as a Hugging Face folder."""
    from sdpg.commands.train import main

    return guarded(main, argv)


def ablate_main(argv: list[str] | None = None) -> int:
    from sdpg.commands.ablate import main

    return guarded(main, argv)


def sweep_main(argv: list[str] | None = None) -> int:
    from sdpg.commands.sweep import main

    return guarded(main, argv)


def eval_main(argv: list[str] | None = None) -> int:
    """sdpg-eval MODEL [CONFIG.yaml] [key.path=value ...]: a model on benchmarks, logged to MLflow."""
    from sdpg.commands.eval import main

    return guarded(main, argv)


def data_main(argv: list[str] | None = None) -> int:
    """sdpg-data {prepare,contexts,check}: make training data (docs/data.md)."""
    from sdpg.commands.data import main

    return guarded(main, argv)


def report_main(argv: list[str] | None = None) -> int:
    from sdpg.commands.report import main

    return guarded(main, argv)
