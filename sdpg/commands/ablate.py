"""``sdpg-ablate [run|status|cancel] SPEC``: the options of each subcommand and what each one prints; the grid
itself (plan, submission, states) is ``sdpg.orchestration.ablate``."""

from __future__ import annotations

import argparse
import sys

from sdpg.commands.common import add_rehearse_options, subcommand_parser
from sdpg.orchestration import scheduler
from sdpg.orchestration.ablate import (
    cancel,
    dry_run_warnings,
    load_plan,
    settings_table,
    status,
    submit,
    table,
    variant_steps,
)
from sdpg.orchestration.core import EXECUTORS
from sdpg.orchestration.tracking import redact
from sdpg.training.config import ConfigError


def _parser(argv: list[str] | None) -> tuple[str, list[str], argparse.ArgumentParser]:
    sub, argv, p = subcommand_parser(
        "sdpg-ablate",
        {
            "status": "each run's state, step and last metrics",
            "cancel": "cancel the spec's SLURM jobs (their MLflow runs end KILLED)",
        },
        "Submit, inspect or cancel a grid of runs from an ablation spec.",
        argv,
        run_help="print the runs, then train the unfinished ones (--dry-run: print only)",
    )
    p.set_defaults(executor=None)
    if sub == "run":  # where the runs go: status and cancel read where each job went from jobs.json
        p.add_argument(
            "--executor",
            choices=EXECUTORS,
            help="where runs execute: local (processes here), debug (this process), slurm (default: the spec's)",
        )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs whose variant / seed / resolved config key equals VALUE",
    )
    p.add_argument(
        "--max-runs",
        type=int,
        metavar="N",
        help="plan up to N runs (default 10000: a larger grid is refused before it is expanded)",
    )
    if sub == "run":
        p.add_argument("--dry-run", action="store_true", help="print the runs; submit nothing")
        p.add_argument(
            "--max-parallel",
            type=int,
            metavar="N",
            help="runs at a time (SLURM array parallelism; default: the spec's max_parallel)",
        )
        add_rehearse_options(p, "run every run here for 2 steps on a shrunk model with its own MLflow store; submit nothing")
        p.add_argument(
            "--wait",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="wait for the runs (default: yes for local/debug, no for slurm)",
        )
    return sub, argv, p


def main(argv: list[str] | None = None) -> int:
    """The command without the entry point's guard (``sdpg.commands.ablate_main`` adds it): 0 done, 1 a run or
    the scheduler failed, 2 bad input."""
    sub, argv, p = _parser(argv)
    a = p.parse_args(argv)
    try:
        for f in a.only:
            if "=" not in f:
                raise ConfigError(f"--only {f!r}: expected KEY=VALUE")
        if sub == "run" and a.max_parallel is not None and a.max_parallel < 1:
            raise ConfigError(f"--max-parallel {a.max_parallel}: must be at least 1")
        if a.max_runs is not None and a.max_runs < 1:
            raise ConfigError(f"--max-runs {a.max_runs}: must be at least 1")
        plan = load_plan(
            a.spec,
            a.executor,
            a.profile,
            a.only,
            max_runs=a.max_runs,
            profile_file=a.profile_file,
            # a rehearsal checks every run's files itself; a dry run says what is missing here as warnings
            check_world=sub == "run" and not a.rehearse and not a.dry_run,
        )
    except ConfigError as e:
        print(f"error: {' '.join(redact(str(e)).split())}", file=sys.stderr)
        return 2
    try:
        if sub == "status":
            print(redact(status(plan)))
            return 0
        if sub == "cancel":
            cancel(plan)
            return 0
    except scheduler.SchedulerUnavailable as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 1
    n, k = len(plan.runs), len(plan.distinct)
    print(
        f"{plan.spec.name}: {n} runs{f' ({k} distinct)' if k != n else ''}, executor {plan.executor}"
        f"{' (profile ' + plan.spec.profile + ')' if plan.spec.profile else ''}, output {plan.output_dir}"
    )
    print(redact(table(plan)))
    if a.dry_run:
        print("\nsettings per variant:\n" + settings_table(plan))
        steps = variant_steps(plan)
        if steps:
            print("\neach variant against the previous one (effective config: settings that cannot matter left out):\n" + steps)
        for w in dry_run_warnings(plan):
            print(f"warning: {redact(w)}", file=sys.stderr)
        return 0
    if a.rehearse:
        from sdpg.orchestration.rehearse import rehearse_plan

        try:
            return rehearse_plan(plan, a.rehearse_model, a.rehearse_dir, stand_in_data=a.rehearse_data)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        submit(plan, a.max_parallel, a.wait, log=lambda m: print(m, file=sys.stderr, flush=True))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
