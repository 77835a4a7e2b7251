"""``sdpg-sweep [run|status|export] SPEC``: the options of each subcommand and what each one prints; the sweep
itself (spec, study, workers) is ``sdpg.orchestration.sweep``."""

from __future__ import annotations

import argparse
import sys

from sdpg.commands.common import add_rehearse_options, subcommand_parser
from sdpg.orchestration.sweep import Sweep, export, launch, status
from sdpg.orchestration.tracking import redact
from sdpg.training.config import ConfigError


def _parser(argv: list[str] | None) -> tuple[str, list[str], argparse.ArgumentParser]:
    sub, argv, p = subcommand_parser(
        "sdpg-sweep",
        {
            "status": "the trials: state (pruned ones with their step), value, parameters; the best",
            "export": "write an ablation spec with the best trial beside the base",
        },
        "Optuna coefficient sweeps over SDPG trainer configs.",
        argv,
        run_help="start the workers (they pull trials until n_trials have finished)",
    )
    p.set_defaults(executor=None, n_trials=None)
    if sub == "run":
        p.add_argument(
            "--executor",
            choices=("local", "slurm"),
            help="where workers run: local processes or a SLURM array (default: the spec's)",
        )
        p.add_argument(
            "--n-trials",
            type=int,
            metavar="N",
            help="finished (complete or pruned) trials to collect, replacing the spec's n_trials",
        )
        p.add_argument("--workers", type=int, metavar="N", help="workers pulling trials at once (default: the spec's)")
        p.add_argument(
            "--wait",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="wait for the workers and print the trials (default: yes for local, no for slurm)",
        )
        add_rehearse_options(
            p, "run the enqueued trials and the corners of the space here for 2 steps on a shrunk model; start nothing"
        )
    if sub == "export":
        p.add_argument("--out", metavar="PATH", help="where to write the ablation spec (default: ablations/<name>_best.yaml)")
    return sub, argv, p


def main(argv: list[str] | None = None) -> int:
    """The command without the entry point's guard (``sdpg.commands.sweep_main`` adds it): 0 done, 1 a worker
    or the store failed, 2 bad input."""
    sub, argv, p = _parser(argv)
    a = p.parse_args(argv)
    try:
        sweep = Sweep(
            a.spec, a.executor, a.profile, a.n_trials, profile_file=a.profile_file, check_world=sub == "run" and not a.rehearse
        )
        if sub == "run" and a.workers is not None and a.workers < 1:
            raise ConfigError(f"--workers {a.workers}: must be at least 1")
        if sub == "status":
            print(redact(status(sweep)))
        elif sub == "export":
            print(f"wrote {export(sweep, a.out)}")
        elif a.rehearse:
            from sdpg.orchestration.rehearse import rehearse_sweep

            return rehearse_sweep(sweep, a.rehearse_model, a.rehearse_dir, stand_in_data=a.rehearse_data)
        else:
            launch(sweep, a.workers, a.wait, log=lambda m: print(m, file=sys.stderr, flush=True))
    except ConfigError as e:
        print(f"error: {' '.join(redact(str(e)).split())}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 1
    return 0
