"""``sdpg-train [CONFIG.yaml] [key.path=value ...]``: one training run, checked before the run folder is touched;
``sdpg-train export RUN_DIR [--step k] --out DIR``: a checkpoint as a Hugging Face folder."""

from __future__ import annotations

import sys
from pathlib import Path

from sdpg.commands.common import fail


def export(argv: list[str]) -> int:
    import argparse

    from sdpg.training.export import export_run

    p = argparse.ArgumentParser(
        prog="sdpg-train export",
        description="Write the policy of a run's checkpoint as a Hugging Face folder (safetensors, tokenizer, "
        "chat template, compute dtype; config hash and step in sdpg_export.json).",
    )
    p.add_argument("run_dir", help="the run folder (run.output_dir)")
    p.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the newest complete one)")
    p.add_argument("--out", required=True, help="the folder to create (must not exist, or be empty)")
    a = p.parse_args(argv)
    export_run(a.run_dir, a.out, a.step, log=lambda m: print(m, file=sys.stderr))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command without the entry point's guard (``sdpg.commands.train_main`` adds it)."""
    import argparse
    import os
    from pathlib import Path

    from sdpg.training.config import load_config

    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "export":
        return export(argv[1:])

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
    cfg = load_config(path, overrides)
    if a.print_config:
        import yaml

        from sdpg.training.preflight import world_warnings

        print(yaml.safe_dump(cfg.resolved(), sort_keys=False))
        for w in world_warnings(cfg, str(path or "sdpg-train")):  # what training here would refuse
            print(f"warning: {w} (training here is refused)", file=sys.stderr)
        return 0
    from sdpg.fsio import check_no_links
    from sdpg.training.locks import RUN_LOCK
    from sdpg.training.preflight import check_world

    # every file the run writes, checked before the first is written: a link there is refused, nothing changed
    check_no_links(cfg.run.output_dir, ("config.yaml", "result.json", "metrics.jsonl", RUN_LOCK), ("checkpoints",))

    check_world(cfg, str(path or "sdpg-train") + (" + overrides" if overrides else ""), local=True)
    from sdpg.training.locks import run_folder_lock
    from sdpg.training.trainer import TrainingFailed, check_newest_checkpoint, train

    if cfg.run.resume:  # a refused resume (another config, no readable checkpoint) before the run folder is touched
        check_newest_checkpoint(Path(cfg.run.output_dir), cfg)

    from sdpg.training.records import WriteFailed

    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0)
    try:
        if rank != 0:  # one writer per run folder: rank 0 holds the lock for the whole process group
            result = train(cfg)
        else:
            with run_folder_lock(cfg.run.output_dir, wait=False):
                result = train(cfg)
    except TrainingFailed as e:  # the run stopped itself (non-finite updates): its one-sentence reason
        if rank == 0:
            print(f"error: {e.reason}", file=sys.stderr)
        return 1
    except (WriteFailed, OSError) as e:  # a full disk, an unwritable folder or file
        if rank == 0:
            where = f"training stopped at step {e.step}: " if isinstance(e, WriteFailed) and e.step is not None else ""
            what = str(e) if isinstance(e, WriteFailed) else f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
            fail(
                f"{where}{what}; {_resume_point(cfg.run.output_dir)}; free space or make it writable, then resume "
                f"with the same command"
            )
        return 1
    except KeyboardInterrupt:
        if rank == 0:
            print(f"interrupted: {_resume_point(cfg.run.output_dir)}; resume with the same command", file=sys.stderr)
        return 130
    if result.get("rank", 0) == 0:
        print(f"[sdpg] {result['status']} at step {result['step']}; outputs in {result['output_dir']}", file=sys.stderr)
    return 0 if result["status"] in ("finished", "interrupted") else 1


def _resume_point(output_dir: str) -> str:
    """Where a stopped run resumes: its newest complete checkpoint (checkpoints are written aside and renamed,
    so every ``step_*.pt`` on disk is whole)."""
    from sdpg.training.checkpoint import checkpoints, step_of

    found = checkpoints(Path(output_dir))
    if not found:
        return f"no checkpoint in {output_dir} yet (a resume starts the run over)"
    return f"the last complete checkpoint is {found[-1]} (step {step_of(found[-1])})"
