"""What every command shares: bad input as one line and exit code 2, argparse's errors cut to one line, and the
``PROG [SUBCOMMAND] SPEC`` parser of the spec-driven commands (``sdpg-ablate``, ``sdpg-sweep``)."""

from __future__ import annotations

import argparse
import sys


def fail(msg: str) -> int:
    """``msg`` (secrets redacted, whitespace folded, at most 500 characters) as one ``error:`` line; exit code 2."""
    from sdpg.training.redact import redact

    text = " ".join(redact(str(msg)).split())
    if len(text) > 500:
        text = text[:497] + "..."
    print(f"error: {text}", file=sys.stderr)
    return 2


def one_line_argparse() -> None:
    """argparse prints its usage block and the error; a user needs the error (and --help for the rest)."""

    def error(self, message):
        fail(f"{self.prog}: {message} (see {self.prog.split()[0]} --help)")
        raise SystemExit(2)

    argparse.ArgumentParser.error = error  # type: ignore[method-assign]


def guarded(fn, argv):
    """Run an entry point; input errors raised anywhere below become one line and exit code 2."""
    from sdpg.fsio import LinkRefused, WriteRefused
    from sdpg.training.config import ConfigError
    from sdpg.training.locks import LockBusy
    from sdpg.training.redact import redact_console
    from sdpg.training.safe_yaml import YamlInputError

    one_line_argparse()
    restore = redact_console()  # every line a command prints passes the redaction
    try:
        return fn(argv)
    except (ConfigError, YamlInputError, LockBusy, LinkRefused, WriteRefused) as e:
        return fail(str(e))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        restore()


def subcommand_parser(
    prog: str,
    subcommands: dict[str, str] | tuple[str, ...],
    description: str,
    argv: list[str] | None,
    run_help: str = "submit the spec's runs",
):
    """(subcommand, remaining argv, parser with SPEC and --profile) for ``prog [SUB] SPEC ...``;
    the subcommand is ``run`` when the first word is none of ``subcommands`` (name -> one line of
    help, listed in ``--help``)."""

    helps = subcommands if isinstance(subcommands, dict) else dict.fromkeys(subcommands, "")
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = argv[0] if argv and argv[0] in helps else "run"
    if sub != "run":
        argv = argv[1:]
    width = max(len(k) for k in ("run", *helps))
    epilog = (
        "commands:\n"
        + "\n".join(f"  {prog} {k.ljust(width)} SPEC  {h}" for k, h in {"[run]": run_help, **helps}.items())
        + f"\n\n{prog} SUBCOMMAND --help shows the options of each."
    )
    if sub != "run":  # a subcommand's help is its own: its line and its options
        description, epilog = f"{prog} {sub} SPEC: {helps[sub]}.", f"{prog} --help lists the other commands."
    p = argparse.ArgumentParser(
        prog=f"{prog}{'' if sub == 'run' else ' ' + sub}",
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", help="the spec file (YAML)")
    p.set_defaults(profile=None, profile_file=None)
    if sub == "run":  # where the runs go: only submitting asks
        p.add_argument(
            "--profile", metavar="NAME", help="SLURM profile slurm/NAME.yaml (or in $SDPG_SLURM_PROFILES), replacing the spec's"
        )
        p.add_argument(
            "--profile-file",
            metavar="PATH",
            help="a SLURM profile outside the profile folders, by path (replaces --profile and the spec's)",
        )
    return sub, argv, p


def add_rehearse_options(p: argparse.ArgumentParser, what: str) -> None:
    """``--rehearse`` and its three options, shared by ``sdpg-ablate`` and ``sdpg-sweep``; ``what``: what it runs."""
    p.add_argument("--rehearse", action="store_true", help=what)
    p.add_argument(
        "--rehearse-model",
        metavar="PATH",
        help="with --rehearse: a local folder (config.json and tokenizer) standing in for model.path, "
        "or builtin: a Qwen3 stand-in made here (no hub)",
    )
    p.add_argument(
        "--rehearse-data",
        choices=["builtin"],
        help="with --rehearse: data files not found here are replaced by stand-in rows in their format (no data)",
    )
    p.add_argument("--rehearse-dir", metavar="DIR", help="with --rehearse: its folder (default rehearsals/NAME)")
